//! Watch streams: many watchers on one bidirectional stream, fed from the store's history.
//!
//! Each stream is one task. It wakes when the store's revision moves (the node publishes it
//! after every applied batch), reads the changes its watchers haven't seen from the store's
//! history in bounded chunks, and sends them in revision order. A watcher that is behind (a
//! start revision in the past, or a client slow to read) catches up from the same history, so
//! "synced" and "unsynced" watchers differ only in where they start reading. Nothing is
//! buffered per watcher: a slow client holds back only its own stream (its outgoing queue is
//! bounded), and memory does not grow with how far behind it is.
//!
//! Guarantees, as etcd's: events in revision order, never duplicated, all events of one
//! revision in one response (unless the watcher asked for fragments); a watcher whose next
//! revision was compacted is cancelled with `compact_revision` set.
//!
//! A change usually goes to many watchers at once, each owed its own response. The stream
//! encodes the header and each distinct list of events once and copies the bytes into each
//! watcher's response, framed for gRPC as it goes ([`Frames`]); it hands its responses to the
//! gRPC layer in batches that are written to the HTTP/2 stream as they are. So one change
//! costs one protobuf encoding, one queue hand-off and one HTTP/2 write per stream rather than
//! one of each per watcher, and no per-response work in the gRPC layer.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use keel_api::etcdserverpb::watch_create_request::FilterType;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::mvccpb::{event::EventType, Event, KeyValue};
use keel_storage::mvcc::{Change, ChangeKind, Changes, MvccError, RangeEnd, RangeOptions};
use prost::encoding::{int64 as proto_int64, message as proto_message};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use crate::Node;

/// Changes read from history at a time, per stream (a revision is never split, so a large
/// transaction can pass it).
const CHANGES_PER_READ_MAX: usize = 1_000;

/// A stream with this many watchers or more holds off the write path's polling threads while
/// it delivers (`busy_poll::Load::hold_off`): its burst of encoding and sending, and the
/// clients' reading, want both vCPUs more than threads polling for an input that is not due.
const FAN_OUT_WATCHERS: usize = 32;
/// How long: about what 1,000 watchers' events take to deliver here (~2 ms).
const FAN_OUT_HOLD_OFF: std::time::Duration = std::time::Duration::from_millis(2);
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 100_000;
/// Framed responses a stream collects before it hands them to the gRPC layer (one buffer, one
/// HTTP/2 write) without waiting for the delivery to end. A batch may pass it by one response.
pub const BATCH_BYTES_MAX: usize = 64 * 1024;
/// Batches queued for a client before the stream waits for it to read.
pub const BATCHES_QUEUED_MAX: usize = 4;

/// What a stream hands to the gRPC layer: framed responses ([`Frames`]), or the error ending
/// the stream.
pub type ResponseBatch = Result<Bytes, Status>;

// Field numbers of `etcdserverpb.WatchResponse` (rpc.proto) that `Frames` writes.
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 11;
/// gRPC's prefix of each message: a compressed flag (never set here) and the length, big-endian.
const GRPC_PREFIX_BYTES: usize = 5;

/// `WatchResponse`s encoded as protobuf and framed as gRPC messages, back to back: the bytes
/// of the HTTP/2 stream, which the gRPC layer writes as they are.
///
/// Event notifications are written from their parts: the header and the events are encoded
/// once per delivery and copied into every watcher's response; only the watcher id is encoded
/// per response. The bytes are exactly what prost and tonic would write for the equivalent
/// `WatchResponse` (fields in number order, zero values left out, an uncompressed frame).
#[derive(Debug, Default)]
pub struct Frames {
    buffer: BytesMut,
}

impl Frames {
    /// Appends a notification from its encoded parts: `header` is field 1 and `events` every
    /// event as field 11, each with its tag and length.
    pub fn push_events(
        &mut self,
        header: &[u8],
        watch_id: i64,
        events: &[u8],
    ) -> Result<(), Status> {
        let watch_id_bytes = if watch_id == 0 {
            0
        } else {
            proto_int64::encoded_len(WATCH_ID_FIELD, &watch_id)
        };
        self.prefix(header.len() + watch_id_bytes + events.len())?;
        self.buffer.put_slice(header);
        if watch_id != 0 {
            proto_int64::encode(WATCH_ID_FIELD, &watch_id, &mut self.buffer);
        }
        self.buffer.put_slice(events);
        Ok(())
    }

    /// Appends any response.
    pub fn push(&mut self, response: &WatchResponse) -> Result<(), Status> {
        self.prefix(response.encoded_len())?;
        response
            .encode(&mut self.buffer)
            .expect("the buffer grows to fit");
        Ok(())
    }

    /// The gRPC prefix of a message of `length` bytes, with room reserved for the message.
    fn prefix(&mut self, length: usize) -> Result<(), Status> {
        let framed_length = u32::try_from(length).map_err(|_| {
            Status::resource_exhausted(format!(
                "keel: a watch response of {length} bytes is larger than a gRPC message can be"
            ))
        })?;
        self.buffer.reserve(GRPC_PREFIX_BYTES + length);
        self.buffer.put_u8(0);
        self.buffer.put_u32(framed_length);
        Ok(())
    }

    pub fn len_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Everything appended so far; the buffer starts over.
    pub fn take(&mut self) -> Bytes {
        self.buffer.split().freeze()
    }
}

/// Field 1 of a `WatchResponse`, shared by every response of one delivery.
fn encode_header(header: &ResponseHeader) -> Bytes {
    let mut bytes = BytesMut::with_capacity(proto_message::encoded_len(HEADER_FIELD, header));
    proto_message::encode(HEADER_FIELD, header, &mut bytes);
    bytes.freeze()
}

/// The changes from `from` through `current` out of the node's last publication (`recent`),
/// when it holds them all.
fn recent_from(recent: Option<&Arc<Changes>>, from: i64, current: i64) -> Option<Arc<Changes>> {
    let recent = recent?;
    let first = recent.changes.first()?.kv.mod_revision;
    if recent.through_revision != current || from < first {
        return None;
    }
    if from == first {
        return Some(Arc::clone(recent));
    }
    let changes = recent
        .changes
        .iter()
        .filter(|change| change.kv.mod_revision >= from)
        .cloned()
        .collect();
    Some(Arc::new(Changes {
        changes,
        through_revision: recent.through_revision,
    }))
}

/// Events encoded for one delivery, shared by the watchers that are sent them.
#[derive(Clone)]
struct SharedEvents {
    /// Field 11 for every event.
    bytes: Bytes,
    /// The events' own sizes summed, as the fragment limit counts them.
    payload_bytes: usize,
}

/// The events encoded during one delivery, by which changes they hold (indices into the
/// delivered changes) and whether they carry previous values; watchers on the same keys with
/// the same options share one entry.
#[derive(Default)]
struct EncodedEvents {
    by_selection: [HashMap<Vec<usize>, SharedEvents>; 2],
    /// The entry handed out last, with its key: consecutive watchers of a stream usually watch
    /// the same keys, and comparing a short list costs less than hashing it.
    last: Option<(bool, Vec<usize>, SharedEvents)>,
}

impl EncodedEvents {
    /// The encoded events for `selection`, made from `events()` the first time.
    fn get_or_encode(
        &mut self,
        selection: &[usize],
        prev_kv: bool,
        events: impl FnOnce() -> Vec<Event>,
    ) -> SharedEvents {
        if let Some((last_prev_kv, last_selection, shared)) = &self.last {
            if *last_prev_kv == prev_kv && last_selection.as_slice() == selection {
                return shared.clone();
            }
        }
        let by_selection = &mut self.by_selection[usize::from(prev_kv)];
        let shared = match by_selection.get(selection) {
            Some(shared) => shared.clone(),
            None => {
                let shared = SharedEvents::encode(&events());
                by_selection.insert(selection.to_vec(), shared.clone());
                shared
            }
        };
        self.last = Some((prev_kv, selection.to_vec(), shared.clone()));
        shared
    }
}

impl SharedEvents {
    fn encode(events: &[Event]) -> SharedEvents {
        let payload_bytes = events.iter().map(Message::encoded_len).sum();
        let mut bytes = BytesMut::with_capacity(
            events
                .iter()
                .map(|event| proto_message::encoded_len(EVENTS_FIELD, event))
                .sum(),
        );
        for event in events {
            proto_message::encode(EVENTS_FIELD, event, &mut bytes);
        }
        SharedEvents {
            bytes: bytes.freeze(),
            payload_bytes,
        }
    }
}

/// What the node publishes after each applied batch that changed the store: the new revision
/// and, when small enough, the batch's changes, so that streams which are up to date don't each
/// read them from the store.
#[derive(Debug, Clone)]
pub struct Published {
    pub revision: i64,
    /// The changes of the revisions after the previous publication, through `revision`.
    pub recent: Option<Arc<Changes>>,
}

/// How watch streams behave.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often an idle watcher that asked for progress notifications gets one (etcd's
    /// `--experimental-watch-progress-notify-interval`, 10 minutes by default).
    pub progress_interval: Duration,
    /// Largest response when a watcher allows fragments (etcd uses `--max-request-bytes`).
    pub fragment_bytes_max: usize,
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision this watcher has not been sent.
    next_revision: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events were sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn matches(&self, change: &Change) -> bool {
        match change.kind {
            ChangeKind::Put if self.no_put => return false,
            ChangeKind::Delete if self.no_delete => return false,
            _ => {}
        }
        let key = change.kv.key.as_slice();
        match RangeEnd::from_request(&self.range_end) {
            RangeEnd::Single => key == self.key.as_slice(),
            RangeEnd::Unbounded => key >= self.key.as_slice(),
            RangeEnd::Before(end) => key >= self.key.as_slice() && key < end,
        }
    }
}

/// The events for the changes at `selection` (indices into `changes`).
fn events(node: &Node, changes: &[Change], selection: &[usize], prev_kv: bool) -> Vec<Event> {
    selection
        .iter()
        .map(|&index| {
            let change = &changes[index];
            Event {
                r#type: match change.kind {
                    ChangeKind::Put => EventType::Put,
                    ChangeKind::Delete => EventType::Delete,
                } as i32,
                kv: Some(change.kv.clone()),
                prev_kv: if prev_kv {
                    previous(node, &change.kv)
                } else {
                    None
                },
            }
        })
        .collect()
}

/// The key's value just before the change (none when it didn't exist or was compacted).
fn previous(node: &Node, kv: &KeyValue) -> Option<KeyValue> {
    let options = RangeOptions {
        revision: kv.mod_revision - 1,
        ..RangeOptions::default()
    };
    let found = node
        .store()
        .range(&kv.key, RangeEnd::Single, &options)
        .ok()?;
    found.kvs.into_iter().next()
}

/// With tracing on, each notification is a span of its own (the change's writer is not known
/// here): which watcher, how many events, through which revision.
fn notify_span(id: i64, events: usize, revision: i64) -> tracing::Span {
    if crate::telemetry::enabled() {
        tracing::info_span!(
            target: "keel::watch",
            "watch.notify",
            watch.id = id,
            watch.events = events,
            etcd.revision = revision,
        )
    } else {
        tracing::Span::none()
    }
}

/// Why [`WatchStream::queue_notifications`] stopped before the last watcher.
enum Pause {
    /// The batch reached [`BATCH_BYTES_MAX`]: hand it over before queuing more.
    BatchFull,
    /// The watcher's events are larger than it takes in one response: send them in parts.
    Fragments {
        selection: Vec<usize>,
        prev_kv: bool,
    },
    /// The watcher's response could not be framed: the stream ends with this status.
    Unframed(Status),
}

/// The client went away; the stream ends.
struct Gone;

/// Decides whether a stream may watch `[key, range_end)`; `Err` is the cancel reason.
pub type WatchPermit = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

struct WatchStream {
    node: Arc<Node>,
    permit: WatchPermit,
    config: WatchConfig,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    responses: mpsc::Sender<ResponseBatch>,
    /// Responses not yet handed over (about `BATCH_BYTES_MAX` at most).
    batch: Frames,
    revisions: tokio::sync::watch::Receiver<Published>,
}

/// Serves one Watch stream until the client closes it or goes away.
pub async fn serve_stream(
    node: Arc<Node>,
    config: WatchConfig,
    mut requests: impl Stream<Item = Result<WatchRequest, Status>> + Unpin,
    responses: mpsc::Sender<ResponseBatch>,
    permit: WatchPermit,
) {
    let revisions = node.subscribe_revisions();
    let mut ticker = tokio::time::interval(config.progress_interval);
    ticker.tick().await;
    let mut stream = WatchStream {
        node,
        permit,
        config,
        watchers: BTreeMap::new(),
        next_id: 0,
        responses,
        batch: Frames::default(),
        revisions,
    };
    loop {
        let Ok(synced) = stream.deliver().await else {
            return;
        };
        // Everything answered or delivered so far goes out before the stream waits again.
        if stream.flush().await.is_err() {
            return;
        }
        tokio::select! {
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    if stream.handle(request, synced).await.is_err() {
                        return;
                    }
                }
                // The client closed its side, or the transport failed.
                Some(Err(_)) | None => return,
            },
            changed = stream.revisions.changed() => {
                if changed.is_err() {
                    // The member stopped.
                    return;
                }
            }
            _ = ticker.tick() => {
                if stream.progress_tick(synced).await.is_err() {
                    return;
                }
            }
            () = stream.responses.closed() => return,
        }
    }
}

impl WatchStream {
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.node.header(revision))
    }

    /// Queues a response; it is handed over when the batch is full or the stream flushes.
    async fn send(&mut self, response: WatchResponse) -> Result<(), Gone> {
        let framed = self.batch.push(&response);
        self.queued(framed).await
    }

    /// After a response was queued: hands the batch over once it is full; a response that
    /// could not be framed ends the stream with its status.
    async fn queued(&mut self, framed: Result<(), Status>) -> Result<(), Gone> {
        if let Err(status) = framed {
            self.flush().await?;
            let _ = self.responses.send(Err(status)).await;
            return Err(Gone);
        }
        if self.batch.len_bytes() >= BATCH_BYTES_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the queued responses to the gRPC layer, waiting while the client's queue is full.
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = self.batch.take();
        self.responses.send(Ok(batch)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, request: WatchRequest, synced: i64) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // etcd answers only the cancellation of a watcher that exists.
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let response = WatchResponse {
                        header: self.header(0),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher has been sent everything through `synced`.
                let response = WatchResponse {
                    header: self.header(synced),
                    watch_id: -1,
                    ..WatchResponse::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Gone> {
        let current = self.node.store().revision();
        let refuse = |reason: &str| WatchResponse {
            header: Some(self.node.header(current)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..WatchResponse::default()
        };
        if let Err(reason) = (self.permit)(&create.key, &create.range_end) {
            return self.send(refuse(&reason)).await;
        }
        // etcd's checks: a range must not be empty, a chosen id must be free.
        if let RangeEnd::Before(end) = RangeEnd::from_request(&create.range_end) {
            if create.key.as_slice() >= end {
                return self.send(refuse("mvcc: watcher range is empty")).await;
            }
        }
        let id = if create.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&create.watch_id) {
            return self
                .send(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream",
                ))
                .await;
        } else {
            create.watch_id
        };
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            return self
                .send(refuse("keel: too many watchers on this stream"))
                .await;
        }
        let filters = |filter: FilterType| create.filters.contains(&(filter as i32));
        let watcher = Watcher {
            key: create.key.clone(),
            range_end: create.range_end.clone(),
            next_revision: if create.start_revision <= 0 {
                current + 1
            } else {
                create.start_revision
            },
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        let created = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        };
        self.send(created).await
    }

    /// Sends every watcher everything up to the current revision; returns the revision through
    /// which all watchers have been served.
    async fn deliver(&mut self) -> Result<i64, Gone> {
        loop {
            // The revision the node published last, and the changes that came with it: read
            // together, without the store's lock, so a batch being applied (it holds the
            // store's write lock through its commit) does not hold up delivering the last one.
            // Every change of the revision is published, so nothing waits longer than that.
            let (current, recent) = {
                let published = self.revisions.borrow();
                (published.revision, published.recent.clone())
            };
            let Some(from) = self
                .watchers
                .values()
                .map(|watcher| watcher.next_revision)
                .filter(|next| *next <= current)
                .min()
            else {
                return Ok(current);
            };
            let store = self.node.store();
            let changes = match recent_from(recent.as_ref(), from, current) {
                Some(changes) => changes,
                None => match store.changes(from, CHANGES_PER_READ_MAX) {
                    Ok(changes) => Arc::new(changes),
                    Err(MvccError::Compacted) => {
                        self.cancel_compacted(store.compact_revision()).await?;
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "watch could not read history");
                        self.flush().await?;
                        let _ = self
                            .responses
                            .send(Err(Status::unavailable("etcdserver: server stopped")))
                            .await;
                        return Err(Gone);
                    }
                },
            };
            self.notify(&changes).await?;
        }
    }

    /// Sends every watcher due `changes` the ones it watches.
    ///
    /// The watchers are walked without awaiting ([`WatchStream::queue_notifications`]), which
    /// stops only for what has to wait: a full batch to hand over, a response to fragment, a
    /// response that cannot be framed. Then the walk goes on after the watcher it stopped at.
    async fn notify(&mut self, changes: &Changes) -> Result<(), Gone> {
        if self.watchers.len() >= FAN_OUT_WATCHERS {
            self.node.write_path_load().hold_off(FAN_OUT_HOLD_OFF);
        }
        let revision = changes.through_revision;
        let header = encode_header(&self.node.header(revision));
        let mut encoded = EncodedEvents::default();
        let mut after = None;
        loop {
            let Some((id, pause)) = self.queue_notifications(after, changes, &header, &mut encoded)
            else {
                return Ok(());
            };
            match pause {
                Pause::BatchFull => self.queued(Ok(())).await?,
                Pause::Fragments { selection, prev_kv } => {
                    let span = notify_span(id, selection.len(), revision);
                    let events = events(&self.node, &changes.changes, &selection, prev_kv);
                    let responses = self.fragments(id, revision, events);
                    let send = async {
                        for response in responses {
                            self.send(response).await?;
                        }
                        Ok(())
                    };
                    tracing::Instrument::instrument(send, span).await?;
                }
                Pause::Unframed(status) => return self.queued(Err(status)).await,
            }
            after = Some(id);
        }
    }

    /// Queues the notifications of the watchers after `after` (all when `None`) in the batch,
    /// until one needs what cannot be done without awaiting: then that watcher's id, and why.
    fn queue_notifications(
        &mut self,
        after: Option<i64>,
        changes: &Changes,
        header: &[u8],
        encoded: &mut EncodedEvents,
    ) -> Option<(i64, Pause)> {
        let revision = changes.through_revision;
        // Resuming needs no more than the id: a watcher already sent this delivery has moved
        // its next revision past it, so no watcher is sent anything twice.
        let range = match after {
            Some(id) => (Bound::Excluded(id), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut selection = Vec::new();
        for (&id, watcher) in self.watchers.range_mut(range) {
            if watcher.next_revision > revision {
                continue;
            }
            selection.clear();
            selection.extend(
                changes
                    .changes
                    .iter()
                    .enumerate()
                    .filter(|(_, change)| {
                        change.kv.mod_revision >= watcher.next_revision && watcher.matches(change)
                    })
                    .map(|(index, _)| index),
            );
            watcher.next_revision = revision + 1;
            if selection.is_empty() {
                continue;
            }
            watcher.sent_since_tick = true;
            let prev_kv = watcher.prev_kv;
            let shared = encoded.get_or_encode(&selection, prev_kv, || {
                events(&self.node, &changes.changes, &selection, prev_kv)
            });
            if watcher.fragment && shared.payload_bytes > self.config.fragment_bytes_max {
                let selection = selection.clone();
                return Some((id, Pause::Fragments { selection, prev_kv }));
            }
            let _span = notify_span(id, selection.len(), revision).entered();
            if let Err(status) = self.batch.push_events(header, id, &shared.bytes) {
                return Some((id, Pause::Unframed(status)));
            }
            if self.batch.len_bytes() >= BATCH_BYTES_MAX {
                return Some((id, Pause::BatchFull));
            }
        }
        None
    }

    /// The responses carrying `events` to a watcher that allows fragments, each at most
    /// `fragment_bytes_max` of events unless a single event is larger; all but the last are
    /// marked as fragments.
    fn fragments(&self, id: i64, revision: i64, events: Vec<Event>) -> Vec<WatchResponse> {
        let response = |events: Vec<Event>, fragment: bool| WatchResponse {
            header: self.header(revision),
            watch_id: id,
            fragment,
            events,
            ..WatchResponse::default()
        };
        let mut responses = Vec::new();
        let mut part = Vec::new();
        let mut part_bytes = 0;
        for event in events {
            let bytes = event.encoded_len();
            if !part.is_empty() && part_bytes + bytes > self.config.fragment_bytes_max {
                responses.push(response(std::mem::take(&mut part), true));
                part_bytes = 0;
            }
            part_bytes += bytes;
            part.push(event);
        }
        responses.push(response(part, false));
        responses
    }

    async fn cancel_compacted(&mut self, compact_revision: i64) -> Result<(), Gone> {
        let compacted: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.next_revision < compact_revision)
            .map(|(id, _)| *id)
            .collect();
        for id in compacted {
            self.watchers.remove(&id);
            let response = WatchResponse {
                header: self.header(0),
                watch_id: id,
                canceled: true,
                compact_revision,
                ..WatchResponse::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }

    async fn progress_tick(&mut self, synced: i64) -> Result<(), Gone> {
        let mut idle = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && !watcher.sent_since_tick {
                idle.push(*id);
            }
            watcher.sent_since_tick = false;
        }
        for id in idle {
            self.send(WatchResponse {
                header: self.header(synced),
                watch_id: id,
                ..WatchResponse::default()
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &[u8], value: &[u8], revision: i64, prev_kv: bool) -> Event {
        let kv = |value: &[u8], revision: i64| KeyValue {
            key: key.to_vec(),
            create_revision: 2,
            mod_revision: revision,
            version: revision - 1,
            value: value.to_vec(),
            lease: 0,
        };
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(value, revision)),
            prev_kv: prev_kv.then(|| kv(b"before", revision - 1)),
        }
    }

    /// gRPC's framing of one message: an uncompressed flag and the length, big-endian.
    fn framed(message: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(message);
        bytes
    }

    /// Guards against watchers sent another watcher's events: the encoding is shared only by
    /// watchers selecting the same changes with the same `prev_kv`, whether they come one after
    /// another (the comparison with the last entry) or not (the map).
    #[test]
    fn encoded_events_are_shared_only_by_the_same_selection_and_options() {
        let a = vec![event(b"a", b"1", 5, false)];
        let b = vec![event(b"b", b"2", 6, false)];
        let mut encoded = EncodedEvents::default();
        let mut encodings = 0;
        let mut get = |selection: &[usize], prev_kv: bool, events: &Vec<Event>| {
            encoded
                .get_or_encode(selection, prev_kv, || {
                    encodings += 1;
                    events.clone()
                })
                .bytes
        };
        let first = get(&[0], false, &a);
        assert_eq!(get(&[0], false, &b), first, "same as the last: shared");
        let other = get(&[1], false, &b);
        assert_ne!(other, first);
        assert_eq!(
            get(&[0], false, &b),
            first,
            "seen before: shared from the map"
        );
        let with_prev = get(&[0], true, &b);
        assert_ne!(with_prev, first, "prev_kv differs: encoded again");
        assert_eq!(encodings, 3);
    }

    /// The shared encoding is a shortcut, never a different message: a client must read
    /// exactly the frames tonic would have written for the responses prost encodes, whatever
    /// the id (zero is left out, negative ids take ten bytes).
    #[test]
    fn framed_responses_are_the_bytes_prost_and_grpc_write() {
        let header = ResponseHeader {
            cluster_id: 0x2998_7e05_67f2_fcdc,
            member_id: 0x5298_aff1_176e_e5f7,
            revision: 1_234_567,
            raft_term: 3,
        };
        let events = vec![
            event(b"key", &[b'v'; 300], 1_234_566, false),
            event(b"other", b"", 1_234_567, true),
        ];
        let mut encoded = EncodedEvents::default();
        let shared = encoded.get_or_encode(&[0, 1], false, || events.clone());
        assert_eq!(
            shared.payload_bytes,
            events.iter().map(Message::encoded_len).sum::<usize>()
        );
        let header_bytes = encode_header(&header);
        let mut frames = Frames::default();
        let mut expected = Vec::new();
        for watch_id in [0, 1, 49, 300, i64::MAX, -1] {
            frames
                .push_events(&header_bytes, watch_id, &shared.bytes)
                .unwrap();
            let response = WatchResponse {
                header: Some(header),
                watch_id,
                events: events.clone(),
                ..WatchResponse::default()
            };
            expected.extend(framed(&response.encode_to_vec()));
        }
        let created = WatchResponse {
            header: Some(header),
            watch_id: 7,
            created: true,
            ..WatchResponse::default()
        };
        frames.push(&created).unwrap();
        expected.extend(framed(&created.encode_to_vec()));
        assert_eq!(frames.len_bytes(), expected.len());
        assert_eq!(frames.take(), expected);
        assert!(frames.is_empty(), "taking the frames starts over");
    }

    /// gRPC's length is 32 bits: a larger response is refused before anything is written.
    #[test]
    fn a_response_too_large_to_frame_is_refused() {
        let mut frames = Frames::default();
        let too_large = usize::try_from(u64::from(u32::MAX) + 1).unwrap();
        let status = frames.prefix(too_large).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(frames.is_empty());
    }
}
