//! A running member: starts its storage and Raft replica, and is what the gRPC services call.
//!
//! Writes are proposed to the replica thread (see `replica.rs`) and answered once their entry
//! is committed by a quorum, durable and applied. Linearizable reads first confirm through Raft
//! (ReadIndex) that this member has applied everything committed before the read began; a
//! single-member cluster skips that, since it applies every write before answering it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};
use keel_api::keelraftpb::raft_client::RaftClient;
use keel_api::EtcdError;
use keel_raft::{ConfState, Config, MemStorage, RawNode, Snapshot, SnapshotMetadata, Storage};
use keel_storage::mvcc::Store;
use keel_storage::wal::{HardState as WalHardState, SnapshotMarker, Wal, WalOptions};
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

use crate::apply::Response;
use crate::data_dir::{stable_id, DataDir, DataDirError, Identity, MemberInfo};
use crate::lease::{time_to_live, ttl_secs_min, Lessor};
use crate::membership::Membership;
use crate::quota::Quota;
use crate::raft_log::RaftLog;
use crate::replica::{
    from_wal_entry, hard_state_from_wal, publish_membership, Ended, Input, Replica, Shared,
};
use crate::request::Request;
use crate::snapshot_transfer::{remove_snapshot_files, snapshot_file};
use crate::telemetry;
use crate::transport::{PeerService, Transport};
use crate::watch::Published;
use crate::ServerError;

mod members;

use members::join_identity;
pub use members::{member_id, parse_peer_urls};

/// The store is made durable at least this often (in applied entries), whatever
/// `--snapshot-count` says: a durable commit stalls the replica thread for as long as it takes
/// to write what accumulated since the last one. A/B (BENCHMARKS.md, fifth session), 64
/// clients: every 5,000 entries against every 10,000, put p99 8.1–8.4 against 8.7–9.7 ms and
/// p99.9 10.4–12.3 against 11.8–18.2 ms at the same throughput; every 2,000 had about the same
/// p99 and fewer puts per second in two rounds of three.
const DURABLE_EVERY_ENTRIES_MAX: u64 = 5_000;

/// Inputs (proposals, reads, peer messages) waiting for the replica thread; when full,
/// clients get etcd's "too many requests".
const INBOX_MAX: usize = 16_384;

/// How a member is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster_token: String,
    /// `--initial-cluster`: every founding member's name and peer URLs (this one included).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    /// Applied entries between durable store commits (after which older log is released).
    pub snapshot_count: u64,
    /// Log entries kept behind the durable store for slow members (etcd's
    /// `--experimental-snapshot-catchup-entries`); one further behind gets a store snapshot.
    pub snapshot_catch_up_entries: u64,
    /// Largest request accepted, encoded (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Raft's tick: etcd's `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
    /// etcd's `--election-timeout`; leases are at least 1.5 of it long, as in etcd.
    pub election_timeout_ms: u64,
    /// Backend space quota (etcd's `--quota-backend-bytes`: 0 default, negative none).
    pub quota_backend_bytes: i64,
    /// etcd's `--initial-election-tick-advance`: start the election clock almost expired.
    pub initial_election_tick_advance: bool,
    /// `--initial-cluster-state existing`: join a running cluster (after MemberAdd) instead of
    /// founding one. Only matters when the data directory is new.
    pub join_existing: bool,
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
    #[error("log: {0}")]
    Log(String),
    #[error("the store has applied entry {applied} but the log ends at {last}: the log lost acknowledged writes")]
    LogBehindStore { applied: u64, last: u64 },
    #[error("--initial-cluster does not name this member ({0})")]
    NotInInitialCluster(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining the cluster: {0}")]
    Join(String),
    #[error("{}", crate::membership::REMOVED_MESSAGE)]
    Removed,
}

/// Member and cluster ids derived from the configuration, the same on every member.
pub fn initial_identity(config: &NodeConfig) -> Result<Identity, StartError> {
    let mut cluster = config.initial_cluster.clone();
    if cluster.is_empty() {
        cluster.push((
            config.name.clone(),
            config.initial_advertise_peer_urls.clone(),
        ));
    }
    let mut members: Vec<MemberInfo> = cluster
        .into_iter()
        .map(|(name, mut peer_urls)| {
            peer_urls.sort();
            MemberInfo {
                id: member_id(&peer_urls, &config.initial_cluster_token),
                name,
                peer_urls,
            }
        })
        .collect();
    members.sort_by_key(|member| member.id);
    let own = members
        .iter()
        .find(|member| member.name == config.name)
        .ok_or_else(|| StartError::NotInInitialCluster(config.name.clone()))?;
    let mut parts: Vec<String> = members
        .iter()
        .map(|member| format!("{:016x}", member.id))
        .collect();
    parts.push(config.initial_cluster_token.clone());
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(Identity {
        name: config.name.clone(),
        member_id: own.id,
        cluster_id: stable_id(&parts),
        initial_members: members,
    })
}

/// A running member.
pub struct Node {
    store: Arc<Store>,
    identity: Identity,
    shared: Arc<Shared>,
    max_request_bytes: usize,
    request_timeout: Duration,
    inbox: SyncSender<Input>,
    failure: watch::Receiver<Option<String>>,
    revisions: watch::Receiver<Published>,
    replica: Mutex<Option<JoinHandle<()>>>,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    quota: Quota,
    lessor: Arc<Lessor>,
    /// Ids for requests (the top bits are the member's) and leases.
    request_ids: AtomicU64,
    lease_ids: AtomicU64,
    /// Connections to peers' peer services, by member id (with the URL connected to).
    peer_channels: Mutex<HashMap<u64, (String, Channel)>>,
    initial_cluster_token: String,
    /// Becomes true when the replica stopped because this member was removed.
    removed: watch::Receiver<bool>,
    /// Where store snapshots from the leader are received.
    snap_dir: PathBuf,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Node")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Node {
    /// Opens (or creates) the data directory, rebuilds the Raft log from the WAL, and starts
    /// the replica thread and the transport to the peers. Needs a tokio runtime.
    pub fn start(
        config: &NodeConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Node, StartError> {
        let mut joined_members = Vec::new();
        let data_dir = if config.join_existing && !DataDir::exists(&config.data_dir) {
            let (identity, members) = join_identity(config, runtime)?;
            joined_members = members;
            DataDir::open_or_create(&config.data_dir, || identity)?
        } else {
            let new_identity = initial_identity(config)?;
            DataDir::open_or_create(&config.data_dir, || new_identity)?
        };
        let identity = data_dir.identity.clone();
        let founding_conf_state = ConfState {
            voters: identity
                .initial_members
                .iter()
                .map(|member| member.id)
                .collect(),
            learners: Vec::new(),
        };
        let founder = founding_conf_state.voters.contains(&identity.member_id);

        let wal_dir = data_dir.wal_dir();
        let snap_dir = data_dir.snap_dir();
        let store = Arc::new(Store::open(&data_dir.db_path())?);
        let (wal, replay) = if Wal::exists(&wal_dir)? {
            let (wal, replay) = Wal::open(&wal_dir, WalOptions::default())?;
            (wal, Some(replay))
        } else {
            std::fs::create_dir_all(&wal_dir).map_err(io_error(&wal_dir))?;
            (Wal::create(&wal_dir, WalOptions::default())?, None)
        };
        let marker = replay.as_ref().and_then(|replay| replay.snapshot);
        // A snapshot from the leader whose marker reached the WAL but whose store install did
        // not finish: install it now (its file is kept until the store holds it).
        if let Some(marker) =
            marker.filter(|marker| marker.index > 1 && marker.index > store.consistent_index())
        {
            let path = snapshot_file(&snap_dir, marker.index);
            store.install(&path).map_err(|error| {
                StartError::Log(format!(
                    "the log starts after a snapshot at index {} that the store does not \
                     hold, and its file {} cannot be installed: {error}",
                    marker.index,
                    path.display()
                ))
            })?;
        }
        // Installed above, or left over from a transfer that never reached the log.
        remove_snapshot_files(&snap_dir);
        // The membership as of the store's consistent index: where Raft resumes applying.
        let membership = Membership::load(&identity.initial_members, &store)?;
        if membership.is_removed(identity.member_id) {
            return Err(StartError::Removed);
        }
        let lessor = Arc::new(Lessor::new(
            ttl_secs_min(config.election_timeout_ms),
            store.leases()?,
        ));
        let (wal, storage) = match replay {
            None => {
                let mut wal = wal;
                let storage = if founder {
                    // Every founding member starts from the same log: a snapshot at index 1,
                    // term 1, holding the initial configuration.
                    wal.append_snapshot_marker(&SnapshotMarker { term: 1, index: 1 })?;
                    wal.append_hard_state(&WalHardState {
                        term: 1,
                        vote: 0,
                        commit: 1,
                    })?;
                    MemStorage::new_bootstrapped(founding_conf_state.clone())
                } else {
                    // A joining member starts empty; the leader sends it a snapshot.
                    MemStorage::new()
                };
                wal.sync()?;
                (wal, storage)
            }
            Some(replay) => {
                let mut storage = MemStorage::new();
                match replay.snapshot {
                    Some(marker) => storage
                        .apply_snapshot(Snapshot {
                            metadata: SnapshotMetadata {
                                index: marker.index,
                                term: marker.term,
                                // The bootstrap snapshot holds the founding configuration; a
                                // later marker is at or below the store's consistent index
                                // (compaction, or an installed snapshot), whose configuration
                                // Raft starts from anyway (raft_log.rs).
                                conf_state: if marker.index == 1 {
                                    founding_conf_state.clone()
                                } else {
                                    membership.conf_state()
                                },
                            },
                            data: Vec::new(),
                        })
                        .map_err(|error| StartError::Log(format!("{error:?}")))?,
                    // A joining member that has not received a snapshot yet.
                    None if !founder && replay.entries.is_empty() => {}
                    None => return Err(StartError::Log("the log has no snapshot marker".into())),
                }
                let entries: Vec<_> = replay
                    .entries
                    .into_iter()
                    .map(from_wal_entry)
                    .collect::<Result<_, _>>()
                    .map_err(StartError::Log)?;
                storage.append(&entries);
                let mut hard_state = replay
                    .hard_state
                    .as_ref()
                    .map(hard_state_from_wal)
                    .unwrap_or_default();
                if let Some(marker) = replay.snapshot {
                    // A snapshot marker records a committed prefix; the hard state written
                    // after it may not have reached the disk.
                    hard_state.commit = hard_state.commit.max(marker.index);
                    hard_state.term = hard_state.term.max(marker.term);
                }
                storage.set_hard_state(hard_state);
                (wal, storage)
            }
        };
        let mut storage = storage;
        let mut hard_state = storage
            .initial_state()
            .map_err(|error| StartError::Log(format!("{error:?}")))?
            .hard_state;
        let snapshot_index = storage
            .first_index()
            .map_err(|error| StartError::Log(format!("{error:?}")))?
            - 1;
        let last_index = storage
            .last_index()
            .map_err(|error| StartError::Log(format!("{error:?}")))?;
        let applied = store.consistent_index();
        if applied > last_index {
            return Err(StartError::LogBehindStore {
                applied,
                last: last_index,
            });
        }
        if applied > hard_state.commit {
            // A commit index alone is written without an fsync (as etcd does): the store, which
            // applies only committed entries, proves a later one.
            hard_state.commit = applied;
            storage.set_hard_state(hard_state.clone());
        }
        // A member without even the bootstrap snapshot knows no configuration yet.
        let conf_state = if snapshot_index == 0 {
            ConfState::default()
        } else {
            membership.conf_state()
        };
        let voters = conf_state.voters.clone();
        let storage = RaftLog::new(storage, conf_state);

        let heartbeat_ms = config.heartbeat_interval_ms.max(1);
        let mut raft_config = Config::new(identity.member_id);
        raft_config.heartbeat_ticks = 1;
        raft_config.election_ticks =
            u32::try_from((config.election_timeout_ms / heartbeat_ms).max(2)).unwrap_or(u32::MAX);
        raft_config.pre_vote = true;
        raft_config.check_quorum = true;
        raft_config.applied = applied.max(snapshot_index);
        raft_config.random_seed = identity.member_id
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let mut raw_node = RawNode::new(&raft_config, storage)
            .map_err(|error| StartError::Raft(format!("{error:?}")))?;
        let single = voters == [identity.member_id];
        if single {
            // Nobody to wait for: lead at once, as etcd's single member does.
            raw_node.campaign();
        } else if config.initial_election_tick_advance && voters.contains(&identity.member_id) {
            // etcd's --initial-election-tick-advance: a member that starts with no leader to
            // hear from campaigns after one tick instead of a whole election timeout. Pre-vote
            // keeps this from disturbing a cluster that has a leader.
            for _ in 1..raft_config.election_ticks {
                raw_node.tick();
            }
        }

        let (inbox, receiver) = sync_channel(INBOX_MAX);
        // The members as of the store; a member joining for the first time also knows the
        // current ones from the member it asked (the store catches up as the log applies).
        let mut peers: Vec<(u64, Vec<String>)> = membership
            .members
            .iter()
            .map(|member| (member.id, member.peer_urls.clone()))
            .collect();
        for member in &joined_members {
            if !peers.iter().any(|(id, _)| *id == member.id) {
                peers.push((member.id, member.peer_ur_ls.clone()));
            }
        }
        let transport = Transport::start(
            runtime,
            identity.cluster_id,
            identity.member_id,
            peers,
            inbox.clone(),
        );

        let shared = Arc::new(Shared::default());
        publish_membership(&shared, &membership, identity.member_id);
        shared.term.store(hard_state.term, Ordering::Relaxed);
        shared.last_index.store(last_index, Ordering::Relaxed);
        shared
            .commit_index
            .store(hard_state.commit, Ordering::Relaxed);
        let (failure_sender, failure) = watch::channel(None);
        let (revision_sender, revisions) = watch::channel(Published {
            revision: store.revision(),
            recent: None,
        });
        let election_timeout = Duration::from_millis(config.election_timeout_ms);
        let replica = Replica::new(
            raw_node,
            wal,
            Arc::clone(&store),
            Arc::clone(&lessor),
            transport,
            Arc::clone(&shared),
            revision_sender,
            identity.initial_members.clone(),
            Duration::from_millis(heartbeat_ms),
            config.snapshot_count.clamp(1, DURABLE_EVERY_ENTRIES_MAX),
            config.snapshot_catch_up_entries,
            election_timeout * 3,
            snap_dir.clone(),
        );
        let (removed_sender, removed) = watch::channel(false);
        let handle = std::thread::Builder::new()
            .name("keel-replica".into())
            .spawn(move || match replica.run(receiver) {
                Ok(Ended::Stopped) => {}
                Ok(Ended::Removed) => {
                    let _ = removed_sender.send(true);
                }
                Err(reason) => {
                    tracing::error!(%reason, "storage failed; the member stops");
                    let _ = failure_sender.send(Some(reason));
                }
            })
            .map_err(io_error(&config.data_dir))?;
        // Serve nothing until what is known committed (the durable commit index, or the store's
        // own index) is applied again. A commit index is fsynced only with entries or a new
        // term or vote, so a serializable read right after a restart may miss the last writes
        // until the leader's next message (as in etcd); linearizable reads never do.
        let replayed_from = applied;
        // Entries up to the snapshot are in the store already (it is made durable before the
        // log is compacted), and a new cluster's bootstrap snapshot holds no data.
        let committed = if hard_state.commit > snapshot_index {
            hard_state.commit
        } else {
            0
        };
        while store.consistent_index() < committed {
            if let Some(reason) = failure.borrow().clone() {
                return Err(StartError::Log(reason));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::info!(
            replayed = store.consistent_index() - replayed_from,
            "applied the committed log"
        );
        tracing::info!(
            name = %identity.name,
            member_id = format!("{:x}", identity.member_id),
            cluster_id = format!("{:x}", identity.cluster_id),
            members = membership.members.len(),
            applied,
            last_index,
            revision = store.revision(),
            "member started"
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        // etcd's id scheme: the member's id in the top bits, the start time below, then a
        // counter, so ids from different members and starts don't collide.
        let first_id = ((identity.member_id & 0xffff) << 47) | ((now_ms & ((1 << 39) - 1)) << 8);
        let quota = Quota::new(config.quota_backend_bytes, data_dir.db_path());
        Ok(Node {
            store,
            request_timeout: Duration::from_secs(5) + 2 * election_timeout,
            identity,
            shared,
            max_request_bytes: config.max_request_bytes,
            inbox,
            failure,
            revisions,
            replica: Mutex::new(Some(handle)),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
            quota,
            lessor,
            request_ids: AtomicU64::new(first_id),
            lease_ids: AtomicU64::new(first_id),
            peer_channels: Mutex::new(HashMap::new()),
            initial_cluster_token: config.initial_cluster_token.clone(),
            removed,
            snap_dir,
        })
    }

    /// How loaded this member's write path is, for its polling threads (`busy_poll.rs`).
    pub fn write_path_load(&self) -> &crate::busy_poll::Load {
        &self.shared.load
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn term(&self) -> u64 {
        self.shared.term.load(Ordering::Relaxed)
    }

    /// The leader this member knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.shared.leader.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == self.identity.member_id
    }

    pub fn last_index(&self) -> u64 {
        self.shared.last_index.load(Ordering::Relaxed)
    }

    /// Whether this member is the only voter (its reads need no ReadIndex round).
    pub fn is_single_member(&self) -> bool {
        self.shared.sole_voter.load(Ordering::Relaxed)
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

    /// The receiving side of the peer transport, for the peer gRPC server.
    pub fn peer_service(self: &Arc<Node>) -> PeerService {
        PeerService::new(
            self.identity.cluster_id,
            self.identity.member_id,
            self.inbox.clone(),
            Arc::clone(&self.shared),
            Arc::clone(&self.lessor),
            Arc::clone(&self.store),
            self.snap_dir.clone(),
            Arc::downgrade(self),
        )
    }

    /// Resolves when this member has been removed from the cluster and has stopped.
    pub async fn removed(&self) {
        let mut removed = self.removed.clone();
        let _ = removed.wait_for(|removed| *removed).await;
        if !*removed.borrow() {
            std::future::pending::<()>().await;
        }
    }

    /// A client of the leader's peer service, for calls only the leader answers.
    fn leader_client(&self) -> Result<RaftClient<Channel>, ServerError> {
        let leader = self.leader();
        if leader == 0 {
            return Err(EtcdError::NoLeader.into());
        }
        let url = self
            .membership()?
            .get(leader)
            .and_then(|member| member.peer_urls.first().cloned())
            // This member's store has not caught up with the leader's addition yet.
            .ok_or(ServerError::Etcd(EtcdError::LeaderChanged))?;
        let mut channels = self
            .peer_channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known_url, channel)) = channels.get(&leader) {
            if *known_url == url {
                return Ok(RaftClient::new(channel.clone()));
            }
        }
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|error| ServerError::Fatal(format!("leader URL {url}: {error}")))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        channels.insert(leader, (url, channel.clone()));
        Ok(RaftClient::new(channel))
    }

    /// Renews lease `id` where its deadline is kept: here when leading, else at the leader.
    /// Returns the TTL (0: the lease is unknown or expired).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ServerError> {
        if self.is_leader() {
            return Ok(self.lessor.renew(id).unwrap_or(0));
        }
        let mut client = self.leader_client()?;
        let response = client
            .lease_keep_alive(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ServerError::from(EtcdError::LeaderChanged))?;
        Ok(response.into_inner().ttl)
    }

    /// TimeToLive as the leader sees it (remaining TTL is the leader's to tell).
    pub async fn lease_time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        if self.is_leader() || self.leader() == 0 {
            return Ok(time_to_live(&self.lessor, &self.store, &request));
        }
        let mut client = self.leader_client()?;
        let response = client
            .lease_time_to_live(request)
            .await
            .map_err(|_| ServerError::from(EtcdError::LeaderChanged))?;
        Ok(response.into_inner())
    }

    /// A fresh positive lease id.
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self.lease_ids.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
            if id != 0 && !self.lessor.exists(id) {
                return id;
            }
        }
    }

    /// Revokes expired leases through the log while this member leads, until it stops. etcd
    /// revokes at most 1,000 leases a second; so does this.
    pub async fn expire_leases(self: Arc<Node>) {
        const CHECK_INTERVAL: Duration = Duration::from_millis(500);
        const REVOKES_PER_CHECK_MAX: usize = 500;
        let mut ticker = tokio::time::interval(CHECK_INTERVAL);
        loop {
            ticker.tick().await;
            if !self.is_leader() {
                continue;
            }
            let expired = self.lessor.expired(REVOKES_PER_CHECK_MAX);
            if expired.is_empty() {
                continue;
            }
            tracing::debug!(count = expired.len(), "revoking expired leases");
            // With tracing on, one trace per round: its revokes' raft spans are its children.
            let span = if telemetry::enabled() {
                tracing::info_span!(
                    target: "keel::lease",
                    "lease.expire",
                    lease.count = expired.len(),
                    keel.member_id = format!("{:x}", self.identity.member_id),
                )
            } else {
                tracing::Span::none()
            };
            let revokes = expired.into_iter().map(|id| {
                self.propose(Request::LeaseRevoke(
                    keel_api::etcdserverpb::LeaseRevokeRequest { id },
                ))
            });
            let results =
                tracing::Instrument::instrument(futures::future::join_all(revokes), span).await;
            for result in results {
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
            raft_term: self.term(),
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
                // The replica ended without a failure: a clean stop. Never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn submit(&self, input: Input) -> Result<(), ServerError> {
        self.inbox.try_send(input).map_err(|error| match error {
            TrySendError::Full(_) => EtcdError::TooManyRequests.into(),
            TrySendError::Disconnected(_) => ServerError::Stopped,
        })
    }

    /// Puts `request` through the log; answers once it is committed, durable and applied here.
    pub async fn propose(&self, request: Request) -> Result<Response, ServerError> {
        if !telemetry::enabled() {
            return self.propose_in_span(request).await;
        }
        let span = tracing::info_span!(
            target: "keel::raft",
            "raft.propose",
            raft.entry_bytes = request.encoded_len(),
            keel.member_id = format!("{:x}", self.identity.member_id),
        );
        tracing::Instrument::instrument(self.propose_in_span(request), span).await
    }

    /// [`Node::propose`] inside the current span, whose context the entry carries.
    async fn propose_in_span(&self, request: Request) -> Result<Response, ServerError> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge.into());
        }
        self.quota.check(&request)?;
        let id = self.next_request_id();
        let data = request.encode_traced(id, telemetry::current_entry_trace().as_ref());
        let (responder, response) = oneshot::channel();
        self.submit(Input::Propose {
            id,
            data,
            request,
            responder,
        })?;
        match tokio::time::timeout(self.request_timeout, response).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// Waits until this member has applied everything committed before now (linearizable
    /// reads). Immediate on a single-member cluster.
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        if self.is_single_member() {
            return Ok(());
        }
        let id = self.next_request_id();
        let (responder, response) = oneshot::channel();
        self.submit(Input::ReadIndex {
            id,
            responder,
            trace: telemetry::current_entry_trace(),
        })?;
        match tokio::time::timeout(self.request_timeout, response).await {
            Ok(Ok(result)) => result.map(|_| ()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// Publishes this member's name and client URLs through the log, so every member can list
    /// them (etcd does the same at start). Retries until it succeeds or the member stops.
    pub async fn publish_attributes(self: Arc<Node>) {
        let own = self
            .membership()
            .ok()
            .and_then(|membership| membership.get(self.identity.member_id).cloned());
        let attributes = keel_api::etcdserverpb::Member {
            id: self.identity.member_id,
            name: self.identity.name.clone(),
            peer_ur_ls: own
                .map(|member| member.peer_urls.clone())
                .unwrap_or_else(|| self.peer_urls.clone()),
            client_ur_ls: self.client_urls.clone(),
            is_learner: false,
        };
        let encoded = prost::Message::encode_to_vec(&attributes);
        let published = self.store.member_attributes().unwrap_or_default();
        if published
            .iter()
            .any(|(id, bytes)| *id == attributes.id && *bytes == encoded)
        {
            return;
        }
        loop {
            match self
                .propose(Request::MemberAttributes(attributes.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(client_urls = ?attributes.client_ur_ls, "published this member's attributes");
                    return;
                }
                Err(ServerError::Stopped) => return,
                Err(error) => {
                    tracing::debug!(%error, "publishing attributes; will retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The membership as of what this member has applied.
    pub fn membership(&self) -> Result<Membership, ServerError> {
        Ok(Membership::load(
            &self.identity.initial_members,
            &self.store,
        )?)
    }

    /// Every member as Cluster.MemberList reports it: the current configuration, with the
    /// name and client URLs each has published.
    pub fn members(&self) -> Vec<keel_api::etcdserverpb::Member> {
        let published: HashMap<u64, keel_api::etcdserverpb::Member> = self
            .store
            .member_attributes()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, bytes)| Some((id, prost::Message::decode(bytes.as_slice()).ok()?)))
            .collect();
        let membership = self.membership().unwrap_or_default();
        membership
            .members
            .iter()
            .map(|member| {
                let attributes = published.get(&member.id);
                keel_api::etcdserverpb::Member {
                    id: member.id,
                    // etcd lists a member that hasn't started yet with an empty name.
                    name: attributes
                        .map(|attributes| attributes.name.clone())
                        .unwrap_or_default(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: attributes
                        .map(|attributes| attributes.client_ur_ls.clone())
                        .unwrap_or_default(),
                    is_learner: member.is_learner,
                }
            })
            .collect()
    }

    /// Hands leadership to `target` (etcd's MoveLeader): only the leader can, and it waits
    /// until the target leads or the request times out.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        if !self.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        if !self
            .membership()?
            .voters()
            .any(|member| member.id == target)
        {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if target == self.identity.member_id {
            return Ok(());
        }
        self.submit(Input::TransferLeader(target))?;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        while self.leader() != target {
            if tokio::time::Instant::now() > deadline {
                return Err(EtcdError::Timeout.into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the replica after the inputs already queued, and makes the store durable.
    pub async fn stop(&self) {
        let inbox = self.inbox.clone();
        let _ = tokio::task::spawn_blocking(move || inbox.send(Input::Stop).is_ok()).await;
        let handle = self
            .replica
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::etcdserverpb::PutRequest;

    fn single_member_config(data_dir: &std::path::Path) -> NodeConfig {
        // Port 9 (discard): a single member never dials its own peer URL.
        let peer_url = "http://127.0.0.1:9".to_owned();
        NodeConfig {
            name: "solo".into(),
            data_dir: data_dir.to_path_buf(),
            initial_cluster_token: "answer-order".into(),
            initial_cluster: vec![("solo".into(), vec![peer_url.clone()])],
            initial_advertise_peer_urls: vec![peer_url],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            snapshot_count: 10_000,
            snapshot_catch_up_entries: 5_000,
            max_request_bytes: 1_572_864,
            heartbeat_interval_ms: 10,
            election_timeout_ms: 100,
            quota_backend_bytes: 0,
            initial_election_tick_advance: true,
            join_existing: false,
        }
    }

    /// etcd's order: an applied write is published to watch streams before its proposer is
    /// answered, so a watcher's event is never behind the answer to its own write. Checked
    /// on many puts, since the old order (answer, then publish) lost the race only sometimes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_published_to_watch_streams_before_it_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let config = single_member_config(dir.path());
        let runtime = tokio::runtime::Handle::current();
        let node = tokio::task::spawn_blocking(move || Node::start(&config, &runtime))
            .await
            .unwrap()
            .unwrap();
        let revisions = node.subscribe_revisions();
        for index in 0..1_000 {
            let request = Request::Put(PutRequest {
                key: b"answer-order".to_vec(),
                value: format!("{index}").into_bytes(),
                ..PutRequest::default()
            });
            // The first proposals may come before the member has elected itself.
            let response = loop {
                match node.propose(request.clone()).await {
                    Ok(response) => break response,
                    Err(error) if index == 0 => {
                        tracing::debug!(%error, "not ready yet");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(error) => panic!("put {index}: {error}"),
                }
            };
            let crate::apply::Response::Put(put) = response else {
                panic!("a put is answered with a put response");
            };
            let answered = put.header.expect("a put's answer has a header").revision;
            let published = revisions.borrow().revision;
            assert!(
                published >= answered,
                "put {index} was answered at revision {answered} before it was published \
                 (published: {published})"
            );
        }
        node.stop().await;
    }
}
