//! The workloads: each builds one worker per client, and `drive` runs the workers until the
//! run's total or duration is reached.
//!
//! ```text
//!  clients ──(i % conns)──▶ channels ──(j % endpoints)──▶ members
//!  each client: claim ticket → send request (bounded by request_timeout) → record latency
//! ```
//!
//! Every client keeps its own histograms, merged at the end, so that measuring takes no lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::request_op::Request as OpRequest;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::config::{Config, Consistency, KeyChooser};
use crate::report::{Latencies, Report};
use crate::Error;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Put a random (or sequential) key from the key space.
    Put,
    /// Get one key from the key space.
    Range { consistency: Consistency },
    /// A Txn with no compares and `txn_ops` puts on distinct keys.
    TxnPut { txn_ops: u64 },
    /// Each client grants one lease, then renews it over its own keep-alive stream.
    LeaseKeepalive,
    /// `streams × watchers_per_stream` watchers on one key; `put_total` puts to it at
    /// `put_rate` per second; latency from sending a put to each watcher's event.
    WatchLatency {
        streams: usize,
        watchers_per_stream: usize,
        put_total: u64,
        put_rate: f64,
    },
    /// Each request is a range with probability `read_ratio`, else a put.
    Mixed {
        read_ratio: f64,
        consistency: Consistency,
    },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range { .. } => "range",
            Workload::TxnPut { .. } => "txn-put",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::WatchLatency { .. } => "watch-latency",
            Workload::Mixed { .. } => "mixed",
        }
    }
}

/// Runs `workload` as `config` says and reports what it measured.
pub async fn run(workload: &Workload, config: &Config) -> Result<Report, Error> {
    config.validate().map_err(Error::Config)?;
    let channels = connect(config).await?;
    match workload {
        Workload::Put => {
            let workers = (0..config.clients)
                .map(|client| {
                    Box::new(KvWorker::new(config, &channels, client, KvKind::Put)) as BoxWorker
                })
                .collect();
            Ok(drive(config, workload.name(), &["put"], workers).await)
        }
        Workload::Range { consistency } => {
            let kind = KvKind::Range(*consistency == Consistency::Serializable);
            let workers = (0..config.clients)
                .map(|client| Box::new(KvWorker::new(config, &channels, client, kind)) as BoxWorker)
                .collect();
            Ok(drive(config, workload.name(), &["range"], workers).await)
        }
        Workload::TxnPut { txn_ops } => {
            if *txn_ops == 0 || *txn_ops > config.key_space_size {
                return Err(Error::Config(
                    "--txn-ops must be between 1 and --key-space-size (keys in a txn differ)"
                        .into(),
                ));
            }
            let workers = (0..config.clients)
                .map(|client| {
                    Box::new(KvWorker::new(
                        config,
                        &channels,
                        client,
                        KvKind::TxnPut(*txn_ops),
                    )) as BoxWorker
                })
                .collect();
            Ok(drive(config, workload.name(), &["txn"], workers).await)
        }
        Workload::Mixed {
            read_ratio,
            consistency,
        } => {
            if !(0.0..=1.0).contains(read_ratio) {
                return Err(Error::Config("--read-ratio must be in 0..=1".into()));
            }
            let kind = KvKind::Mixed {
                read_ratio: *read_ratio,
                serializable: *consistency == Consistency::Serializable,
            };
            let workers = (0..config.clients)
                .map(|client| Box::new(KvWorker::new(config, &channels, client, kind)) as BoxWorker)
                .collect();
            Ok(drive(config, workload.name(), &["put", "range"], workers).await)
        }
        Workload::LeaseKeepalive => run_lease_keepalive(config, &channels).await,
        Workload::WatchLatency {
            streams,
            watchers_per_stream,
            put_total,
            put_rate,
        } => {
            let shape = WatchShape {
                streams: *streams,
                watchers_per_stream: *watchers_per_stream,
                put_total: *put_total,
                put_rate: *put_rate,
            };
            run_watch_latency(config, &channels, shape).await
        }
    }
}

/// `run(&Workload::Put, config)`.
pub async fn run_put(config: &Config) -> Result<Report, Error> {
    run(&Workload::Put, config).await
}

/// Replies can be large (a range over many keys), as etcd's Go client allows.
const RESPONSE_BYTES_MAX: usize = usize::MAX;

/// Opens `config.conns` channels, connection `i` to endpoint `i % endpoints`.
pub async fn connect(config: &Config) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(config.conns);
    for index in 0..config.conns {
        let endpoint = &config.endpoints[index % config.endpoints.len()];
        channels.push(connect_one(endpoint).await?);
    }
    Ok(channels)
}

/// One channel to `endpoint` (`host:port` or a URL).
pub async fn connect_one(endpoint: &str) -> Result<Channel, Error> {
    let url = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let connect_error = |source| Error::Connect {
        endpoint: url.clone(),
        source,
    };
    Endpoint::from_shared(url.clone())
        .map_err(connect_error)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(connect_error)
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type BoxWorker = Box<dyn Worker>;

/// One client's request loop body.
trait Worker: Send + 'static {
    /// Sends request number `ticket`; on success, the index of its kind in `drive`'s `kinds`.
    fn request(&mut self, ticket: u64) -> BoxFuture<'_, Result<usize, tonic::Status>>;
}

/// Runs `workers` concurrently until `config`'s total requests are issued or its duration has
/// passed, whichever comes first.
async fn drive(config: &Config, workload: &str, kinds: &[&str], workers: Vec<BoxWorker>) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let total = config.total_bound();
    let start = Instant::now();
    let deadline = config.duration.map(|duration| start + duration);
    let request_timeout = config.request_timeout;
    let kinds_count = kinds.len();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let issued = Arc::clone(&issued);
            tokio::spawn(async move {
                let mut latencies = vec![Latencies::new(); kinds_count];
                let mut errors = BTreeMap::<String, u64>::new();
                loop {
                    let ticket = issued.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total || deadline.is_some_and(|at| Instant::now() >= at) {
                        break;
                    }
                    let sent = Instant::now();
                    match tokio::time::timeout(request_timeout, worker.request(ticket)).await {
                        Ok(Ok(kind)) => latencies[kind].record(sent.elapsed()),
                        Ok(Err(status)) => *errors.entry(status_label(&status)).or_default() += 1,
                        Err(_) => *errors.entry("timeout".to_owned()).or_default() += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = vec![Latencies::new(); kinds_count];
    let mut errors = BTreeMap::<String, u64>::new();
    for task in tasks {
        let (task_latencies, task_errors) = task.await.expect("a benchmark client panicked");
        for (all, part) in latencies.iter_mut().zip(&task_latencies) {
            all.merge(part);
        }
        for (error, count) in task_errors {
            *errors.entry(error).or_default() += count;
        }
    }
    let elapsed = start.elapsed();
    let parts: Vec<(&str, &Latencies)> = kinds.iter().copied().zip(latencies.iter()).collect();
    Report::new(workload, elapsed, &parts, None, errors)
}

/// `Code: message`, the way errors are counted in reports.
pub fn status_label(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[derive(Debug, Clone, Copy)]
enum KvKind {
    Put,
    /// Serializable?
    Range(bool),
    TxnPut(u64),
    Mixed {
        read_ratio: f64,
        serializable: bool,
    },
}

/// A client of the KV service: puts, ranges, txns or a mix.
struct KvWorker {
    kv: KvClient<Channel>,
    chooser: KeyChooser,
    config: Arc<Config>,
    value: Vec<u8>,
    kind: KvKind,
}

impl KvWorker {
    fn new(config: &Config, channels: &[Channel], client: usize, kind: KvKind) -> KvWorker {
        let channel = channels[client % channels.len()].clone();
        KvWorker {
            kv: KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX),
            chooser: KeyChooser::new(client as u64 + 1),
            config: Arc::new(config.clone()),
            value: config.value(),
            kind,
        }
    }

    fn key_index(&mut self, ticket: u64) -> u64 {
        if self.config.sequential_keys {
            ticket % self.config.key_space_size
        } else {
            self.chooser.below(self.config.key_space_size)
        }
    }

    fn put_request(&mut self, ticket: u64) -> PutRequest {
        let index = self.key_index(ticket);
        PutRequest {
            key: self.config.key(index),
            value: self.value.clone(),
            ..PutRequest::default()
        }
    }

    fn range_request(&mut self, ticket: u64, serializable: bool) -> RangeRequest {
        let index = self.key_index(ticket);
        RangeRequest {
            key: self.config.key(index),
            serializable,
            ..RangeRequest::default()
        }
    }

    fn txn_request(&mut self, ticket: u64, ops: u64) -> TxnRequest {
        let space = self.config.key_space_size;
        let first = if self.config.sequential_keys {
            ticket.wrapping_mul(ops) % space
        } else {
            self.chooser.below(space)
        };
        // Consecutive indices modulo the key space: distinct because ops <= space.
        let success = (0..ops)
            .map(|offset| RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key: self.config.key((first + offset) % space),
                    value: self.value.clone(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        TxnRequest {
            success,
            ..TxnRequest::default()
        }
    }
}

impl Worker for KvWorker {
    fn request(&mut self, ticket: u64) -> BoxFuture<'_, Result<usize, tonic::Status>> {
        Box::pin(async move {
            match self.kind {
                KvKind::Put => {
                    let request = self.put_request(ticket);
                    self.kv.put(request).await.map(|_| 0)
                }
                KvKind::Range(serializable) => {
                    let request = self.range_request(ticket, serializable);
                    self.kv.range(request).await.map(|_| 0)
                }
                KvKind::TxnPut(ops) => {
                    let request = self.txn_request(ticket, ops);
                    self.kv.txn(request).await.map(|_| 0)
                }
                KvKind::Mixed {
                    read_ratio,
                    serializable,
                } => {
                    if self.chooser.fraction() < read_ratio {
                        let request = self.range_request(ticket, serializable);
                        self.kv.range(request).await.map(|_| 1)
                    } else {
                        let request = self.put_request(ticket);
                        self.kv.put(request).await.map(|_| 0)
                    }
                }
            }
        })
    }
}

/// Seconds-long TTL: the run must never see its leases expire.
const LEASE_TTL_SECONDS: i64 = 600;
/// Keep-alive requests a client may have queued for its stream.
const KEEPALIVE_QUEUE: usize = 4;

/// A client renewing its own lease over its own keep-alive stream.
struct LeaseWorker {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl Worker for LeaseWorker {
    fn request(&mut self, _ticket: u64) -> BoxFuture<'_, Result<usize, tonic::Status>> {
        Box::pin(async move {
            self.requests
                .send(LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| tonic::Status::cancelled("keep-alive stream closed"))?;
            let response = self
                .responses
                .message()
                .await?
                .ok_or_else(|| tonic::Status::cancelled("keep-alive stream ended"))?;
            if response.ttl <= 0 {
                return Err(tonic::Status::not_found("lease expired during the run"));
            }
            Ok(0)
        })
    }
}

async fn run_lease_keepalive(config: &Config, channels: &[Channel]) -> Result<Report, Error> {
    let mut workers: Vec<BoxWorker> = Vec::with_capacity(config.clients);
    let mut granted = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let mut lease = LeaseClient::new(channels[client % channels.len()].clone());
        let grant = tokio::time::timeout(
            config.request_timeout,
            lease.lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            }),
        )
        .await
        .map_err(|_| Error::Setup("lease grant: timeout".into()))?
        .map_err(|status| Error::Setup(format!("lease grant: {}", status_label(&status))))?
        .into_inner();
        let (requests, receiver) = mpsc::channel(KEEPALIVE_QUEUE);
        // grpc-go (etcd) sends a stream's response headers only with its first message, and
        // tonic waits for those headers: the first request must be queued before opening.
        requests
            .send(LeaseKeepAliveRequest { id: grant.id })
            .await
            .map_err(|_| Error::Setup("keep-alive queue closed".into()))?;
        let open = async {
            let mut responses = lease
                .lease_keep_alive(ReceiverStream::new(receiver))
                .await?
                .into_inner();
            responses.message().await?;
            Ok::<_, tonic::Status>(responses)
        };
        let responses = tokio::time::timeout(config.request_timeout, open)
            .await
            .map_err(|_| Error::Setup("keep-alive stream: timeout".into()))?
            .map_err(|status| Error::Setup(format!("keep-alive: {}", status_label(&status))))?;
        granted.push((lease, grant.id));
        workers.push(Box::new(LeaseWorker {
            id: grant.id,
            requests,
            responses,
        }));
    }
    let report = drive(config, "lease-keepalive", &["keepalive"], workers).await;
    // Leave the cluster as it was: the leases would otherwise live for minutes.
    for (mut lease, id) in granted {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(report)
}

/// What [`put_at_rate`] did.
struct PutPhase {
    latencies: Latencies,
    errors: BTreeMap<String, u64>,
    succeeded: u64,
    elapsed: Duration,
}

/// Puts to [`WATCH_KEY`] at `put_rate` per second, one per slot of `sent_at` (each set to the
/// put's sending time, which watchers measure from), the value starting with the put's index.
async fn put_at_rate(
    mut kv: KvClient<Channel>,
    sent_at: Arc<Vec<OnceLock<Instant>>>,
    put_rate: f64,
    config: Config,
) -> PutPhase {
    let mut latencies = Latencies::new();
    let mut errors = BTreeMap::<String, u64>::new();
    let mut succeeded = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / put_rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let deadline = config.duration.map(|duration| start + duration);
    for (index, slot) in sent_at.iter().enumerate() {
        ticker.tick().await;
        if deadline.is_some_and(|at| Instant::now() >= at) {
            break;
        }
        let mut value = (index as u64).to_le_bytes().to_vec();
        value.resize(config.val_size.max(8), b'v');
        let request = PutRequest {
            key: WATCH_KEY.to_vec(),
            value,
            ..PutRequest::default()
        };
        let sent = Instant::now();
        slot.set(sent).expect("each put is sent once");
        match tokio::time::timeout(config.request_timeout, kv.put(request)).await {
            Ok(Ok(_)) => {
                latencies.record(sent.elapsed());
                succeeded += 1;
            }
            Ok(Err(status)) => *errors.entry(status_label(&status)).or_default() += 1,
            Err(_) => *errors.entry("timeout".to_owned()).or_default() += 1,
        }
    }
    PutPhase {
        latencies,
        errors,
        succeeded,
        elapsed: start.elapsed(),
    }
}

/// Each put's first and last event over the watchers that saw it: a run's event p99 can come
/// from a few slow puts (each is 1,000 events with 1,000 watchers) or from every put's fan-out
/// taking long; these two tell which.
struct FanOut {
    /// By put index: the shortest and longest latency of its events, if any arrived.
    by_put: Vec<Option<(Duration, Duration)>>,
}

impl FanOut {
    fn new(puts: usize) -> FanOut {
        FanOut {
            by_put: vec![None; puts],
        }
    }

    fn record(&mut self, put: usize, latency: Duration) {
        if let Some(slot) = self.by_put.get_mut(put) {
            *slot = Some(match *slot {
                Some((first, last)) => (first.min(latency), last.max(latency)),
                None => (latency, latency),
            });
        }
    }

    fn merge(&mut self, other: &FanOut) {
        for (put, span) in other.by_put.iter().enumerate() {
            if let Some((first, last)) = *span {
                self.record(put, first);
                self.record(put, last);
            }
        }
    }

    /// Over the puts: when the first event arrived, and when the last.
    fn latencies(&self) -> (Latencies, Latencies) {
        let (mut first_events, mut last_events) = (Latencies::new(), Latencies::new());
        for (first, last) in self.by_put.iter().flatten() {
            first_events.record(*first);
            last_events.record(*last);
        }
        (first_events, last_events)
    }
}

/// The watch-latency workload's shape.
#[derive(Debug, Clone, Copy)]
struct WatchShape {
    streams: usize,
    watchers_per_stream: usize,
    put_total: u64,
    put_rate: f64,
}

/// The key every watcher watches and every put writes.
const WATCH_KEY: &[u8] = b"keel-bench/watch-latency";
/// How long watchers may still take to deliver events after the last put.
const WATCH_GRACE: Duration = Duration::from_secs(10);
/// Requests a watch stream may have queued for the server.
const WATCH_QUEUE: usize = 64;

async fn run_watch_latency(
    config: &Config,
    channels: &[Channel],
    shape: WatchShape,
) -> Result<Report, Error> {
    if shape.streams == 0 || shape.watchers_per_stream == 0 || shape.put_rate <= 0.0 {
        return Err(Error::Config(
            "--streams, --watchers-per-stream and --put-rate must be positive".into(),
        ));
    }
    let put_total = shape.put_total.min(config.total_bound());
    let put_total_usize =
        usize::try_from(put_total).map_err(|_| Error::Config("--put-total".into()))?;
    let sent_at: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..put_total_usize).map(|_| OnceLock::new()).collect());
    let (stop, stopped) = tokio::sync::watch::channel(false);

    // Set up every watcher before the first put, so each put is seen by all of them.
    let mut receivers = Vec::with_capacity(shape.streams);
    for stream_index in 0..shape.streams {
        let channel = channels[stream_index % channels.len()].clone();
        let mut watch = WatchClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
        let (requests, receiver) = mpsc::channel(WATCH_QUEUE);
        let create = || WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: WATCH_KEY.to_vec(),
                ..WatchCreateRequest::default()
            })),
        };
        // grpc-go (etcd) sends a stream's response headers only with its first message, and
        // tonic waits for those headers: the first request must be queued before opening.
        let closed = |_| Error::Setup("watch stream closed during setup".into());
        requests.send(create()).await.map_err(closed)?;
        let mut responses = tokio::time::timeout(
            config.request_timeout,
            watch.watch(ReceiverStream::new(receiver)),
        )
        .await
        .map_err(|_| Error::Setup("watch stream: timeout".into()))?
        .map_err(|status| Error::Setup(format!("watch: {}", status_label(&status))))?
        .into_inner();
        for _ in 1..shape.watchers_per_stream {
            requests.send(create()).await.map_err(closed)?;
        }
        let mut created = 0;
        while created < shape.watchers_per_stream {
            let response = tokio::time::timeout(config.request_timeout, responses.message())
                .await
                .map_err(|_| Error::Setup("watch create timed out".into()))?
                .map_err(|status| Error::Setup(format!("watch: {}", status_label(&status))))?
                .ok_or_else(|| Error::Setup("watch stream ended during setup".into()))?;
            if response.created {
                created += 1;
            }
        }
        let expected = put_total * shape.watchers_per_stream as u64;
        let sent_at = Arc::clone(&sent_at);
        let mut stopped = stopped.clone();
        receivers.push(tokio::spawn(async move {
            // Holding the request side open keeps the stream (and its watchers) alive.
            let _requests = requests;
            let mut latencies = Latencies::new();
            // Per put: this stream's first and last event (see `FanOut`).
            let mut fan_out = FanOut::new(put_total_usize);
            let mut received = 0u64;
            let mut failure = None;
            while received < expected {
                // Biased, stream first: a response already there is taken without touching
                // the stop signal (polled in turn, it cost the client a few per cent of its
                // CPU per response, and the client's decoding is part of every event's latency).
                let message = tokio::select! {
                    biased;
                    message = responses.message() => message,
                    _ = stopped.changed() => break,
                };
                match message {
                    Ok(Some(response)) => {
                        let arrived = Instant::now();
                        for event in response.events {
                            let Some(kv) = event.kv else { continue };
                            let index = kv
                                .value
                                .get(..8)
                                .and_then(|bytes| bytes.try_into().ok())
                                .map(u64::from_le_bytes);
                            let Some(index) = index.and_then(|index| usize::try_from(index).ok())
                            else {
                                continue;
                            };
                            if let Some(sent) = sent_at.get(index).and_then(OnceLock::get) {
                                let latency = arrived.saturating_duration_since(*sent);
                                latencies.record(latency);
                                fan_out.record(index, latency);
                                received += 1;
                            }
                        }
                    }
                    Ok(None) => {
                        failure = Some("watch stream ended".to_owned());
                        break;
                    }
                    Err(status) => {
                        failure = Some(status_label(&status));
                        break;
                    }
                }
            }
            (latencies, fan_out, failure)
        }));
    }

    // The puts, at a steady rate from one client, on a task of their own like every other
    // workload's clients: run inline (on the thread that blocks on the whole run) each put
    // took two more hand-offs between threads, and a trace caught one put leaving the client
    // 9 ms after it was timed.
    let puts = tokio::spawn(put_at_rate(
        KvClient::new(channels[0].clone()),
        Arc::clone(&sent_at),
        shape.put_rate,
        config.clone(),
    ));
    let PutPhase {
        latencies: put_latencies,
        mut errors,
        succeeded: puts_succeeded,
        elapsed: put_phase,
    } = puts.await.expect("the put task panicked");

    // Wait for the watchers to catch up, at most WATCH_GRACE.
    let grace = tokio::spawn(async move {
        tokio::time::sleep(WATCH_GRACE).await;
        let _ = stop.send(true);
    });
    let mut events = Latencies::new();
    let mut fan_out = FanOut::new(put_total_usize);
    for receiver in receivers {
        let (latencies, stream_fan_out, failure) =
            receiver.await.expect("a watch receiver panicked");
        events.merge(&latencies);
        fan_out.merge(&stream_fan_out);
        if let Some(failure) = failure {
            *errors.entry(format!("watch: {failure}")).or_default() += 1;
        }
    }
    grace.abort();
    let expected = puts_succeeded * (shape.streams * shape.watchers_per_stream) as u64;
    let missing = expected.saturating_sub(events.count());
    if missing > 0 {
        *errors.entry("event not received".to_owned()).or_default() += missing;
    }
    let (first_events, last_events) = fan_out.latencies();
    Ok(Report::new(
        "watch-latency",
        put_phase,
        &[
            ("event", &events),
            ("put", &put_latencies),
            ("first event", &first_events),
            ("last event", &last_events),
        ],
        Some("event"),
        errors,
    ))
}
