//! Distributed tracing end to end: real `keel` processes export over OTLP/gRPC to a collector
//! this test runs (a tonic `TraceService` on loopback), and the spans it receives are checked;
//! one test exports over OTLP/HTTP-protobuf to a minimal HTTP receiver.
//!
//! Guards against: a write through a follower whose leader-side spans land in another trace (or
//! none), a client's W3C or Jaeger context that is not continued, a sampling rate that is
//! ignored, and a collector that is down slowing or failing requests.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::{Client, PutOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use support::{free_port, runtime, Cluster, Keel};

/// How long exported spans may take to reach the collector (the members export every 100 ms).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);
/// OTLP's span kinds, as numbered in the protocol.
const KIND_INTERNAL: i32 = 1;
const KIND_SERVER: i32 = 2;

/// One span as the collector received it, with hex ids.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    service: String,
    instance: String,
    attributes: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|attribute| {
            let value = match attribute
                .value
                .as_ref()
                .and_then(|value| value.value.as_ref())
            {
                Some(Value::StringValue(text)) => text.clone(),
                Some(Value::IntValue(number)) => number.to_string(),
                Some(Value::BoolValue(flag)) => flag.to_string(),
                Some(Value::DoubleValue(number)) => number.to_string(),
                other => format!("{other:?}"),
            };
            (attribute.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = attributes(
                &resource_spans
                    .resource
                    .map(|resource| resource.attributes)
                    .unwrap_or_default(),
            );
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(Received {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        instance: resource
                            .get("service.instance.id")
                            .cloned()
                            .unwrap_or_default(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Starts serving on a loopback port of the runtime's; returns the collector and its port.
    fn start(runtime: &tokio::runtime::Runtime) -> (Collector, u16) {
        let collector = Collector::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = TraceServiceServer::new(collector.clone());
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, port)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until the spans received satisfy `done`; panics with them otherwise.
    fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < ARRIVAL_TIMEOUT,
                "{what}: not received within {ARRIVAL_TIMEOUT:?}; received:\n{spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Members export every 100 ms instead of OpenTelemetry's 5 s, so tests wait little. Every test
/// sets the same value, so setting it from parallel tests is harmless.
fn export_quickly() {
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
}

fn tracing_flags(collector_port: u16, samples_per_million: u32) -> Vec<String> {
    vec![
        "--enable-distributed-tracing".into(),
        "--distributed-tracing-address".into(),
        format!("127.0.0.1:{collector_port}"),
        "--distributed-tracing-service-name".into(),
        "keel".into(),
        "--distributed-tracing-sampling-rate".into(),
        samples_per_million.to_string(),
    ]
}

/// A fresh random-enough id of `bytes` bytes, as hex (never all zeros).
fn random_hex(bytes: usize) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 32;
    let mut state = seed | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{:02x}", (state as u8) | 1)
        })
        .collect()
}

async fn raw_kv(endpoint: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap()
}

fn with_metadata<T>(message: T, metadata: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ASCII metadata"));
    }
    request
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn one<'a>(
    spans: &'a [&'a Received],
    what: &str,
    found: impl Fn(&Received) -> bool,
) -> &'a Received {
    let matching: Vec<&&Received> = spans.iter().filter(|span| found(span)).collect();
    assert_eq!(matching.len(), 1, "exactly one {what} in:\n{spans:#?}");
    matching[0]
}

/// Index of the member all members name as leader.
async fn leader_index(cluster: &Cluster) -> usize {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for index in 0..cluster.size() {
            if let Ok(mut client) = Client::connect(cluster.endpoint(index)).await {
                if let Ok(status) = client.status().await {
                    views.push((index, status.header.unwrap().member_id, status.leader));
                }
            }
        }
        if views.len() == cluster.size()
            && views[0].2 != 0
            && views.iter().all(|view| view.2 == views[0].2)
        {
            if let Some(view) = views.iter().find(|view| view.1 == views[0].2) {
                return view.0;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no leader: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_put_through_a_follower_is_one_trace_with_the_leaders_raft_spans() {
    export_quickly();
    let runtime = runtime();
    let (collector, collector_port) = Collector::start(&runtime);
    let mut flags = tracing_flags(collector_port, 1_000_000);
    flags.extend(["--heartbeat-interval", "50", "--election-timeout", "500"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, &flags);
    let leader = runtime.block_on(leader_index(&cluster));
    let follower = (leader + 1) % 3;
    let (leader_name, follower_name) = (format!("m{leader}"), format!("m{follower}"));

    let trace_id = random_hex(16);
    let client_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    runtime.block_on(async {
        let mut kv = raw_kv(&cluster.endpoint(follower)).await;
        kv.put(with_metadata(
            put("traced/put"),
            &[("traceparent", &traceparent)],
        ))
        .await
        .unwrap();
        // A linearizable read through the same follower, in the same trace.
        kv.range(with_metadata(
            RangeRequest {
                key: b"traced/put".to_vec(),
                ..Default::default()
            },
            &[("traceparent", &traceparent)],
        ))
        .await
        .unwrap();
    });

    let expected = [
        (&follower_name, "etcdserverpb.KV/Put"),
        (&follower_name, "raft.propose"),
        (&follower_name, "raft.append"),
        (&follower_name, "raft.commit"),
        (&follower_name, "raft.apply"),
        (&leader_name, "raft.append"),
        (&leader_name, "raft.replicate"),
        (&leader_name, "raft.apply"),
        (&follower_name, "etcdserverpb.KV/Range"),
        (&follower_name, "raft.read_index"),
        (&follower_name, "raft.wait_apply"),
        (&follower_name, "range"),
    ];
    let spans = collector.wait_for("the put's and the range's spans", |spans| {
        let responds = spans
            .iter()
            .filter(|span| span.trace_id == trace_id && span.name == "respond")
            .count();
        responds == 2
            && expected.iter().all(|(instance, name)| {
                spans.iter().any(|span| {
                    span.trace_id == trace_id && &span.instance == *instance && span.name == *name
                })
            })
    });
    let trace: Vec<&Received> = spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .collect();
    let instances: BTreeSet<&str> = trace.iter().map(|span| span.instance.as_str()).collect();
    assert!(
        instances.len() >= 2,
        "spans from the follower and the leader: {instances:?}"
    );
    assert!(
        trace.iter().all(|span| span.service == "keel"),
        "{trace:#?}"
    );

    let put_span = one(&trace, "Put server span", |span| {
        span.name == "etcdserverpb.KV/Put"
    });
    assert_eq!(
        put_span.parent_span_id, client_span,
        "the client's span is the parent"
    );
    assert_eq!(put_span.kind, KIND_SERVER);
    assert_eq!(put_span.instance, follower_name);
    assert_eq!(
        put_span.attributes.get("rpc.system").map(String::as_str),
        Some("grpc")
    );
    assert_eq!(
        put_span.attributes.get("rpc.method").map(String::as_str),
        Some("Put")
    );
    assert_eq!(
        put_span.attributes.get("etcd.key").map(String::as_str),
        Some("traced/put")
    );
    assert!(
        put_span.attributes.contains_key("etcd.revision"),
        "{put_span:#?}"
    );
    assert!(
        put_span.attributes.contains_key("raft.term"),
        "{put_span:#?}"
    );
    let propose = one(&trace, "raft.propose", |span| span.name == "raft.propose");
    assert_eq!(propose.parent_span_id, put_span.span_id);
    for (instance, name) in &expected[2..8] {
        let span = one(&trace, &format!("{name} on {instance}"), |span| {
            &span.instance == *instance && span.name == *name
        });
        assert_eq!(
            span.parent_span_id, propose.span_id,
            "{name} on {instance} is a child of the proposal"
        );
        assert_eq!(span.kind, KIND_INTERNAL);
    }

    one(&trace, "the put's respond span", |span| {
        span.name == "respond" && span.parent_span_id == put_span.span_id
    });

    let range_span = one(&trace, "Range server span", |span| {
        span.name == "etcdserverpb.KV/Range"
    });
    assert_eq!(range_span.parent_span_id, client_span);
    for name in ["raft.read_index", "raft.wait_apply", "range"] {
        let span = one(&trace, name, |span| span.name == name);
        assert_eq!(span.parent_span_id, range_span.span_id, "{name}");
    }
    drop(cluster);
}

#[test]
fn w3c_and_jaeger_contexts_from_clients_are_continued() {
    export_quickly();
    let runtime = runtime();
    let (collector, collector_port) = Collector::start(&runtime);
    let flags = tracing_flags(collector_port, 1_000_000);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let keel = Keel::start_with(&flags);

    let w3c_trace = random_hex(16);
    let w3c_span = random_hex(8);
    let jaeger_trace = random_hex(8);
    let jaeger_span = random_hex(8);
    let jaeger_trace_128 = random_hex(16);
    runtime.block_on(async {
        let mut kv = raw_kv(&keel.endpoint()).await;
        kv.put(with_metadata(
            put("w3c"),
            &[
                ("traceparent", &format!("00-{w3c_trace}-{w3c_span}-01")),
                ("tracestate", "vendor=value"),
                ("baggage", "tenant=blue"),
            ],
        ))
        .await
        .unwrap();
        // jaeger-client URL-encodes the colons; a 64-bit trace id is zero-padded to 128 bits.
        kv.put(with_metadata(
            put("jaeger"),
            &[
                (
                    "uber-trace-id",
                    &format!("{jaeger_trace}%3A{jaeger_span}%3A0%3A1"),
                ),
                ("uberctx-tenant", "blue"),
            ],
        ))
        .await
        .unwrap();
        kv.put(with_metadata(
            put("jaeger-128"),
            &[(
                "uber-trace-id",
                &format!("{jaeger_trace_128}:{jaeger_span}:0:3"),
            )],
        ))
        .await
        .unwrap();
    });
    let padded = format!("0000000000000000{jaeger_trace}");
    let continued = |spans: &[Received], trace: &str| {
        spans
            .iter()
            .any(|span| span.trace_id == trace && span.name == "etcdserverpb.KV/Put")
    };
    let spans = collector.wait_for("the three puts' server spans", |spans| {
        continued(spans, &w3c_trace)
            && continued(spans, &padded)
            && continued(spans, &jaeger_trace_128)
    });
    for (trace, parent) in [
        (&w3c_trace, &w3c_span),
        (&padded, &jaeger_span),
        (&jaeger_trace_128, &jaeger_span),
    ] {
        let server = spans
            .iter()
            .find(|span| &span.trace_id == trace && span.name == "etcdserverpb.KV/Put")
            .unwrap();
        assert_eq!(&server.parent_span_id, parent, "{server:#?}");
    }

    // keel-client sends the caller's current span: a tracing span with an OpenTelemetry
    // layer of this test's own.
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let (client_trace, client_span) = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("application request");
        let context = span.context();
        let ids = (
            context.span().span_context().trace_id().to_string(),
            context.span().span_context().span_id().to_string(),
        );
        runtime.block_on(tracing::Instrument::instrument(
            async {
                let mut client = Client::connect(keel.endpoint()).await.unwrap();
                client
                    .put("keel-client", "v", PutOptions::new())
                    .await
                    .unwrap();
            },
            span,
        ));
        ids
    });
    let spans = collector.wait_for("the keel-client put's server span", |spans| {
        continued(spans, &client_trace)
    });
    let server = spans
        .iter()
        .find(|span| span.trace_id == client_trace && span.name == "etcdserverpb.KV/Put")
        .unwrap();
    assert_eq!(server.parent_span_id, client_span);
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, one thread per connection;
/// returns the port and what it received.
fn start_http_collector() -> (u16, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let requests = Arc::clone(&requests);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                // One request after another on the connection, until the client closes it.
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut body_bytes = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                body_bytes = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; body_bytes];
                    reader.read_exact(&mut body).unwrap();
                    assert!(
                        request_line.starts_with("POST /v1/traces "),
                        "{request_line}"
                    );
                    let request =
                        <ExportTraceServiceRequest as prost::Message>::decode(body.as_slice())
                            .unwrap();
                    requests.lock().unwrap().push(request);
                    writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (port, received)
}

#[test]
fn spans_can_be_exported_over_otlp_http_protobuf() {
    export_quickly();
    let runtime = runtime();
    let (port, received) = start_http_collector();
    let mut flags = tracing_flags(port, 1_000_000);
    flags[2] = format!("http://127.0.0.1:{port}");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let keel =
        Keel::start_with_environment(&flags, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
    runtime.block_on(async {
        let mut kv = raw_kv(&keel.endpoint()).await;
        kv.put(put("over-http")).await.unwrap();
    });
    let started = Instant::now();
    loop {
        let names: Vec<String> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans)
            .map(|span| span.name.clone())
            .collect();
        if names.iter().any(|name| name == "etcdserverpb.KV/Put") {
            break;
        }
        assert!(
            started.elapsed() < ARRIVAL_TIMEOUT,
            "no Put span over HTTP: {names:?}\n{}",
            keel.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `/metrics` from a member's metrics port.
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The sum of a metric's samples (all label sets).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_sampling_rate_decides_whether_new_traces_are_recorded() {
    export_quickly();
    let runtime = runtime();
    let (collector, collector_port) = Collector::start(&runtime);
    let start = |rate: u32, instance: &str| {
        let metrics_port = free_port();
        let mut flags = tracing_flags(collector_port, rate);
        flags.extend([
            "--distributed-tracing-instance-id".to_string(),
            instance.to_string(),
            "--listen-metrics-urls".to_string(),
            format!("http://127.0.0.1:{metrics_port}"),
        ]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        (Keel::start_with(&flags), metrics_port)
    };
    let (never, never_metrics) = start(0, "never");
    let (always, _) = start(1_000_000, "always");
    runtime.block_on(async {
        for keel in [&never, &always] {
            let mut kv = raw_kv(&keel.endpoint()).await;
            for index in 0..20 {
                kv.put(put(&format!("sampled/{index}"))).await.unwrap();
            }
        }
    });
    let spans = collector.wait_for(
        "20 server spans from the member sampling everything",
        |spans| {
            spans
                .iter()
                .filter(|span| span.instance == "always" && span.name == "etcdserverpb.KV/Put")
                .count()
                == 20
        },
    );
    // Every Put started its own trace.
    let traces: BTreeSet<&str> = spans
        .iter()
        .filter(|span| span.name == "etcdserverpb.KV/Put")
        .map(|span| span.trace_id.as_str())
        .collect();
    assert_eq!(traces.len(), 20);
    // The member sampling nothing made no span to export: its queue never saw one.
    let text = metrics(never_metrics);
    assert_eq!(
        metric(&text, "keel_tracing_spans_exported_total"),
        0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "keel_tracing_spans_dropped_total"),
        0,
        "{text}"
    );
    assert!(collector
        .spans()
        .iter()
        .all(|span| span.instance != "never"));
}

#[test]
fn a_dead_collector_neither_fails_nor_holds_up_requests() {
    export_quickly();
    let runtime = runtime();
    // Nothing listens on this port.
    let dead_port = free_port();
    let metrics_port = free_port();
    let mut flags = tracing_flags(dead_port, 1_000_000);
    flags.extend([
        "--listen-metrics-urls".to_string(),
        format!("http://127.0.0.1:{metrics_port}"),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let keel = Keel::start_with(&flags);
    // Far below the member's request timeout (7 s): a put never waits on the exporter.
    let put_time_max = Duration::from_secs(3);
    runtime.block_on(async {
        let mut kv = raw_kv(&keel.endpoint()).await;
        for index in 0..200 {
            let started = Instant::now();
            kv.put(put(&format!("dead/{index}")))
                .await
                .unwrap_or_else(|status| panic!("put {index} failed: {status}"));
            assert!(
                started.elapsed() < put_time_max,
                "put {index} took {:?}",
                started.elapsed()
            );
        }
    });
    let started = Instant::now();
    loop {
        let text = metrics(metrics_port);
        if metric(&text, "keel_tracing_spans_dropped_total") > 0 {
            assert_eq!(
                metric(&text, "keel_tracing_spans_exported_total"),
                0,
                "{text}"
            );
            break;
        }
        assert!(
            started.elapsed() < ARRIVAL_TIMEOUT,
            "no span counted as dropped:\n{text}\n{}",
            keel.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
