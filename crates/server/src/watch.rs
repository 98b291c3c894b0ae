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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_api::etcdserverpb::watch_create_request::FilterType;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::mvccpb::{event::EventType, Event, KeyValue};
use keel_storage::mvcc::{Change, ChangeKind, Changes, MvccError, RangeEnd, RangeOptions};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use crate::Node;

/// Changes read from history at a time, per stream (a revision is never split, so a large
/// transaction can pass it).
const CHANGES_PER_READ_MAX: usize = 1_000;
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 100_000;
/// Responses queued for a client before the stream waits for it to read.
pub const RESPONSES_QUEUED_MAX: usize = 64;

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
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
    revisions: tokio::sync::watch::Receiver<Published>,
}

/// Serves one Watch stream until the client closes it or goes away.
pub async fn serve_stream(
    node: Arc<Node>,
    config: WatchConfig,
    mut requests: impl Stream<Item = Result<WatchRequest, Status>> + Unpin,
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
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
        revisions,
    };
    loop {
        let Ok(synced) = stream.deliver().await else {
            return;
        };
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
    fn header(&self, revision: i64) -> Option<keel_api::etcdserverpb::ResponseHeader> {
        Some(self.node.header(revision))
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.responses.send(Ok(response)).await.map_err(|_| Gone)
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
            let store = self.node.store();
            let current = store.revision();
            let Some(from) = self
                .watchers
                .values()
                .map(|watcher| watcher.next_revision)
                .filter(|next| *next <= current)
                .min()
            else {
                return Ok(current);
            };
            let changes = match self.recent_from(from, current) {
                Some(changes) => changes,
                None => match store.changes(from, CHANGES_PER_READ_MAX) {
                    Ok(changes) => Arc::new(changes),
                    Err(MvccError::Compacted) => {
                        self.cancel_compacted(store.compact_revision()).await?;
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "watch could not read history");
                        let _ = self
                            .responses
                            .send(Err(Status::unavailable("etcdserver: server stopped")))
                            .await;
                        return Err(Gone);
                    }
                },
            };
            let ids: Vec<i64> = self.watchers.keys().copied().collect();
            for id in ids {
                let (events, fragment) = {
                    let watcher = &self.watchers[&id];
                    if watcher.next_revision > changes.through_revision {
                        continue;
                    }
                    let events = self.events_for(watcher, &changes.changes);
                    (events, watcher.fragment)
                };
                let watcher = self.watchers.get_mut(&id).expect("ids were just listed");
                watcher.next_revision = changes.through_revision + 1;
                if events.is_empty() {
                    continue;
                }
                watcher.sent_since_tick = true;
                // With tracing on, each notification is a span of its own (the change's writer
                // is not known here): how many events, through which revision, how long.
                let span = if crate::telemetry::enabled() {
                    tracing::info_span!(
                        target: "keel::watch",
                        "watch.notify",
                        watch.id = id,
                        watch.events = events.len(),
                        etcd.revision = changes.through_revision,
                    )
                } else {
                    tracing::Span::none()
                };
                let responses = self.responses_for(id, changes.through_revision, events, fragment);
                tracing::Instrument::instrument(
                    async {
                        for response in responses {
                            self.send(response).await?;
                        }
                        Ok::<(), Gone>(())
                    },
                    span,
                )
                .await?;
            }
        }
    }

    /// The changes from `from` through `current` out of the node's last publication, when it
    /// holds them all.
    fn recent_from(&self, from: i64, current: i64) -> Option<Arc<Changes>> {
        let published = self.revisions.borrow();
        let recent = published.recent.as_ref()?;
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

    fn events_for(&self, watcher: &Watcher, changes: &[Change]) -> Vec<Event> {
        changes
            .iter()
            .filter(|change| {
                change.kv.mod_revision >= watcher.next_revision && watcher.matches(change)
            })
            .map(|change| Event {
                r#type: match change.kind {
                    ChangeKind::Put => EventType::Put,
                    ChangeKind::Delete => EventType::Delete,
                } as i32,
                kv: Some(change.kv.clone()),
                prev_kv: if watcher.prev_kv {
                    self.previous(&change.kv)
                } else {
                    None
                },
            })
            .collect()
    }

    /// The key's value just before the change (none when it didn't exist or was compacted).
    fn previous(&self, kv: &KeyValue) -> Option<KeyValue> {
        let options = RangeOptions {
            revision: kv.mod_revision - 1,
            ..RangeOptions::default()
        };
        let found = self
            .node
            .store()
            .range(&kv.key, RangeEnd::Single, &options)
            .ok()?;
        found.kvs.into_iter().next()
    }

    fn responses_for(
        &self,
        id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
    ) -> Vec<WatchResponse> {
        let response = |events: Vec<Event>, fragment: bool| WatchResponse {
            header: self.header(revision),
            watch_id: id,
            fragment,
            events,
            ..WatchResponse::default()
        };
        let total: usize = events.iter().map(Message::encoded_len).sum();
        if !fragment || total <= self.config.fragment_bytes_max {
            return vec![response(events, false)];
        }
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
