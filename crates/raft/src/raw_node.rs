//! The runtime's handle on the core: inputs go in through methods, work comes out as a
//! [`Ready`], and [`RawNode::advance`] says the work is done.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::error::Error;
use crate::message::{
    ConfChange, ConfState, Entry, HardState, Message, NodeId, ReadState, Role, Snapshot, SoftState,
};
use crate::progress::ProgressState;
use crate::raft::Raft;
use crate::storage::Storage;

/// A batch of work for the runtime, to carry out in this order:
///
/// 1. Persist `snapshot` (replacing the whole log), then `entries` (discarding stored entries
///    at or after the first one's index), then `hard_state`, and make them durable (fsync).
/// 2. Send `messages` (they may acknowledge what step 1 persisted).
/// 3. Install `snapshot` in the state machine, then apply `committed_entries` in order,
///    calling [`RawNode::apply_conf_change`] for each `ConfChange` entry.
/// 4. Serve `read_states` once the state machine has applied their index.
/// 5. Call [`RawNode::advance`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "a Ready must be carried out and then acknowledged with advance()"]
pub struct Ready {
    /// Set when the leader or role changed.
    pub soft_state: Option<SoftState>,
    /// Set when term, vote or commit changed.
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader to persist and install.
    pub snapshot: Option<Snapshot>,
    /// New log entries to persist.
    pub entries: Vec<Entry>,
    /// Messages to send after persisting.
    pub messages: Vec<Message>,
    /// Entries to apply (all are durable once step 1 is done).
    pub committed_entries: Vec<Entry>,
    /// Answers to ReadIndex requests.
    pub read_states: Vec<ReadState>,
}

/// What `advance` must acknowledge for the Ready that is out.
#[derive(Debug)]
struct Outstanding {
    snapshot_index: Option<u64>,
    last_entry: Option<(u64, u64)>,
    applied_to: Option<u64>,
}

/// A follower's replication state as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressStatus {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    pub recent_active: bool,
    /// Unacknowledged `Append` messages (Replicate state).
    pub inflight_messages: usize,
}

/// A read-only view of the node for diagnostics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub hard_state: HardState,
    pub soft_state: SoftState,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub conf_state: ConfState,
    pub lead_transferee: Option<NodeId>,
    /// Filled on the leader only.
    pub progress: BTreeMap<NodeId, ProgressStatus>,
}

/// Whether the runtime managed to deliver a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    Finish,
    Failure,
}

/// One Raft node without I/O. See the crate documentation for the flow.
pub struct RawNode<S> {
    raft: Raft<S>,
    previous_soft_state: SoftState,
    previous_hard_state: HardState,
    outstanding: Option<Outstanding>,
}

impl<S: Storage> RawNode<S> {
    /// Starts a node from what `storage` holds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config, [`Error::Storage`] if the storage cannot
    /// report its initial state or it is inconsistent.
    pub fn new(config: &Config, storage: S) -> Result<Self, Error> {
        let raft = Raft::new(config, storage)?;
        Ok(Self {
            previous_soft_state: raft.soft_state(),
            previous_hard_state: raft.hard_state(),
            raft,
            outstanding: None,
        })
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (as if the election timeout had passed).
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// Proposes one entry of application data.
    ///
    /// # Errors
    /// The proposal was dropped: [`Error::NoLeader`], [`Error::LeaderTransferInProgress`],
    /// [`Error::UncommittedLogFull`], [`Error::NotAMember`]. Success only means the
    /// proposal was appended (leader) or forwarded (follower); it may still be lost if
    /// leadership changes, so the runtime must match applied entries to its requests.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.raft.propose(vec![Entry {
            data,
            ..Entry::default()
        }])
    }

    /// Proposes several entries at once (at most `max_proposal_entries`).
    ///
    /// # Errors
    /// As [`RawNode::propose`], plus [`Error::ProposalBatchTooLarge`].
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<(), Error> {
        let entries = data
            .into_iter()
            .map(|data| Entry {
                data,
                ..Entry::default()
            })
            .collect();
        self.raft.propose(entries)
    }

    /// Proposes a membership change. On the leader it is checked against the configuration;
    /// only one may be pending (appended but not applied) at a time.
    ///
    /// # Errors
    /// As [`RawNode::propose`], plus [`Error::ConfChangePending`] and
    /// [`Error::InvalidConfChange`].
    pub fn propose_conf_change(&mut self, change: &ConfChange) -> Result<(), Error> {
        self.raft.propose(vec![change.to_entry()])
    }

    /// Hands a message from a peer to the core.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] for a message meant for another node; a forwarded proposal
    /// or read that can no longer be served reports why it was dropped.
    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        self.raft.step(message)
    }

    /// Requests a linearizable read; the answer comes back as a [`ReadState`] carrying
    /// `context` (which must be non-empty and unique among pending reads).
    ///
    /// # Errors
    /// [`Error::NoLeader`], [`Error::ReadIndexQueueFull`], [`Error::EmptyReadContext`].
    /// Reads pending when leadership changes are dropped silently: the runtime must time
    /// them out.
    pub fn read_index(&mut self, context: Vec<u8>) -> Result<(), Error> {
        let id = self.raft.id;
        self.raft.read_index(id, context)
    }

    /// Asks the leader to hand leadership to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) {
        self.raft.transfer_leader(target);
    }

    /// Reports the outcome of sending a snapshot (a `Snapshot` message) to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, status: SnapshotStatus) {
        self.raft
            .report_snapshot(to, status == SnapshotStatus::Finish);
    }

    /// Reports that a message to `to` could not be delivered.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// Applies a committed membership change; call it while applying its entry.
    pub fn apply_conf_change(&mut self, change: &ConfChange) -> ConfState {
        self.raft.apply_conf_change(change)
    }

    /// Whether [`RawNode::ready`] has anything to hand out. False while a Ready is out.
    #[must_use]
    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        let raft = &self.raft;
        raft.broadcast_pending
            || raft.soft_state() != self.previous_soft_state
            || raft.hard_state() != self.previous_hard_state
            || raft.log.unstable.snapshot.is_some()
            || !raft.log.unstable.entries.is_empty()
            || !raft.messages.is_empty()
            || !raft.read_states.is_empty()
            || raft.log.has_next_committed_entries()
    }

    /// Takes the pending work. Inputs (steps, ticks, proposals) may keep arriving before
    /// `advance`; what they produce goes into the next Ready.
    ///
    /// # Panics
    /// If the previous Ready was not acknowledged with [`RawNode::advance`].
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.outstanding.is_none(),
            "ready() called again before advance()"
        );
        let raft = &mut self.raft;
        if raft.broadcast_pending {
            raft.broadcast_pending = false;
            if raft.role == Role::Leader {
                raft.broadcast_append();
            }
        }
        let soft_state = raft.soft_state();
        let hard_state = raft.hard_state();
        let snapshot = raft.log.unstable.snapshot.clone();
        let entries = raft.log.unstable.entries.clone();
        let committed_entries = raft
            .log
            .next_committed_entries(raft.config.max_committed_bytes_per_ready);
        if raft.role == Role::Leader {
            raft.reduce_uncommitted_size(committed_entries.iter().map(Entry::size_bytes).sum());
        }
        let ready = Ready {
            soft_state: (soft_state != self.previous_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.previous_hard_state).then(|| hard_state.clone()),
            snapshot,
            entries,
            messages: std::mem::take(&mut raft.messages),
            committed_entries,
            read_states: std::mem::take(&mut raft.read_states),
        };
        self.previous_soft_state = soft_state;
        self.previous_hard_state = hard_state;
        let snapshot_index = ready.snapshot.as_ref().map(|s| s.metadata.index);
        self.outstanding = Some(Outstanding {
            snapshot_index,
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
            applied_to: ready
                .committed_entries
                .last()
                .map(|e| e.index)
                .or(snapshot_index),
        });
        ready
    }

    /// Acknowledges that the last Ready was carried out: its entries and snapshot are
    /// durable and its committed entries applied.
    ///
    /// # Panics
    /// If no Ready is out.
    pub fn advance(&mut self) {
        let outstanding = self
            .outstanding
            .take()
            .expect("advance() called without an outstanding ready()");
        let log = &mut self.raft.log;
        if let Some(index) = outstanding.snapshot_index {
            log.stable_snapshot_to(index);
        }
        if let Some((index, term)) = outstanding.last_entry {
            log.stable_to(index, term);
        }
        if let Some(index) = outstanding.applied_to {
            log.applied_to(index);
        }
        self.raft.on_persisted();
    }

    #[must_use]
    pub fn status(&self) -> Status {
        let raft = &self.raft;
        let progress = if raft.role == Role::Leader {
            raft.tracker
                .progress
                .iter()
                .map(|(&id, p)| {
                    (
                        id,
                        ProgressStatus {
                            matched: p.matched,
                            next: p.next,
                            state: p.state,
                            recent_active: p.recent_active,
                            inflight_messages: p.inflights.count(),
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: raft.id,
            hard_state: raft.hard_state(),
            soft_state: raft.soft_state(),
            applied: raft.log.applied,
            first_index: raft.log.first_index(),
            last_index: raft.log.last_index(),
            conf_state: raft.conf_state(),
            lead_transferee: raft.lead_transferee,
            progress,
        }
    }

    /// The current leader and role (cheaper than [`RawNode::status`]).
    #[must_use]
    pub fn soft_state(&self) -> SoftState {
        self.raft.soft_state()
    }

    /// The current term, vote and commit index (cheaper than [`RawNode::status`]).
    #[must_use]
    pub fn hard_state(&self) -> HardState {
        self.raft.hard_state()
    }

    /// The term of the entry at `index` in the node's log (persisted or not), if it holds it.
    #[must_use]
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index).ok()
    }

    /// The node's current configuration.
    #[must_use]
    pub fn conf_state(&self) -> ConfState {
        self.raft.conf_state()
    }

    #[must_use]
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// For the runtime to persist what a Ready says.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Gives the storage back (e.g. to restart a node from it).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }
}
