//! The Raft runtime of a member: one thread that owns the Raft core, the WAL and the apply path.
//!
//! ```text
//!  gRPC handlers ─Propose/ReadIndex─▶ inbox (bounded) ◀─Step── peer service
//!                                       │
//!                       replica thread: │ drain inputs, tick every heartbeat interval
//!                                       ▼
//!                               RawNode::ready()
//!      1. WAL: entries + hard state, one fsync      (before anything depends on them)
//!      2. send messages to peers                    (transport: per-peer bounded queues)
//!      3. apply committed entries to the store      (answer the proposers waiting on them)
//!      4. answer reads whose read index is applied
//!      5. advance; now and then start a durable store sync (on its own thread,
//!         `store_sync.rs`) and, once one has finished, compact the log before it
//! ```
//!
//! A single-member cluster runs the same path; it campaigns at start and leads at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keel_api::EtcdError;
use keel_raft::{
    ConfChange, ConfChangeKind, Entry, EntryKind, HardState, Message, MessageKind, RawNode, Role,
    Snapshot, SnapshotMetadata, SnapshotStatus, Storage,
};
use keel_storage::mvcc::{Store, WriteTxn};
use keel_storage::wal::{self, SnapshotMarker, Wal};
use tokio::sync::{oneshot, watch};

use crate::apply::{apply, apply_in, batchable, Response};
use crate::busy_poll::{Load, LoadMeter, POLL_BEFORE_SLEEP};
use crate::data_dir::MemberInfo;
use crate::lease::Lessor;
use crate::membership::{self, Membership, REMOVED_MESSAGE};
use crate::raft_log::RaftLog;
use crate::request::Request;
use crate::snapshot_transfer::{remove_snapshot_files, snapshot_file};
use crate::store_sync::StoreSync;
use crate::telemetry::{EntryTrace, RaftSpans};
use crate::transport::Transport;
use crate::watch::Published;
use crate::ServerError;

/// Inputs taken from the inbox before the next Ready is processed.
const INPUTS_PER_ROUND_MAX: usize = 4096;
/// Proposals and reads held while no leader is known.
const PARKED_MAX: usize = 4096;
/// Fault injection for the crash-safety test of snapshot installs: when this variable is set,
/// the member aborts right after a received snapshot's WAL marker is durable, before the store
/// holds the snapshot (the next start must install it from the kept file).
pub const CRASH_AFTER_SNAPSHOT_MARKER: &str = "KEEL_TEST_CRASH_AFTER_SNAPSHOT_MARKER";
/// Log bytes applied before the store is made durable and the log behind it released, whatever
/// `--snapshot-count` says.
const DURABLE_EVERY_BYTES: u64 = 64 << 20;
/// At most this much log (by the recent average entry size) is kept for slow followers.
const CATCH_UP_BYTES_MAX: u64 = 64 << 20;
/// Changes of one batch handed to watch streams in memory.
const RECENT_CHANGES_MAX: usize = 16_384;

pub type Responder = oneshot::Sender<Result<Response, ServerError>>;
pub type ReadResponder = oneshot::Sender<Result<u64, ServerError>>;

/// The next input within `wait`: polled for first (see [`crate::busy_poll`]), then waited for.
fn next_input(
    inbox: &Receiver<Input>,
    wait: Duration,
    load: &Load,
) -> Result<Input, RecvTimeoutError> {
    let started = Instant::now();
    let polled = load.poll_replica(POLL_BEFORE_SLEEP.min(wait), || match inbox.try_recv() {
        Ok(input) => Some(Ok(input)),
        Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
        Err(TryRecvError::Empty) => None,
    });
    match polled {
        Some(result) => result,
        None => inbox.recv_timeout(wait.saturating_sub(started.elapsed())),
    }
}

/// What the replica thread is asked to do.
pub enum Input {
    Propose {
        id: u64,
        data: Vec<u8>,
        request: Request,
        responder: Responder,
    },
    ReadIndex {
        id: u64,
        responder: ReadResponder,
        /// The reader's span, when tracing is on and it is sampled.
        trace: Option<EntryTrace>,
    },
    /// A membership change; `id` (also in the change's context) finds the proposer when the
    /// entry applies.
    ProposeConfChange {
        id: u64,
        change: ConfChange,
        responder: Responder,
    },
    Step(Message),
    Unreachable(u64),
    /// A peer refused this member's messages: it has applied this member's removal.
    Removed,
    /// Raft's status (replication progress, on the leader), for membership checks.
    RaftStatus(oneshot::Sender<keel_raft::Status>),
    /// Hand leadership to this member (MoveLeader).
    TransferLeader(u64),
    /// A store snapshot sent to peer `to` arrived (`finished`) or not.
    SnapshotStatus {
        to: u64,
        finished: bool,
    },
    Stop,
}

/// Entries applied in one redb transaction, and the answers that wait for its commit.
struct Batch<'a> {
    txn: WriteTxn<'a>,
    answers: Vec<(Responder, Result<Response, ServerError>)>,
}

impl Batch<'_> {
    /// Commits the transaction; its answers join `answers`.
    fn commit(self, answers: &mut Answers) -> Result<(), String> {
        self.txn
            .commit(false)
            .map_err(|error| format!("committing applied entries: {error}"))?;
        answers.0.extend(self.answers);
        Ok(())
    }
}

/// Answers to the proposers of applied entries, held until the entries' changes are published
/// to watch streams. etcd's order: its apply notifies watchers before it wakes the proposer,
/// so an event is never later than the answer to its own write. Sent when dropped, so that an
/// apply that fails part-way still answers the entries it applied.
#[derive(Default)]
struct Answers(Vec<(Responder, Result<Response, ServerError>)>);

impl Answers {
    fn push(&mut self, responder: Responder, result: Result<Response, ServerError>) {
        self.0.push((responder, result));
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        for (responder, result) in self.0.drain(..) {
            let _ = responder.send(result);
        }
    }
}

/// What the replica thread tells everyone else.
#[derive(Debug, Default)]
pub struct Shared {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub last_index: AtomicU64,
    pub commit_index: AtomicU64,
    /// This member is the only voter (linearizable reads need no ReadIndex round).
    pub sole_voter: AtomicBool,
    /// Members removed from the cluster: their Raft messages are refused.
    pub removed: Mutex<HashSet<u64>>,
    /// Whether the write path is lightly loaded (its threads poll before sleeping).
    pub load: Arc<Load>,
}

/// How the replica thread ended without a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (shutdown).
    Stopped,
    /// This member was removed from the cluster.
    Removed,
}

/// Converts between the core's entries and the WAL's: a WAL entry's data is the entry kind
/// (0 normal, 1 membership change) followed by the core's data.
pub fn to_wal_entry(entry: &Entry) -> wal::Entry {
    let mut data = Vec::with_capacity(1 + entry.data.len());
    data.push(u8::from(entry.kind == EntryKind::ConfChange));
    data.extend_from_slice(&entry.data);
    wal::Entry {
        term: entry.term,
        index: entry.index,
        data,
    }
}

pub fn from_wal_entry(entry: wal::Entry) -> Result<Entry, String> {
    let (&kind, data) = entry
        .data
        .split_first()
        .ok_or_else(|| format!("entry {} is empty", entry.index))?;
    let kind = match kind {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        other => return Err(format!("entry {} has unknown kind {other}", entry.index)),
    };
    Ok(Entry {
        term: entry.term,
        index: entry.index,
        kind,
        data: data.to_vec(),
    })
}

pub struct Replica {
    pub raw_node: RawNode<RaftLog>,
    pub wal: Wal,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub transport: Transport,
    pub shared: Arc<Shared>,
    pub revisions: watch::Sender<Published>,
    /// The cluster's founding members (membership is these plus the store's changes).
    pub founding_members: Vec<MemberInfo>,
    pub own_id: u64,
    pub tick_interval: Duration,
    pub durable_every_entries: u64,
    /// Log entries kept before the durable store state, for members that fall behind (etcd's
    /// `--experimental-snapshot-catchup-entries`); a member further behind gets a snapshot.
    pub catch_up_entries: u64,
    pub parked_timeout: Duration,
    /// Where store snapshots from the leader wait until the store holds them.
    pub snap_dir: PathBuf,
    waiters: HashMap<u64, Responder>,
    /// Linearizable reads waiting for their ReadIndex round, by the round's id.
    reads: HashMap<u64, Vec<ReadResponder>>,
    /// Reads that arrived this round: they share one ReadIndex round (one heartbeat to every
    /// peer), as etcd's batch concurrent reads. Keyed by the first one's id.
    read_batch: Option<(u64, Vec<ReadResponder>)>,
    /// Reads whose index is known, waiting for it to be applied.
    ready_reads: Vec<(u64, u64)>,
    parked: VecDeque<(Instant, Input)>,
    applied_since_durable: u64,
    /// Bytes of log entries applied since then.
    applied_bytes_since_durable: u64,
    /// The durable store syncs, made on a thread of their own.
    store_sync: StoreSync,
    /// Log entries to keep for slow followers when the running sync's result releases the
    /// log (decided when it started, from the entries' sizes then).
    sync_catch_up_entries: u64,
    /// Entries to apply before the next durable store sync: `durable_every_entries`, except
    /// the first time, when a share that depends on the member id is taken off, so that the
    /// members of a cluster (which apply the same entries) do not all sync at once. A sync
    /// stalls its member for milliseconds (BENCHMARKS.md, fifth session); staggered, a
    /// follower's stall is hidden by the other follower.
    durable_after_entries: u64,
    leader: u64,
    removed: bool,
    /// Term and vote as last fsynced: a change of either must be durable before anything
    /// depends on it.
    durable_term_vote: (u64, Option<u64>),
    /// The last log index known durable in the WAL.
    durable_index: u64,
    /// Spans for traced entries and reads; None while tracing is off.
    spans: Option<RaftSpans>,
    /// Decides from the rate of appended entries whether the write path polls.
    load_meter: LoadMeter,
    /// Indices of snapshot files received from a leader and handed to the core, until the
    /// store holds them. The core declines a snapshot it no longer needs (a leader that had
    /// not yet heard that this member caught up sends one again, often at the same index); its
    /// file is removed then rather than kept until the next start.
    received_snapshots: Vec<u64>,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw_node: RawNode<RaftLog>,
        wal: Wal,
        store: Arc<Store>,
        lessor: Arc<Lessor>,
        transport: Transport,
        shared: Arc<Shared>,
        revisions: watch::Sender<Published>,
        founding_members: Vec<MemberInfo>,
        tick_interval: Duration,
        durable_every_entries: u64,
        catch_up_entries: u64,
        parked_timeout: Duration,
        snap_dir: PathBuf,
    ) -> Replica {
        let own_id = raw_node.status().id;
        let durable_index = raw_node.storage().last_index().unwrap_or(0);
        let durable_term_vote = raw_node
            .storage()
            .initial_state()
            .map(|state| (state.hard_state.term, state.hard_state.vote))
            .unwrap_or_default();
        let store_sync = StoreSync::new(Arc::clone(&store));
        Replica {
            raw_node,
            wal,
            store,
            lessor,
            transport,
            own_id,
            shared,
            revisions,
            founding_members,
            tick_interval,
            durable_every_entries,
            catch_up_entries,
            parked_timeout,
            snap_dir,
            waiters: HashMap::new(),
            reads: HashMap::new(),
            read_batch: None,
            ready_reads: Vec::new(),
            parked: VecDeque::new(),
            applied_since_durable: 0,
            applied_bytes_since_durable: 0,
            store_sync,
            sync_catch_up_entries: 0,
            durable_after_entries: durable_every_entries - own_id % durable_every_entries.max(1),
            leader: 0,
            removed: false,
            durable_term_vote,
            durable_index,
            spans: RaftSpans::new(own_id),
            load_meter: LoadMeter::new(Instant::now()),
            received_snapshots: Vec::new(),
        }
    }

    /// Runs until stopped, removed from the cluster, or until storage fails (then returns the
    /// reason).
    pub fn run(mut self, inbox: Receiver<Input>) -> Result<Ended, String> {
        let mut next_tick = Instant::now() + self.tick_interval;
        // Whatever the core has to say from the start (a single member's own election).
        self.process_ready()?;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = false;
            match next_input(&inbox, wait, &self.shared.load) {
                Ok(input) => {
                    // Counted as they arrive (inputs parked and handled again are not).
                    self.load_meter.input();
                    stop |= self.handle(input);
                    for _ in 0..INPUTS_PER_ROUND_MAX {
                        match inbox.try_recv() {
                            Ok(input) => {
                                self.load_meter.input();
                                stop |= self.handle(input);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            self.start_read_batch();
            if Instant::now() >= next_tick {
                self.raw_node.tick();
                next_tick = Instant::now() + self.tick_interval;
                self.expire_parked();
            }
            self.process_ready()?;
            if stop || self.removed {
                break;
            }
        }
        if let Err(error) = self
            .store_sync
            .wait()
            .and_then(|_| self.store.sync().map_err(|error| format!("store: {error}")))
        {
            tracing::error!(%error, "could not make the store durable at shutdown; the log will be replayed");
        }
        if self.removed {
            // Give the transport a moment to deliver the last messages (a removed leader's
            // final commit index).
            std::thread::sleep(self.tick_interval * 2);
            tracing::warn!("{REMOVED_MESSAGE}");
            return Ok(Ended::Removed);
        }
        tracing::info!("replica stopped");
        Ok(Ended::Stopped)
    }

    /// Returns true on Stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose {
                id,
                data,
                request,
                responder,
            } => {
                if self.leader == 0 {
                    self.park(Input::Propose {
                        id,
                        data,
                        request,
                        responder,
                    });
                    return false;
                }
                match self.raw_node.propose(data) {
                    Ok(()) => {
                        self.waiters.insert(id, responder);
                    }
                    Err(error) => {
                        let _ = responder.send(Err(proposal_error(&error)));
                    }
                }
            }
            Input::ReadIndex {
                id,
                responder,
                trace,
            } => {
                if self.leader == 0 {
                    self.park(Input::ReadIndex {
                        id,
                        responder,
                        trace,
                    });
                    return false;
                }
                let batch = self.read_batch.get_or_insert_with(|| (id, Vec::new()));
                batch.1.push(responder);
                let batch_id = batch.0;
                if let (Some(spans), Some(trace)) = (&mut self.spans, trace) {
                    spans.read_requested(batch_id, trace);
                }
            }
            Input::ProposeConfChange {
                id,
                change,
                responder,
            } => {
                if self.leader == 0 {
                    self.park(Input::ProposeConfChange {
                        id,
                        change,
                        responder,
                    });
                    return false;
                }
                match self.raw_node.propose_conf_change(&change) {
                    Ok(()) => {
                        self.waiters.insert(id, responder);
                    }
                    Err(error) => {
                        let _ = responder.send(Err(proposal_error(&error)));
                    }
                }
            }
            Input::RaftStatus(responder) => {
                let _ = responder.send(self.raw_node.status());
            }
            Input::Removed => {
                tracing::warn!("a peer reports that this member was removed from the cluster");
                self.removed = true;
            }
            Input::Step(message) => {
                if message.kind == MessageKind::Snapshot {
                    if let Some(snapshot) = &message.snapshot {
                        self.received_snapshots.push(snapshot.metadata.index);
                    }
                }
                if let Err(error) = self.raw_node.step(message) {
                    tracing::debug!(?error, "dropped a peer message");
                }
            }
            Input::Unreachable(peer) => self.raw_node.report_unreachable(peer),
            Input::TransferLeader(target) => self.raw_node.transfer_leader(target),
            Input::SnapshotStatus { to, finished } => {
                let status = if finished {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw_node.report_snapshot(to, status);
            }
            Input::Stop => return true,
        }
        false
    }

    /// Starts one ReadIndex round for the reads that arrived since the last one.
    fn start_read_batch(&mut self) {
        let Some((id, responders)) = self.read_batch.take() else {
            return;
        };
        match self.raw_node.read_index(id.to_le_bytes().to_vec()) {
            Ok(()) => {
                self.reads.insert(id, responders);
            }
            Err(error) => {
                for responder in responders {
                    let _ = responder.send(Err(proposal_error(&error)));
                }
                if let Some(spans) = &mut self.spans {
                    spans.read_answered(id, None);
                }
            }
        }
    }

    fn park(&mut self, input: Input) {
        if self.parked.len() >= PARKED_MAX {
            fail(input, EtcdError::TooManyRequests.into());
            return;
        }
        self.parked.push_back((Instant::now(), input));
    }

    /// Requests held for a leader longer than the timeout fail with etcd's "no leader".
    fn expire_parked(&mut self) {
        while let Some((since, _)) = self.parked.front() {
            if since.elapsed() < self.parked_timeout {
                break;
            }
            let (_, input) = self.parked.pop_front().expect("just looked at it");
            fail(input, EtcdError::NoLeader.into());
        }
    }

    fn process_ready(&mut self) -> Result<(), String> {
        let mut appended = 0;
        while self.raw_node.has_ready() {
            let ready = self.raw_node.ready();
            appended += ready.entries.len();
            if let Some(soft_state) = &ready.soft_state {
                self.leadership(soft_state.leader.unwrap_or(0), soft_state.role);
            }
            // A leader of several voters sends its appends before its own fsync, overlapping
            // the two (as etcd's does): nothing it sends depends on entries of this Ready
            // being durable here, since committing them needs a follower's acknowledgement
            // of them first. A sole voter commits at once, so it sends only afterwards.
            let send_early = self.leader == self.own_id
                && !self.shared.sole_voter.load(Ordering::Relaxed)
                && ready.snapshot.is_none();
            let mut messages = ready.messages;
            let mut committed = ready.committed_entries;
            if send_early {
                self.send_messages(std::mem::take(&mut messages));
                // Entries a leader sees committed were made durable here in earlier Readies
                // (committing needs a follower's acknowledgement of entries sent after that):
                // apply them and answer their proposers now, not after this Ready's fsync.
                if committed
                    .last()
                    .is_some_and(|entry| entry.index <= self.durable_index)
                {
                    self.apply_committed(std::mem::take(&mut committed))?;
                }
            }
            // 1. Durable before anything that depends on it. A commit index alone is written
            // but not fsynced (etcd's MustSync): losing it loses nothing.
            let mut must_sync = false;
            let append_started = self.spans.is_some().then(SystemTime::now);
            if let Some(snapshot) = &ready.snapshot {
                self.persist_snapshot(snapshot)?;
                must_sync = true;
            }
            if !ready.entries.is_empty() {
                let entries: Vec<wal::Entry> = ready.entries.iter().map(to_wal_entry).collect();
                self.wal
                    .append_entries(&entries)
                    .map_err(|error| format!("write-ahead log: {error}"))?;
                must_sync = true;
            }
            if let Some(hard_state) = &ready.hard_state {
                self.wal
                    .append_hard_state(&wal::HardState {
                        term: hard_state.term,
                        vote: hard_state.vote.unwrap_or(0),
                        commit: hard_state.commit,
                    })
                    .map_err(|error| format!("write-ahead log: {error}"))?;
                self.shared.term.store(hard_state.term, Ordering::Relaxed);
                self.shared
                    .commit_index
                    .store(hard_state.commit, Ordering::Relaxed);
                let term_vote = (hard_state.term, hard_state.vote);
                if term_vote != self.durable_term_vote {
                    self.durable_term_vote = term_vote;
                    must_sync = true;
                }
            }
            if must_sync {
                self.wal
                    .sync()
                    .map_err(|error| format!("write-ahead log: {error}"))?;
            }
            if let (Some(spans), Some(started)) = (&mut self.spans, append_started) {
                if !ready.entries.is_empty() {
                    let term = self.shared.term.load(Ordering::Relaxed);
                    spans.appended(&ready.entries, started, term);
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                self.durable_index = self.durable_index.max(snapshot.metadata.index);
            }
            if let Some(last) = ready.entries.last() {
                self.durable_index = last.index;
            }
            if !ready.entries.is_empty() {
                self.raw_node.storage_mut().append(&ready.entries);
            }
            if let Some(hard_state) = ready.hard_state {
                self.raw_node.storage_mut().set_hard_state(hard_state);
            }
            if let Some(last) = ready.entries.last() {
                self.shared.last_index.store(last.index, Ordering::Relaxed);
            }
            // 2. Messages.
            self.send_messages(messages);
            // 3. Apply (what was not applied above).
            self.apply_committed(committed)?;
            // 4. Reads.
            for read in ready.read_states {
                let Ok(id_bytes) = <[u8; 8]>::try_from(read.context.as_slice()) else {
                    continue;
                };
                let id = u64::from_le_bytes(id_bytes);
                if let Some(spans) = &mut self.spans {
                    spans.read_indexed(id, read.index);
                }
                self.ready_reads.push((read.index, id));
            }
            self.answer_reads();
            // 5.
            self.raw_node.advance();
            self.maybe_compact()?;
        }
        self.load_meter
            .appended(appended, Instant::now(), &self.shared.load);
        self.discard_received_snapshots();
        Ok(())
    }

    /// Removes the files of received snapshots the store has caught up with: installed ones
    /// are gone already; these were declined by the core (or dropped with a stale message).
    /// A file ahead of the store is kept: the core may still hand it over to install.
    fn discard_received_snapshots(&mut self) {
        if self.received_snapshots.is_empty() {
            return;
        }
        let applied = self.store.consistent_index();
        let snap_dir = &self.snap_dir;
        self.received_snapshots.retain(|&index| {
            if index > applied {
                return true;
            }
            let path = snapshot_file(snap_dir, index);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(index, "removed a snapshot file the store no longer needs")
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a snapshot file")
                }
            }
            false
        });
    }

    fn send_messages(&mut self, mut messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let snapshots: Vec<Message> = messages
            .extract_if(.., |message| {
                message.kind == MessageKind::Snapshot
                    && message
                        .snapshot
                        .as_ref()
                        .is_some_and(|snapshot| snapshot.metadata.index > 1)
            })
            .collect();
        for message in snapshots {
            self.send_store_snapshot(message);
        }
        for peer in self.transport.send(messages) {
            self.raw_node.report_unreachable(peer);
        }
    }

    fn leadership(&mut self, leader: u64, role: Role) {
        if leader != self.leader {
            tracing::info!(leader = format!("{leader:x}"), ?role, "leader changed");
            if role == Role::Leader {
                // This member decides lease expiry from now on: every lease gets a full TTL.
                self.lessor.refresh_all();
            }
            self.leader = leader;
            self.shared.leader.store(leader, Ordering::Relaxed);
            if leader != 0 {
                let parked: Vec<_> = self.parked.drain(..).map(|(_, input)| input).collect();
                for input in parked {
                    self.handle(input);
                }
                self.start_read_batch();
            }
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let revision_before = self.store.revision();
        let applied_before = self.store.consistent_index();
        // Consecutive requests on keys and leases share one redb transaction (one commit for
        // the batch); their proposers are answered once it is committed.
        let store = Arc::clone(&self.store);
        let mut answers = Answers::default();
        let mut batch: Option<Batch<'_>> = None;
        for entry in &entries {
            if entry.index <= applied_before {
                // Applied before a restart; the store has it.
                continue;
            }
            match entry.kind {
                EntryKind::Normal if entry.data.is_empty() => match batch.as_mut() {
                    Some(batch) => batch.txn.next_entry(entry.index),
                    None => self.store.skip(entry.index),
                },
                EntryKind::Normal => {
                    let (id, request) = Request::decode(&entry.data)
                        .map_err(|error| format!("entry {}: {error}", entry.index))?;
                    let leading = self.leader == self.own_id;
                    let applying = self
                        .spans
                        .as_mut()
                        .and_then(|spans| spans.committed(entry.index, leading));
                    if batchable(&request) {
                        let batch = match batch.as_mut() {
                            Some(batch) => {
                                batch.txn.next_entry(entry.index);
                                batch
                            }
                            None => batch.insert(Batch {
                                txn: store.write(entry.index).map_err(|error| {
                                    format!("applying entry {}: {error}", entry.index)
                                })?,
                                answers: Vec::new(),
                            }),
                        };
                        let result = apply_in(&mut batch.txn, &self.lessor, &request);
                        if let Err(ServerError::Fatal(reason)) = &result {
                            return Err(format!("applying entry {}: {reason}", entry.index));
                        }
                        if let (Some(spans), Some(applying)) = (&mut self.spans, applying) {
                            spans.applied_in_batch(applying, result.is_ok());
                        }
                        if let Some(responder) = self.waiters.remove(&id) {
                            batch.answers.push((responder, result));
                        }
                        continue;
                    }
                    if let Some(batch) = batch.take() {
                        batch.commit(&mut answers)?;
                    }
                    let result = apply(
                        &self.store,
                        &self.lessor,
                        &self.founding_members,
                        entry.index,
                        &request,
                    );
                    if let Err(ServerError::Fatal(reason)) = &result {
                        return Err(format!("applying entry {}: {reason}", entry.index));
                    }
                    if let (Some(spans), Some(applying)) = (&self.spans, applying) {
                        spans.applied(applying, result.is_ok(), self.store.revision());
                    }
                    if matches!(request, Request::MemberUpdate(_)) && result.is_ok() {
                        self.membership_changed()?;
                    }
                    if let Some(responder) = self.waiters.remove(&id) {
                        answers.push(responder, result);
                    }
                }
                EntryKind::ConfChange => {
                    if let Some(batch) = batch.take() {
                        batch.commit(&mut answers)?;
                    }
                    let (id, result) = self.apply_conf_change(entry.index, &entry.data)?;
                    if let Some(responder) = id.and_then(|id| self.waiters.remove(&id)) {
                        answers.push(responder, result);
                    }
                    if self.removed {
                        break;
                    }
                }
            }
        }
        if let Some(batch) = batch.take() {
            batch.commit(&mut answers)?;
        }
        if let Some(spans) = &mut self.spans {
            spans.batches_committed(self.store.revision());
        }
        self.applied_since_durable += entries.len() as u64;
        self.applied_bytes_since_durable += entries
            .iter()
            .map(|entry| entry.data.len() as u64)
            .sum::<u64>();
        let revision = self.store.revision();
        if revision != revision_before {
            // One read of the batch's changes here saves every watch stream its own; with no
            // watch stream (the node's own receiver is the one left) nobody would read it.
            let watched = self.revisions.receiver_count() > 1;
            let recent = match watched
                .then(|| self.store.changes(revision_before + 1, RECENT_CHANGES_MAX))
            {
                Some(Ok(changes)) if changes.through_revision == revision => {
                    Some(Arc::new(changes))
                }
                Some(Ok(_)) | None => None,
                Some(Err(error)) => {
                    return Err(format!("reading the changes just applied: {error}"))
                }
            };
            self.revisions.send_replace(Published { revision, recent });
        }
        drop(answers);
        // After the answers: the batch's proposers do not wait for this commit.
        self.store
            .flush_if_full()
            .map_err(|error| format!("committing applied entries: {error}"))?;
        Ok(())
    }

    /// Sends the store to a peer behind the compacted log, in place of the core's snapshot
    /// (which only marks where the log was compacted): the metadata becomes the store's applied
    /// index, with its term and the configuration as of it.
    fn send_store_snapshot(&mut self, mut message: Message) {
        let to = message.to;
        let snapshot = match self.store.snapshot() {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::error!(%error, "cannot take a store snapshot for a peer");
                self.raw_node.report_snapshot(to, SnapshotStatus::Failure);
                return;
            }
        };
        let index = snapshot.header().consistent_index;
        let term = match self.raw_node.storage().term(index) {
            Ok(term) => term,
            Err(error) => {
                tracing::error!(index, ?error, "no term for the applied index");
                self.raw_node.report_snapshot(to, SnapshotStatus::Failure);
                return;
            }
        };
        if let Some(raft_snapshot) = message.snapshot.as_mut() {
            raft_snapshot.metadata = SnapshotMetadata {
                index,
                term,
                conf_state: self.raw_node.conf_state(),
            };
        }
        if !self.transport.send_snapshot(message, snapshot) {
            self.raw_node.report_snapshot(to, SnapshotStatus::Failure);
        }
    }

    /// Installs the leader's snapshot. The bootstrap snapshot (index 1, the founding
    /// configuration) has no data; any other comes with the store, received into a file by the
    /// peer service (`snapshot_transfer.rs`).
    ///
    /// Order, for crashes: the WAL's snapshot marker first (the file stays, so a start that
    /// finds the store behind the marker installs it), then the store in one durable
    /// transaction, then the file goes.
    fn persist_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let index = snapshot.metadata.index;
        let path = snapshot_file(&self.snap_dir, index);
        if index > 1 && !path.exists() {
            return Err(format!(
                "the snapshot at index {index} has no data file {}",
                path.display()
            ));
        }
        self.wal
            .append_snapshot_marker(&SnapshotMarker {
                term: snapshot.metadata.term,
                index,
            })
            .and_then(|()| self.wal.sync())
            .map_err(|error| format!("write-ahead log: {error}"))?;
        if index > 1 && std::env::var_os(CRASH_AFTER_SNAPSHOT_MARKER).is_some() {
            tracing::warn!(
                index,
                "{CRASH_AFTER_SNAPSHOT_MARKER} is set: crashing before installing the snapshot"
            );
            std::process::abort();
        }
        self.raw_node
            .storage_mut()
            .apply_snapshot(snapshot.clone())
            .map_err(|error| format!("installing the snapshot in the raft log: {error}"))?;
        if index == 1 {
            tracing::info!(
                term = snapshot.metadata.term,
                voters = ?snapshot.metadata.conf_state.voters,
                "installed the cluster's bootstrap snapshot from the leader"
            );
            return Ok(());
        }
        let header = self
            .store
            .install(&path)
            .map_err(|error| format!("installing the snapshot at index {index}: {error}"))?;
        if header.consistent_index != index {
            return Err(format!(
                "the snapshot file for index {index} holds the store at index {}",
                header.consistent_index
            ));
        }
        remove_snapshot_files(&self.snap_dir);
        self.lessor.reset(
            self.store
                .leases()
                .map_err(|error| format!("reading leases: {error}"))?,
        );
        if self.leader == self.own_id {
            self.lessor.refresh_all();
        }
        self.membership_changed()?;
        self.applied_since_durable = 0;
        self.applied_bytes_since_durable = 0;
        self.revisions.send_replace(Published {
            revision: self.store.revision(),
            recent: None,
        });
        tracing::info!(
            index,
            term = snapshot.metadata.term,
            revision = self.store.revision(),
            voters = ?snapshot.metadata.conf_state.voters,
            learners = ?snapshot.metadata.conf_state.learners,
            "installed a store snapshot from the leader"
        );
        Ok(())
    }

    /// Applies a membership change entry: checks it against the membership as of the entry
    /// (the same outcome on every member), records it in the store with the entry's index,
    /// then tells Raft and the transport. Returns the proposer's request id and its answer.
    #[allow(clippy::type_complexity)]
    fn apply_conf_change(
        &mut self,
        index: u64,
        data: &[u8],
    ) -> Result<(Option<u64>, Result<Response, ServerError>), String> {
        let store_error = |error: keel_storage::mvcc::MvccError| {
            format!("applying membership change {index}: {error}")
        };
        let Ok(change) = ConfChange::decode(data) else {
            tracing::warn!(index, "a membership change entry does not decode; skipped");
            self.store.skip(index);
            return Ok((None, Err(EtcdError::MemberBadUrls.into())));
        };
        let (request_id, member) = match membership::decode_context(&change.context) {
            Some((id, member)) => (Some(id), member),
            None => (None, None),
        };
        let current = Membership::load(&self.founding_members, &self.store).map_err(store_error)?;
        if let Err(error) = membership::check_conf_change(&current, &change, member.as_ref()) {
            tracing::info!(index, kind = ?change.kind, member = format!("{:x}", change.node_id), %error, "membership change refused");
            self.store.skip(index);
            return Ok((request_id, Err(error.into())));
        }
        let id = change.node_id;
        let mut txn = self.store.write(index).map_err(store_error)?;
        match change.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
                let mut member = member.expect("checked: an add carries its member");
                member.is_learner = change.kind == ConfChangeKind::AddLearner;
                txn.put_member_raft(id, &member.encode())
            }
            ConfChangeKind::PromoteLearner => {
                let mut member = current.get(id).expect("checked: a learner").clone();
                member.is_learner = false;
                txn.put_member_raft(id, &member.encode())
            }
            ConfChangeKind::RemoveNode => txn.remove_member(id),
        }
        .map_err(store_error)?;
        txn.commit(false).map_err(store_error)?;
        let conf_state = self.raw_node.apply_conf_change(&change);
        tracing::info!(
            index,
            member = format!("{id:x}"),
            voters = ?conf_state.voters,
            learners = ?conf_state.learners,
            "{}",
            membership::describe(change.kind)
        );
        self.membership_changed()?;
        if change.kind == ConfChangeKind::RemoveNode && id == self.own_id {
            self.removed = true;
        }
        Ok((request_id, Ok(Response::MemberChange)))
    }

    /// Brings the transport and what everyone else reads in line with the membership.
    fn membership_changed(&mut self) -> Result<(), String> {
        let current = Membership::load(&self.founding_members, &self.store)
            .map_err(|error| format!("reading the membership: {error}"))?;
        self.transport.set_peers(
            current
                .members
                .iter()
                .map(|member| (member.id, member.peer_urls.clone()))
                .collect(),
        );
        publish_membership(&self.shared, &current, self.own_id);
        Ok(())
    }

    fn answer_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.store.consistent_index();
        let reads = &mut self.reads;
        let spans = &mut self.spans;
        self.ready_reads.retain(|(index, id)| {
            if *index > applied {
                return true;
            }
            for responder in reads.remove(id).unwrap_or_default() {
                let _ = responder.send(Ok(*index));
            }
            if let Some(spans) = spans {
                spans.read_answered(*id, Some(applied));
            }
            false
        });
    }

    /// Starts a durable store sync every so often, and once one has finished drops the log
    /// the store no longer needs (keeping some for members that fall behind).
    fn maybe_compact(&mut self) -> Result<(), String> {
        if let Some(durable) = self.store_sync.finished()? {
            self.release_log(durable)?;
        }
        if self.applied_since_durable < self.durable_after_entries
            && self.applied_bytes_since_durable < DURABLE_EVERY_BYTES
        {
            return Ok(());
        }
        // Large entries (big transactions) count by size: the log kept for slow followers is
        // held in memory and replayed at start, so it is bounded in bytes too (a follower
        // further behind gets a snapshot).
        let entry_bytes =
            (self.applied_bytes_since_durable / self.applied_since_durable.max(1)).max(1);
        let catch_up_entries = self
            .catch_up_entries
            .min(CATCH_UP_BYTES_MAX / entry_bytes)
            .max(1);
        // One sync at a time: while one runs, the counts go on and the next starts after it.
        if !self.store_sync.start()? {
            return Ok(());
        }
        self.sync_catch_up_entries = catch_up_entries;
        self.applied_since_durable = 0;
        self.applied_bytes_since_durable = 0;
        self.durable_after_entries = self.durable_every_entries;
        Ok(())
    }

    /// The store is durable up to log entry `applied`: the log before it (but the entries
    /// kept for slow followers) is released.
    fn release_log(&mut self, applied: u64) -> Result<(), String> {
        let keep_from = applied.saturating_sub(self.sync_catch_up_entries);
        let first = self
            .raw_node
            .storage()
            .first_index()
            .map_err(|error| format!("raft log: {error:?}"))?;
        if keep_from <= first {
            return Ok(());
        }
        let compact_to = keep_from - 1;
        let term = self
            .raw_node
            .storage()
            .term(compact_to)
            .map_err(|error| format!("raft log: {error:?}"))?;
        // The marker is synced only if segments go (`release_before`); otherwise with the
        // next Ready: an fsync here, every durable store sync, stalled every proposal.
        self.wal
            .append_snapshot_marker(&SnapshotMarker {
                term,
                index: compact_to,
            })
            .and_then(|()| self.wal.release_before(keep_from))
            .map_err(|error| format!("compacting the log: {error}"))?;
        let conf_state = self.raw_node.conf_state();
        self.raw_node
            .storage_mut()
            .compact(compact_to, conf_state, Vec::new())
            .map_err(|error| format!("compacting the raft log: {error:?}"))?;
        Ok(())
    }
}

/// What the node and the peer service read about the membership.
pub fn publish_membership(shared: &Shared, membership: &Membership, own_id: u64) {
    let mut voters = membership.voters();
    let sole = voters.next().is_some_and(|voter| voter.id == own_id) && voters.next().is_none();
    shared.sole_voter.store(sole, Ordering::Relaxed);
    *shared
        .removed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) =
        membership.removed.iter().copied().collect();
}

fn proposal_error(error: &keel_raft::Error) -> ServerError {
    match error {
        keel_raft::Error::NoLeader => EtcdError::NoLeader.into(),
        keel_raft::Error::LeaderTransferInProgress => EtcdError::LeaderChanged.into(),
        keel_raft::Error::UncommittedLogFull
        | keel_raft::Error::ReadIndexQueueFull
        | keel_raft::Error::ProposalBatchTooLarge => EtcdError::TooManyRequests.into(),
        keel_raft::Error::NotAMember => EtcdError::Stopped.into(),
        // etcd's raft drops a second change while one is pending and the proposer times out;
        // answering at once says the same sooner.
        keel_raft::Error::ConfChangePending => EtcdError::Timeout.into(),
        keel_raft::Error::InvalidConfChange(_) => EtcdError::MemberNotFound.into(),
        other => ServerError::Fatal(format!("raft refused a proposal: {other:?}")),
    }
}

fn fail(input: Input, error: ServerError) {
    match input {
        Input::Propose { responder, .. } => {
            let _ = responder.send(Err(error));
        }
        Input::ReadIndex { responder, .. } => {
            let _ = responder.send(Err(error));
        }
        Input::ProposeConfChange { responder, .. } => {
            let _ = responder.send(Err(error));
        }
        Input::Step(_)
        | Input::Unreachable(_)
        | Input::TransferLeader(_)
        | Input::SnapshotStatus { .. }
        | Input::Removed
        | Input::RaftStatus(_)
        | Input::Stop => {}
    }
}

/// The core's hard state from the WAL's.
pub fn hard_state_from_wal(state: &wal::HardState) -> HardState {
    HardState {
        term: state.term,
        vote: (state.vote != 0).then_some(state.vote),
        commit: state.commit,
    }
}
