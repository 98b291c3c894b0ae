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
//!      5. advance; now and then make the store durable and compact the log
//! ```
//!
//! A single-member cluster runs the same path; it campaigns at start and leads at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::EtcdError;
use keel_raft::{
    ConfChange, Entry, EntryKind, HardState, MemStorage, Message, RawNode, Role, Storage,
};
use keel_storage::mvcc::Store;
use keel_storage::wal::{self, SnapshotMarker, Wal};
use tokio::sync::{oneshot, watch};

use crate::apply::{apply, Response};
use crate::lease::Lessor;
use crate::request::Request;
use crate::transport::Transport;
use crate::watch::Published;
use crate::ServerError;

/// Inputs taken from the inbox before the next Ready is processed.
const INPUTS_PER_ROUND_MAX: usize = 4096;
/// Proposals and reads held while no leader is known.
const PARKED_MAX: usize = 4096;
/// Log entries kept before the durable store state, for members that fall behind.
const CATCH_UP_ENTRIES: u64 = 5_000;
/// Changes of one batch handed to watch streams in memory.
const RECENT_CHANGES_MAX: usize = 16_384;

pub type Responder = oneshot::Sender<Result<Response, ServerError>>;
pub type ReadResponder = oneshot::Sender<Result<u64, ServerError>>;

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
    },
    Step(Message),
    Unreachable(u64),
    /// Hand leadership to this member (MoveLeader).
    TransferLeader(u64),
    Stop,
}

/// What the replica thread tells everyone else.
#[derive(Debug, Default)]
pub struct Shared {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub last_index: AtomicU64,
    pub commit_index: AtomicU64,
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
    pub raw_node: RawNode<MemStorage>,
    pub wal: Wal,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub transport: Option<Transport>,
    pub shared: Arc<Shared>,
    pub revisions: watch::Sender<Published>,
    pub tick_interval: Duration,
    pub durable_every_entries: u64,
    pub parked_timeout: Duration,
    waiters: HashMap<u64, Responder>,
    reads: HashMap<u64, ReadResponder>,
    /// Reads whose index is known, waiting for it to be applied.
    ready_reads: Vec<(u64, u64)>,
    parked: VecDeque<(Instant, Input)>,
    applied_since_durable: u64,
    leader: u64,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw_node: RawNode<MemStorage>,
        wal: Wal,
        store: Arc<Store>,
        lessor: Arc<Lessor>,
        transport: Option<Transport>,
        shared: Arc<Shared>,
        revisions: watch::Sender<Published>,
        tick_interval: Duration,
        durable_every_entries: u64,
        parked_timeout: Duration,
    ) -> Replica {
        Replica {
            raw_node,
            wal,
            store,
            lessor,
            transport,
            shared,
            revisions,
            tick_interval,
            durable_every_entries,
            parked_timeout,
            waiters: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            parked: VecDeque::new(),
            applied_since_durable: 0,
            leader: 0,
        }
    }

    /// Runs until stopped or until storage fails (then returns the reason).
    pub fn run(mut self, inbox: Receiver<Input>) -> Result<(), String> {
        let mut next_tick = Instant::now() + self.tick_interval;
        // Whatever the core has to say from the start (a single member's own election).
        self.process_ready()?;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = false;
            match inbox.recv_timeout(wait) {
                Ok(input) => {
                    stop |= self.handle(input);
                    for _ in 0..INPUTS_PER_ROUND_MAX {
                        match inbox.try_recv() {
                            Ok(input) => stop |= self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            if Instant::now() >= next_tick {
                self.raw_node.tick();
                next_tick = Instant::now() + self.tick_interval;
                self.expire_parked();
            }
            self.process_ready()?;
            if stop {
                break;
            }
        }
        if let Err(error) = self.store.sync() {
            tracing::error!(%error, "could not make the store durable at shutdown; the log will be replayed");
        }
        tracing::info!("replica stopped");
        Ok(())
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
            Input::ReadIndex { id, responder } => {
                if self.leader == 0 {
                    self.park(Input::ReadIndex { id, responder });
                    return false;
                }
                match self.raw_node.read_index(id.to_le_bytes().to_vec()) {
                    Ok(()) => {
                        self.reads.insert(id, responder);
                    }
                    Err(error) => {
                        let _ = responder.send(Err(proposal_error(&error)));
                    }
                }
            }
            Input::Step(message) => {
                if let Err(error) = self.raw_node.step(message) {
                    tracing::debug!(?error, "dropped a peer message");
                }
            }
            Input::Unreachable(peer) => self.raw_node.report_unreachable(peer),
            Input::TransferLeader(target) => self.raw_node.transfer_leader(target),
            Input::Stop => return true,
        }
        false
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
        while self.raw_node.has_ready() {
            let ready = self.raw_node.ready();
            if let Some(soft_state) = &ready.soft_state {
                self.leadership(soft_state.leader.unwrap_or(0), soft_state.role);
            }
            if ready.snapshot.is_some() {
                return Err("installing a snapshot from the leader is not supported yet".into());
            }
            // 1. Durable before anything that depends on it.
            let mut wrote = false;
            if !ready.entries.is_empty() {
                let entries: Vec<wal::Entry> = ready.entries.iter().map(to_wal_entry).collect();
                self.wal
                    .append_entries(&entries)
                    .map_err(|error| format!("write-ahead log: {error}"))?;
                wrote = true;
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
                wrote = true;
            }
            if wrote {
                self.wal
                    .sync()
                    .map_err(|error| format!("write-ahead log: {error}"))?;
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
            for message in ready.messages {
                let to = message.to;
                let sent = self
                    .transport
                    .as_ref()
                    .is_some_and(|transport| transport.send(message));
                if !sent {
                    self.raw_node.report_unreachable(to);
                }
            }
            // 3. Apply.
            self.apply_committed(ready.committed_entries)?;
            // 4. Reads.
            for read in ready.read_states {
                let Ok(id_bytes) = <[u8; 8]>::try_from(read.context.as_slice()) else {
                    continue;
                };
                self.ready_reads
                    .push((read.index, u64::from_le_bytes(id_bytes)));
            }
            self.answer_reads();
            // 5.
            self.raw_node.advance();
            self.maybe_compact()?;
        }
        Ok(())
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
            }
        }
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let revision_before = self.store.revision();
        let applied_before = self.store.consistent_index();
        for entry in &entries {
            if entry.index <= applied_before {
                // Applied before a restart; the store has it.
                continue;
            }
            match entry.kind {
                EntryKind::Normal if entry.data.is_empty() => self.store.skip(entry.index),
                EntryKind::Normal => {
                    let (id, request) = Request::decode(&entry.data)
                        .map_err(|error| format!("entry {}: {error}", entry.index))?;
                    let result = apply(&self.store, &self.lessor, entry.index, &request);
                    if let Err(ServerError::Fatal(reason)) = &result {
                        return Err(format!("applying entry {}: {reason}", entry.index));
                    }
                    if let Some(responder) = self.waiters.remove(&id) {
                        let _ = responder.send(result);
                    }
                }
                EntryKind::ConfChange => {
                    if let Ok(change) = ConfChange::decode(&entry.data) {
                        self.raw_node.apply_conf_change(&change);
                    }
                    self.store.skip(entry.index);
                }
            }
        }
        self.applied_since_durable += entries.len() as u64;
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
        Ok(())
    }

    fn answer_reads(&mut self) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.store.consistent_index();
        let reads = &mut self.reads;
        self.ready_reads.retain(|(index, id)| {
            if *index > applied {
                return true;
            }
            if let Some(responder) = reads.remove(id) {
                let _ = responder.send(Ok(*index));
            }
            false
        });
    }

    /// Makes the store durable every so often, then drops the log it no longer needs (keeping
    /// some for members that fall behind).
    fn maybe_compact(&mut self) -> Result<(), String> {
        if self.applied_since_durable < self.durable_every_entries {
            return Ok(());
        }
        self.applied_since_durable = 0;
        self.store
            .sync()
            .map_err(|error| format!("store: {error}"))?;
        let applied = self.store.consistent_index();
        let keep_from = applied.saturating_sub(CATCH_UP_ENTRIES);
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
        self.wal
            .append_snapshot_marker(&SnapshotMarker {
                term,
                index: compact_to,
            })
            .and_then(|()| self.wal.sync())
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

fn proposal_error(error: &keel_raft::Error) -> ServerError {
    match error {
        keel_raft::Error::NoLeader => EtcdError::NoLeader.into(),
        keel_raft::Error::LeaderTransferInProgress => EtcdError::LeaderChanged.into(),
        keel_raft::Error::UncommittedLogFull
        | keel_raft::Error::ReadIndexQueueFull
        | keel_raft::Error::ProposalBatchTooLarge => EtcdError::TooManyRequests.into(),
        keel_raft::Error::NotAMember => EtcdError::Stopped.into(),
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
        Input::Step(_) | Input::Unreachable(_) | Input::TransferLeader(_) | Input::Stop => {}
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
