//! A member's runtime: the path every write takes from the gRPC layer to the store.
//!
//! ```text
//!  gRPC handler ──propose──▶ bounded queue ──▶ writer thread
//!                                               │ take a batch of proposals
//!                                               │ append them to the WAL as entries, one fsync
//!                                               │ apply each entry to the MVCC store
//!  gRPC handler ◀──────── response ─────────────┘ answer each proposer
//! ```
//!
//! This is the single-member shape of the Raft path: the batch is what the Raft core hands out
//! as "entries to persist" and "committed entries", and the next issue puts the core between
//! the queue and the WAL. A write is answered only after its entry is durable and applied.
//! Reads don't pass through here: they read the store directly, and see every answered write.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use keel_api::etcdserverpb::ResponseHeader;
use keel_api::EtcdError;
use keel_storage::mvcc::Store;
use keel_storage::wal::{Entry, HardState, Wal, WalOptions};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{apply, Response};
use crate::data_dir::{stable_id, DataDir, DataDirError, Identity};
use crate::lease::{ttl_secs_min, Lessor};
use crate::quota::Quota;
use crate::request::Request;
use crate::watch::Published;
use crate::ServerError;

/// Proposals waiting for the writer; a full queue makes proposers wait (backpressure).
const PROPOSALS_QUEUED_MAX: usize = 4096;
/// Entries written with one fsync at most.
const ENTRIES_PER_BATCH_MAX: usize = 1024;
/// Bytes written with one fsync at most (a batch may pass it by one entry).
const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Log entries kept before the durable store state, for members that fall behind (etcd keeps
/// 5,000 for the same reason).
const CATCH_UP_ENTRIES: u64 = 5_000;
/// Changes of one batch handed to watch streams in memory; a larger batch they read from the
/// store.
const RECENT_CHANGES_MAX: usize = 16_384;

/// How a member is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    /// Applied entries between durable store commits (after which older log is released).
    pub snapshot_count: u64,
    /// Largest request accepted, encoded (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Election timeout; leases are at least 1.5 of it long, as in etcd.
    pub election_timeout_ms: u64,
    /// Backend space quota (etcd's `--quota-backend-bytes`: 0 default, negative none).
    pub quota_backend_bytes: i64,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] keel_storage::wal::WalError),
    #[error("store: {0}")]
    Store(#[from] keel_storage::mvcc::MvccError),
    #[error("log entry {index} does not decode: {reason}")]
    Entry { index: u64, reason: String },
    #[error("the store has applied entry {applied} but the log ends at {last}: the log lost acknowledged writes")]
    LogBehindStore { applied: u64, last: u64 },
    #[error("the log starts at entry {first} but the store has applied only up to {applied}: entries are missing")]
    LogGap { first: u64, applied: u64 },
    #[error("replaying entry {index}: {reason}")]
    Replay { index: u64, reason: String },
}

enum Command {
    Propose {
        data: Vec<u8>,
        request: Request,
        responder: oneshot::Sender<Result<Response, ServerError>>,
    },
    Stop,
}

/// A running member.
pub struct Node {
    store: Arc<Store>,
    identity: Identity,
    term: u64,
    max_request_bytes: usize,
    commands: mpsc::Sender<Command>,
    failure: watch::Receiver<Option<String>>,
    /// The store's revision after each applied batch, for watch streams.
    revisions: watch::Receiver<Published>,
    writer: Mutex<Option<JoinHandle<()>>>,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    quota: Quota,
    lessor: Arc<Lessor>,
    /// The next lease id to hand out when a grant names none.
    lease_ids: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("identity", &self.identity)
            .field("term", &self.term)
            .finish()
    }
}

impl Node {
    /// Opens (or creates) the data directory, replays the log into the store and starts the
    /// writer.
    pub fn start(config: &NodeConfig) -> Result<Node, StartError> {
        let data_dir = DataDir::open_or_create(&config.data_dir, || {
            let mut peer_urls = config.initial_advertise_peer_urls.clone();
            peer_urls.sort();
            let mut parts: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
            parts.push(&config.initial_cluster_token);
            let member_id = stable_id(&parts);
            let cluster_id =
                stable_id(&[&format!("{member_id:016x}"), &config.initial_cluster_token]);
            Identity {
                name: config.name.clone(),
                member_id,
                cluster_id,
            }
        })?;
        let wal_dir = data_dir.wal_dir();
        let (mut wal, replay) = if data_dir.created || !wal_dir.exists() {
            std::fs::create_dir_all(&wal_dir).map_err(|source| DataDirError::Io {
                path: wal_dir.clone(),
                source,
            })?;
            (Wal::create(&wal_dir, WalOptions::default())?, None)
        } else {
            let (wal, replay) = Wal::open(&wal_dir, WalOptions::default())?;
            (wal, Some(replay))
        };
        let store = Arc::new(Store::open(&data_dir.db_path())?);
        let lessor = Arc::new(Lessor::new(
            ttl_secs_min(config.election_timeout_ms),
            store.leases()?,
        ));

        let applied = store.consistent_index();
        let last = wal.last_index();
        if applied > last {
            return Err(StartError::LogBehindStore { applied, last });
        }
        let mut previous_term = 0;
        if let Some(replay) = replay {
            previous_term = replay.hard_state.map_or(0, |state| state.term);
            let mut replayed = 0u64;
            for entry in replay.entries.iter().filter(|entry| entry.index > applied) {
                if replayed == 0 && entry.index != applied + 1 {
                    return Err(StartError::LogGap {
                        first: entry.index,
                        applied,
                    });
                }
                let (_, request) =
                    Request::decode(&entry.data).map_err(|error| StartError::Entry {
                        index: entry.index,
                        reason: error.to_string(),
                    })?;
                match apply(&store, &lessor, entry.index, &request) {
                    Ok(_) | Err(ServerError::Etcd(_)) => {}
                    Err(error) => {
                        return Err(StartError::Replay {
                            index: entry.index,
                            reason: error.to_string(),
                        })
                    }
                }
                replayed += 1;
            }
            tracing::info!(
                replayed,
                applied_before = applied,
                last_index = last,
                "replayed the log"
            );
        }
        // A single member elects itself at every start: a new term, as etcd's would. etcd's
        // first election is term 2 (term 1 holds the bootstrap entries), so is Keel's.
        let term = (previous_term + 1).max(2);
        wal.append_hard_state(&HardState {
            term,
            vote: data_dir.identity.member_id,
            commit: wal.last_index(),
        })?;
        wal.sync()?;

        let (commands, receiver) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let (failure_sender, failure) = watch::channel(None);
        let (revision_sender, revisions) = watch::channel(Published {
            revision: store.revision(),
            recent: None,
        });
        let writer = Writer {
            wal,
            store: Arc::clone(&store),
            lessor: Arc::clone(&lessor),
            term,
            next_index: last + 1,
            durable_every_entries: config.snapshot_count.clamp(1, 10_000),
            applied_since_durable: 0,
            revisions: revision_sender,
        };
        let handle = std::thread::Builder::new()
            .name("keel-writer".into())
            .spawn(move || writer.run(receiver, failure_sender))
            .map_err(|source| DataDirError::Io {
                path: config.data_dir.clone(),
                source,
            })?;
        tracing::info!(
            name = %data_dir.identity.name,
            member_id = format!("{:x}", data_dir.identity.member_id),
            cluster_id = format!("{:x}", data_dir.identity.cluster_id),
            term,
            revision = store.revision(),
            "member started"
        );
        let quota = Quota::new(config.quota_backend_bytes, data_dir.db_path());
        // This member decides lease expiry from now on: every lease gets a full TTL.
        lessor.refresh_all();
        // Lease ids: the member's id in the top bits, the start time below, then a counter, as
        // etcd's id generator does, so ids from different members and starts don't collide.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let first_lease_id =
            ((data_dir.identity.member_id & 0xffff) << 47) | ((now_ms & ((1 << 39) - 1)) << 8);
        Ok(Node {
            store,
            identity: data_dir.identity,
            term,
            max_request_bytes: config.max_request_bytes,
            commands,
            failure,
            revisions,
            writer: Mutex::new(Some(handle)),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
            quota,
            lessor,
            lease_ids: std::sync::atomic::AtomicU64::new(first_lease_id),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn peer_urls(&self) -> &[String] {
        &self.peer_urls
    }

    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// A fresh positive lease id.
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self
                .lease_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                & (i64::MAX as u64)) as i64;
            if id != 0 && !self.lessor.exists(id) {
                return id;
            }
        }
    }

    /// Revokes expired leases through the log, until the member stops. etcd revokes at most
    /// 1,000 leases a second; so does this.
    pub async fn expire_leases(self: Arc<Node>) {
        const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
        const REVOKES_PER_CHECK_MAX: usize = 500;
        let mut ticker = tokio::time::interval(CHECK_INTERVAL);
        loop {
            ticker.tick().await;
            let expired = self.lessor.expired(REVOKES_PER_CHECK_MAX);
            if expired.is_empty() {
                continue;
            }
            tracing::debug!(count = expired.len(), "revoking expired leases");
            let revokes = expired.into_iter().map(|id| {
                self.propose(Request::LeaseRevoke(
                    keel_api::etcdserverpb::LeaseRevokeRequest { id },
                ))
            });
            for result in futures::future::join_all(revokes).await {
                match result {
                    Ok(_) | Err(ServerError::Etcd(EtcdError::LeaseNotFound)) => {}
                    Err(ServerError::Stopped) => return,
                    Err(error) => tracing::warn!(%error, "could not revoke an expired lease"),
                }
            }
        }
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// A response header for this member; revision 0 means the current one.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision: if revision == 0 {
                self.store.revision()
            } else {
                revision
            },
            raft_term: self.term,
        }
    }

    /// Follows the store's revision: changes after every applied batch that moved it.
    pub fn subscribe_revisions(&self) -> watch::Receiver<Published> {
        self.revisions.clone()
    }

    /// Resolves when the member has stopped after a fatal error, with the reason.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        loop {
            if let Some(reason) = failure.borrow_and_update().clone() {
                return reason;
            }
            if failure.changed().await.is_err() {
                // The writer ended without a failure: a clean stop. Never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Puts `request` through the log; answers once it is durable and applied.
    pub async fn propose(&self, request: Request) -> Result<Response, ServerError> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        self.quota.check(&request)?;
        let data = request.encode(0);
        let (responder, response) = oneshot::channel();
        self.commands
            .send(Command::Propose {
                data,
                request,
                responder,
            })
            .await
            .map_err(|_| ServerError::Stopped)?;
        response.await.map_err(|_| ServerError::Stopped)?
    }

    /// Stops the writer after the proposals already queued, and makes the store durable.
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop).await;
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// The thread that owns the WAL: it alone writes the log and applies entries.
struct Writer {
    wal: Wal,
    store: Arc<Store>,
    lessor: Arc<Lessor>,
    term: u64,
    next_index: u64,
    durable_every_entries: u64,
    applied_since_durable: u64,
    revisions: watch::Sender<Published>,
}

type Batch = Vec<(Request, oneshot::Sender<Result<Response, ServerError>>)>;

impl Writer {
    fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        failure: watch::Sender<Option<String>>,
    ) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = commands.blocking_recv() else {
                break;
            };
            let mut entries = Vec::new();
            let mut batch: Batch = Vec::new();
            let mut batch_bytes = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Propose {
                        data,
                        request,
                        responder,
                    } => {
                        batch_bytes += data.len();
                        entries.push(Entry {
                            term: self.term,
                            index: self.next_index + entries.len() as u64,
                            data,
                        });
                        batch.push((request, responder));
                    }
                    Command::Stop => {
                        stopping = true;
                        break;
                    }
                }
                if entries.len() < ENTRIES_PER_BATCH_MAX && batch_bytes < BATCH_BYTES_MAX {
                    next = commands.try_recv().ok();
                }
            }
            if let Err(reason) = self.write_and_apply(entries, batch) {
                tracing::error!(%reason, "storage failed; the member stops");
                let _ = failure.send(Some(reason));
                return;
            }
        }
        if let Err(error) = self.store.sync() {
            tracing::error!(%error, "could not make the store durable at shutdown; the log will be replayed");
        }
        tracing::info!("writer stopped");
    }

    fn write_and_apply(&mut self, entries: Vec<Entry>, batch: Batch) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        // Durable before anything is applied or answered: an answered write survives a crash.
        let written = self
            .wal
            .append_entries(&entries)
            .and_then(|()| self.wal.sync());
        if let Err(error) = written {
            for (_, responder) in batch {
                let _ = responder.send(Err(ServerError::Stopped));
            }
            return Err(format!("write-ahead log: {error}"));
        }
        self.next_index += entries.len() as u64;
        let revision_before = self.store.revision();
        for (entry, (request, responder)) in entries.iter().zip(batch) {
            let result = apply(&self.store, &self.lessor, entry.index, &request);
            if let Err(ServerError::Fatal(reason)) = &result {
                let reason = reason.clone();
                let _ = responder.send(Err(ServerError::Stopped));
                return Err(format!("applying entry {}: {reason}", entry.index));
            }
            let _ = responder.send(result);
        }
        let revision = self.store.revision();
        if revision != revision_before {
            // One read of the batch's changes here saves every watch stream its own.
            let recent = match self.store.changes(revision_before + 1, RECENT_CHANGES_MAX) {
                Ok(changes) if changes.through_revision == revision => Some(Arc::new(changes)),
                Ok(_) => None,
                Err(error) => return Err(format!("reading the changes just applied: {error}")),
            };
            self.revisions.send_replace(Published { revision, recent });
        }
        self.applied_since_durable += entries.len() as u64;
        if self.applied_since_durable >= self.durable_every_entries {
            self.store
                .sync()
                .map_err(|error| format!("store: {error}"))?;
            self.applied_since_durable = 0;
            let keep_from = self
                .store
                .consistent_index()
                .saturating_sub(CATCH_UP_ENTRIES);
            self.wal
                .release_before(keep_from)
                .map_err(|error| format!("releasing old log: {error}"))?;
        }
        Ok(())
    }
}
