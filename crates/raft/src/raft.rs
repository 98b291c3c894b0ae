//! The consensus state machine: roles, terms, elections, replication, commit, reads,
//! membership and leadership transfer. Everything it wants done goes into `messages` and the
//! log's unstable tail; [`RawNode`](crate::RawNode) packages that as a `Ready`.

use std::collections::VecDeque;

use crate::config::Config;
use crate::error::{Error, StorageError};
use crate::log::RaftLog;
use crate::message::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, Message, MessageKind,
    NodeId, ReadState, Role, SoftState, TRANSFER_CONTEXT,
};
use crate::progress::ProgressState;
use crate::read_only::ReadOnly;
use crate::rng::SplitMix64;
use crate::storage::Storage;
use crate::tracker::{Tracker, VoteResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Campaign {
    PreElection,
    Election,
    /// An election after a leadership transfer: skips pre-vote and the vote lease.
    Transfer,
}

pub(crate) struct Raft<S> {
    pub id: NodeId,
    pub term: u64,
    pub vote: Option<NodeId>,
    pub log: RaftLog<S>,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub tracker: Tracker,
    /// Outgoing messages, handed out with the next Ready.
    pub messages: Vec<Message>,
    pub read_states: Vec<ReadState>,
    read_only: ReadOnly,
    /// ReadIndex requests that arrived before this leader committed an entry of its term.
    deferred_reads: VecDeque<(NodeId, Vec<u8>)>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    rng: SplitMix64,
    pub lead_transferee: Option<NodeId>,
    /// Index of the last conf change the leader appended; a new one waits until it is applied.
    pending_conf_index: u64,
    uncommitted_size_bytes: u64,
    /// New proposals are appended; the broadcast is batched until the next Ready.
    pub broadcast_pending: bool,
    pub config: Config,
}

impl<S: Storage> Raft<S> {
    pub fn new(config: &Config, storage: S) -> Result<Self, Error> {
        config.validate()?;
        let initial = storage.initial_state()?;
        let mut log = RaftLog::new(storage);
        let hard_state = initial.hard_state;
        if hard_state.commit > log.last_index() {
            return Err(Error::Storage(StorageError::Other(format!(
                "hard state commit {} is beyond the last index {}",
                hard_state.commit,
                log.last_index()
            ))));
        }
        log.commit_to(hard_state.commit);
        if config.applied > 0 {
            if config.applied > log.committed || config.applied < log.applied {
                return Err(Error::InvalidConfig(
                    "applied must lie between the snapshot index and the commit index",
                ));
            }
            log.applied_to(config.applied);
        }
        let seed = config
            .random_seed
            .wrapping_add(config.id.wrapping_mul(0xA076_1D64_78BD_642F));
        let mut raft = Self {
            id: config.id,
            term: hard_state.term,
            vote: hard_state.vote,
            log,
            role: Role::Follower,
            leader: None,
            tracker: Tracker::new(&initial.conf_state, config.max_inflight_messages),
            messages: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::new(config.max_pending_read_index),
            deferred_reads: VecDeque::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_ticks,
            rng: SplitMix64::new(seed),
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted_size_bytes: 0,
            broadcast_pending: false,
            config: config.clone(),
        };
        raft.become_follower(hard_state.term, None);
        Ok(raft)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    pub fn conf_state(&self) -> ConfState {
        self.tracker.conf_state()
    }

    /// A voter may campaign; learners and removed nodes may not.
    pub fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id)
    }

    fn send(&mut self, mut message: Message) {
        message.from = self.id;
        match message.kind {
            MessageKind::RequestVote
            | MessageKind::RequestVoteResponse
            | MessageKind::RequestPreVote
            | MessageKind::RequestPreVoteResponse => {
                assert!(message.term != 0, "vote messages carry an explicit term");
            }
            MessageKind::Propose | MessageKind::ReadIndex => message.term = 0,
            _ => message.term = self.term,
        }
        self.messages.push(message);
    }

    // ---------------------------------------------------------------------------------------
    // Role transitions.

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.config.election_ticks
            + u32::try_from(self.rng.below(u64::from(self.config.election_ticks)))
                .expect("below election_ticks fits u32");
        self.lead_transferee = None;
        self.tracker.reset_votes();
        let own_persisted = self.log.persisted_last_index().unwrap_or(0);
        self.tracker
            .reset_progress(self.id, self.log.last_index(), own_persisted);
        self.pending_conf_index = 0;
        self.uncommitted_size_bytes = 0;
        self.read_only = ReadOnly::new(self.config.max_pending_read_index);
        self.deferred_reads.clear();
        self.broadcast_pending = false;
    }

    pub fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "a leader cannot become pre-candidate"
        );
        // Term and vote stay: a pre-vote disturbs nobody.
        self.role = Role::PreCandidate;
        self.leader = None;
        self.tracker.reset_votes();
    }

    fn become_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "a leader cannot become candidate"
        );
        self.reset(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "only a candidate becomes leader"
        );
        self.reset(self.term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        if let Some(own) = self.tracker.progress.get_mut(&self.id) {
            own.become_replicate();
        }
        // The empty entry lets this leader commit (and so learn the commit index) in its own
        // term; no membership change may be proposed before it is applied, which closes the
        // single-server-change hole described by Ongaro in 2015.
        let index = self.log.last_index() + 1;
        self.log.append(vec![Entry {
            term: self.term,
            index,
            ..Entry::default()
        }]);
        self.pending_conf_index = index;
    }

    // ---------------------------------------------------------------------------------------
    // Time.

    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                if !self.tracker.quorum_active(self.id) {
                    self.become_follower(self.term, None);
                    return;
                }
                self.tracker.reset_recent_active(self.id);
            }
            // A transfer that has not finished within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            let context = self.read_only.last_context().map(<[u8]>::to_vec);
            self.broadcast_heartbeat(&context.unwrap_or_default());
        }
    }

    // ---------------------------------------------------------------------------------------
    // Elections.

    /// Starts an election if this node may.
    pub fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.log.has_unapplied_conf_changes() {
            return;
        }
        let campaign = if transfer {
            Campaign::Transfer
        } else if self.config.pre_vote {
            Campaign::PreElection
        } else {
            Campaign::Election
        };
        self.campaign(campaign);
    }

    fn campaign(&mut self, campaign: Campaign) {
        let (kind, term) = if campaign == Campaign::PreElection {
            self.become_pre_candidate();
            (MessageKind::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageKind::RequestVote, self.term)
        };
        if self.tracker.record_vote(self.id, true) == VoteResult::Won {
            // A single-voter cluster wins at once.
            if campaign == Campaign::PreElection {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        // Learners are asked too. Their answers do not count here, but they learn the term,
        // and one may already be a voter in a configuration this node has not applied yet:
        // without this, such a node only learns our term from rejections and can trail us by
        // one term forever while we cannot win (seed 40612, pre-vote off).
        let own_id = self.id;
        let members: Vec<NodeId> = self
            .tracker
            .voters
            .iter()
            .chain(&self.tracker.learners)
            .copied()
            .collect();
        for member in members.into_iter().filter(|&m| m != own_id) {
            let mut message = Message::new(kind, member);
            message.term = term;
            message.index = self.log.last_index();
            message.log_term = self.log.last_term();
            if campaign == Campaign::Transfer {
                message.context = TRANSFER_CONTEXT.to_vec();
            }
            self.send(message);
        }
    }

    fn handle_vote_request(&mut self, message: &Message) {
        let pre_vote = message.kind == MessageKind::RequestPreVote;
        let response_kind = if pre_vote {
            MessageKind::RequestPreVoteResponse
        } else {
            MessageKind::RequestVoteResponse
        };
        let can_vote = self.vote == Some(message.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && message.term > self.term);
        let mut response = Message::new(response_kind, message.from);
        if can_vote && self.log.is_up_to_date(message.index, message.log_term) {
            // A granted (pre-)vote carries the campaign's term, so a pre-candidate can tell
            // it apart from a stale answer.
            response.term = message.term;
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = Some(message.from);
            }
        } else {
            response.term = self.term;
            response.reject = true;
        }
        self.send(response);
    }

    // ---------------------------------------------------------------------------------------
    // Message dispatch.

    pub fn step(&mut self, message: Message) -> Result<(), Error> {
        if message.to != self.id {
            return Err(Error::InvalidMessage("addressed to another node"));
        }
        if message.term == 0 {
            if !matches!(message.kind, MessageKind::Propose | MessageKind::ReadIndex) {
                return Err(Error::InvalidMessage(
                    "only Propose and ReadIndex carry term 0",
                ));
            }
        } else if message.term > self.term {
            if matches!(
                message.kind,
                MessageKind::RequestVote | MessageKind::RequestPreVote
            ) {
                let forced = message.context == TRANSFER_CONTEXT;
                let in_lease = self.config.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.config.election_ticks;
                if !forced && in_lease {
                    // The vote lease: a leader was heard from recently, so this candidate is
                    // the one out of touch. Ignoring it keeps the cluster stable.
                    return Ok(());
                }
            }
            match message.kind {
                // A pre-vote never changes the receiver's term; nor does a granted answer,
                // whose term is the one the pre-candidate would campaign in.
                MessageKind::RequestPreVote => {}
                MessageKind::RequestPreVoteResponse if !message.reject => {}
                MessageKind::Append | MessageKind::Heartbeat | MessageKind::Snapshot => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => {
                    // As in the Raft paper (not etcd), a higher term alone does not restart
                    // the election timer: only the leader's messages and granting a vote do.
                    // Otherwise a candidate that can never win (stale log) keeps resetting the
                    // timers of the nodes that could, and without pre-vote the cluster can
                    // stay leaderless (seed 6616).
                    let elapsed = self.election_elapsed;
                    self.become_follower(message.term, None);
                    self.election_elapsed = elapsed;
                }
            }
        } else if message.term < self.term {
            if matches!(message.kind, MessageKind::Heartbeat | MessageKind::Append) {
                // A stale leader (e.g. one that was partitioned) learns the newer term from
                // this answer and steps down. Without it, a node whose term rose while cut off
                // could be ignored forever: under pre-vote / check-quorum, and always for a
                // learner, which never campaigns to spread its term (seed 46193). etcd answers
                // only under pre-vote / check-quorum.
                let response = Message::new(MessageKind::AppendResponse, message.from);
                self.send(response);
            } else if matches!(
                message.kind,
                MessageKind::RequestVote | MessageKind::RequestPreVote
            ) {
                // Reject with our term, as the Raft paper does (etcd stays silent on stale
                // votes): a candidate that never hears our term can trail it by one forever
                // while it is the only one that can win (seed 50234).
                let kind = if message.kind == MessageKind::RequestVote {
                    MessageKind::RequestVoteResponse
                } else {
                    MessageKind::RequestPreVoteResponse
                };
                let mut response = Message::new(kind, message.from);
                response.term = self.term;
                response.reject = true;
                self.send(response);
            }
            return Ok(());
        }

        match message.kind {
            MessageKind::RequestVote | MessageKind::RequestPreVote => {
                self.handle_vote_request(&message);
                Ok(())
            }
            _ => match self.role {
                Role::Leader => self.step_leader(message),
                Role::Candidate | Role::PreCandidate => {
                    self.step_candidate(message);
                    Ok(())
                }
                Role::Follower => self.step_follower(message),
            },
        }
    }

    fn step_leader(&mut self, message: Message) -> Result<(), Error> {
        match message.kind {
            MessageKind::Propose => self.propose(message.entries),
            MessageKind::ReadIndex => self.read_index(message.from, message.context),
            MessageKind::AppendResponse => {
                self.handle_append_response(&message);
                Ok(())
            }
            MessageKind::HeartbeatResponse => {
                self.handle_heartbeat_response(&message);
                Ok(())
            }
            MessageKind::TransferLeader => {
                self.transfer_leader(message.index);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, message: Message) {
        match message.kind {
            MessageKind::Append => {
                self.become_follower(message.term, Some(message.from));
                self.handle_append(message);
            }
            MessageKind::Heartbeat => {
                self.become_follower(message.term, Some(message.from));
                self.handle_heartbeat(&message);
            }
            MessageKind::Snapshot => {
                self.become_follower(message.term, Some(message.from));
                self.handle_snapshot(message);
            }
            MessageKind::RequestPreVoteResponse | MessageKind::RequestVoteResponse => {
                let expected = if self.role == Role::PreCandidate {
                    MessageKind::RequestPreVoteResponse
                } else {
                    MessageKind::RequestVoteResponse
                };
                if message.kind != expected {
                    return;
                }
                match self.tracker.record_vote(message.from, !message.reject) {
                    VoteResult::Won => {
                        if self.role == Role::PreCandidate {
                            self.campaign(Campaign::Election);
                        } else {
                            self.become_leader();
                            self.broadcast_append();
                        }
                    }
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, message: Message) -> Result<(), Error> {
        match message.kind {
            MessageKind::Append => {
                self.election_elapsed = 0;
                self.leader = Some(message.from);
                self.handle_append(message);
            }
            MessageKind::Heartbeat => {
                self.election_elapsed = 0;
                self.leader = Some(message.from);
                self.handle_heartbeat(&message);
            }
            MessageKind::Snapshot => {
                self.election_elapsed = 0;
                self.leader = Some(message.from);
                self.handle_snapshot(message);
            }
            MessageKind::TimeoutNow => self.hup(true),
            MessageKind::TransferLeader => {
                if let Some(leader) = self.leader {
                    let mut forward = Message::new(MessageKind::TransferLeader, leader);
                    forward.index = message.index;
                    self.send(forward);
                }
            }
            MessageKind::ReadIndexResponse => self.read_states.push(ReadState {
                index: message.index,
                context: message.context,
            }),
            // A forwarded proposal or read that reached a non-leader is dropped: forwarding
            // it again could loop, and its originator times out and retries.
            MessageKind::Propose | MessageKind::ReadIndex => return Err(Error::NoLeader),
            _ => {}
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Follower side of replication.

    fn handle_append(&mut self, message: Message) {
        let mut response = Message::new(MessageKind::AppendResponse, message.from);
        if message.index < self.log.committed {
            response.index = self.log.committed;
            self.send(response);
            return;
        }
        let unstable = self.log.unstable_size_bytes();
        let incoming: u64 = message.entries.iter().map(Entry::size_bytes).sum();
        if unstable > 0 && unstable + incoming > self.config.max_unstable_entries_bytes {
            // The runtime is behind on persisting; drop and let the leader retry.
            return;
        }
        let (prev_index, prev_term) = (message.index, message.log_term);
        if let Some(last) =
            self.log
                .maybe_append(prev_index, prev_term, message.commit, message.entries)
        {
            response.index = last;
        } else {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            response.index = prev_index;
            response.reject = true;
            response.reject_hint = hint_index;
            response.log_term = hint_term;
        }
        self.send(response);
    }

    fn handle_heartbeat(&mut self, message: &Message) {
        self.log.commit_to(message.commit);
        let mut response = Message::new(MessageKind::HeartbeatResponse, message.from);
        response.context.clone_from(&message.context);
        self.send(response);
    }

    fn handle_snapshot(&mut self, message: Message) {
        let Some(snapshot) = message.snapshot else {
            return;
        };
        let mut response = Message::new(MessageKind::AppendResponse, message.from);
        let index = snapshot.metadata.index;
        let term = snapshot.metadata.term;
        if index <= self.log.committed {
            response.index = self.log.committed;
        } else if self.log.match_term(index, term) {
            // We already hold the snapshot's last entry: just learn that it is committed.
            // Answer with that index, not our last one: entries after it may still conflict
            // with the leader's, and claiming them would let the leader count them.
            self.log.commit_to(index);
            response.index = index;
        } else {
            self.tracker
                .restore(&snapshot.metadata.conf_state, index + 1);
            self.log.restore(snapshot);
            response.index = index;
        }
        self.send(response);
    }

    // ---------------------------------------------------------------------------------------
    // Leader side of replication.

    /// Sends entries (or a snapshot) to `to` if its progress allows; returns whether a
    /// message went out.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(progress) = self.tracker.progress.get(&to) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next;
        let prev_term = self.log.term(next - 1);
        let entries = self
            .log
            .entries_from(next, self.config.max_size_per_message_bytes);
        match (prev_term, entries) {
            (Ok(prev_term), Ok(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                let last = entries.last().map(|e| e.index);
                let mut message = Message::new(MessageKind::Append, to);
                message.index = next - 1;
                message.log_term = prev_term;
                message.entries = entries;
                message.commit = self.log.committed;
                self.send(message);
                self.tracker
                    .progress
                    .get_mut(&to)
                    .expect("checked above")
                    .sent_append(last);
                true
            }
            (Err(StorageError::Compacted), _) | (_, Err(StorageError::Compacted)) => {
                self.send_snapshot(to)
            }
            (Err(error), _) | (_, Err(error)) => {
                unreachable!("progress of {to} points past the log (next {next}): {error}")
            }
        }
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let progress = self.tracker.progress.get(&to).expect("caller checked");
        if !progress.recent_active {
            return false;
        }
        // Temporarily unavailable: the next heartbeat response retries.
        let Ok(snapshot) = self.log.snapshot() else {
            return false;
        };
        let index = snapshot.metadata.index;
        assert!(index > 0, "the log is compacted but the snapshot is empty");
        let mut message = Message::new(MessageKind::Snapshot, to);
        message.snapshot = Some(snapshot);
        self.send(message);
        self.tracker
            .progress
            .get_mut(&to)
            .expect("caller checked")
            .become_snapshot(index);
        true
    }

    fn send_append(&mut self, to: NodeId) {
        self.maybe_send_append(to, true);
    }

    pub fn broadcast_append(&mut self) {
        let own_id = self.id;
        let peers: Vec<NodeId> = self.tracker.progress.keys().copied().collect();
        for peer in peers.into_iter().filter(|&p| p != own_id) {
            self.send_append(peer);
        }
    }

    fn broadcast_heartbeat(&mut self, context: &[u8]) {
        let peers: Vec<(NodeId, u64)> = self
            .tracker
            .progress
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, p)| (id, p.matched))
            .collect();
        for (peer, matched) in peers {
            let mut message = Message::new(MessageKind::Heartbeat, peer);
            // Never tell a follower to commit past what it is known to hold.
            message.commit = matched.min(self.log.committed);
            message.context = context.to_vec();
            self.send(message);
        }
    }

    fn handle_append_response(&mut self, message: &Message) {
        let from = message.from;
        let last_index = self.log.last_index();
        let first_index = self.log.first_index();
        let Some(progress) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if message.reject {
            let hint = if message.log_term > 0 {
                self.log
                    .find_conflict_by_term(message.reject_hint, message.log_term)
                    .0
            } else {
                message.reject_hint
            };
            let progress = self.tracker.progress.get_mut(&from).expect("present");
            if progress.maybe_decrease_to(message.index, hint) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from);
            }
            return;
        }
        let was_paused = progress.is_paused();
        if !progress.maybe_update(message.index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot if progress.matched + 1 >= first_index => {
                progress.become_probe();
                progress.become_replicate();
            }
            ProgressState::Replicate => progress.inflights.free_up_to(message.index),
            ProgressState::Snapshot => {}
        }
        let matched = progress.matched;
        if self.maybe_commit() {
            self.broadcast_append();
        } else if was_paused {
            self.send_append(from);
        }
        // Fill the window: the follower may take more than one message's worth.
        let mut messages_budget = self.config.max_inflight_messages;
        while messages_budget > 0 && self.maybe_send_append(from, false) {
            messages_budget -= 1;
        }
        if self.lead_transferee == Some(from) && matched == last_index {
            self.send(Message::new(MessageKind::TimeoutNow, from));
        }
    }

    fn handle_heartbeat_response(&mut self, message: &Message) {
        let from = message.from;
        let last_index = self.log.last_index();
        let Some(progress) = self.tracker.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.probe_sent = false;
        // If every append in the window was lost, nothing would ever be acknowledged; the
        // heartbeat proves the follower is there, so free a slot and resend.
        if progress.state == ProgressState::Replicate && progress.inflights.full() {
            progress.inflights.free_first_one();
        }
        if progress.matched < last_index || progress.state == ProgressState::Probe {
            self.send_append(from);
        }
        if message.context.is_empty() {
            return;
        }
        let confirmed = match self.read_only.ack(from, &message.context) {
            Some(acks) => self.tracker.is_quorum(acks),
            None => false,
        };
        if confirmed {
            for request in self.read_only.release_through(&message.context) {
                self.answer_read(request.from, request.index, request.context);
            }
        }
    }

    /// Advances the commit index to what a quorum has matched, if that is an entry of this
    /// term. Returns whether it moved.
    pub fn maybe_commit(&mut self) -> bool {
        let quorum_index = self.tracker.committed_index();
        if !self.log.maybe_commit(quorum_index, self.term) {
            return false;
        }
        // The first commit of the term: reads held back until now can be served. Take the
        // queue first, so each read is retried exactly once whatever read_index decides.
        if self.log.term(self.log.committed) == Ok(self.term) {
            for (from, context) in std::mem::take(&mut self.deferred_reads) {
                // The queue was bounded when they were deferred; an overflow here drops the
                // read, and its originator retries.
                let _ = self.read_index(from, context);
            }
        }
        true
    }

    /// The runtime persisted the log up to the current unstable offset.
    pub fn on_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let Some(persisted) = self.log.persisted_last_index() else {
            return;
        };
        let updated = self
            .tracker
            .progress
            .get_mut(&self.id)
            .is_some_and(|own| own.maybe_update(persisted));
        if updated && self.maybe_commit() {
            self.broadcast_append();
        }
    }

    // ---------------------------------------------------------------------------------------
    // Client requests.

    /// Appends proposals if this node leads; forwards them if it follows a known leader.
    pub fn propose(&mut self, mut entries: Vec<Entry>) -> Result<(), Error> {
        if entries.len() > self.config.max_proposal_entries {
            return Err(Error::ProposalBatchTooLarge);
        }
        match self.role {
            Role::Leader => {}
            Role::Follower => {
                let Some(leader) = self.leader else {
                    return Err(Error::NoLeader);
                };
                let mut forward = Message::new(MessageKind::Propose, leader);
                forward.entries = entries;
                self.send(forward);
                return Ok(());
            }
            Role::Candidate | Role::PreCandidate => return Err(Error::NoLeader),
        }
        if !self.tracker.progress.contains_key(&self.id) {
            return Err(Error::NotAMember);
        }
        if self.lead_transferee.is_some() {
            return Err(Error::LeaderTransferInProgress);
        }
        let mut conf_changes = 0;
        for entry in &entries {
            if entry.kind == EntryKind::ConfChange {
                conf_changes += 1;
                if conf_changes > 1 || self.pending_conf_index > self.log.applied {
                    return Err(Error::ConfChangePending);
                }
                let change = ConfChange::decode(&entry.data)?;
                self.tracker.validate(&change)?;
            }
        }
        let size: u64 = entries.iter().map(Entry::size_bytes).sum();
        if self.uncommitted_size_bytes > 0
            && self.uncommitted_size_bytes + size > self.config.max_uncommitted_entries_bytes
        {
            return Err(Error::UncommittedLogFull);
        }
        let mut index = self.log.last_index();
        for entry in &mut entries {
            index += 1;
            entry.index = index;
            entry.term = self.term;
            if entry.kind == EntryKind::ConfChange {
                self.pending_conf_index = index;
            }
        }
        self.uncommitted_size_bytes += size;
        self.log.append(entries);
        self.broadcast_pending = true;
        Ok(())
    }

    /// Entries of `size_bytes` total were committed and handed out for applying.
    pub fn reduce_uncommitted_size(&mut self, size_bytes: u64) {
        self.uncommitted_size_bytes = self.uncommitted_size_bytes.saturating_sub(size_bytes);
    }

    /// A linearizable read: the leader records its commit index and confirms it still leads
    /// with a heartbeat round before answering; a follower forwards the request.
    pub fn read_index(&mut self, from: NodeId, context: Vec<u8>) -> Result<(), Error> {
        if context.is_empty() {
            return Err(Error::EmptyReadContext);
        }
        match self.role {
            Role::Leader => {}
            Role::Follower if from == self.id => {
                let Some(leader) = self.leader else {
                    return Err(Error::NoLeader);
                };
                let mut forward = Message::new(MessageKind::ReadIndex, leader);
                forward.context = context;
                self.send(forward);
                return Ok(());
            }
            _ => return Err(Error::NoLeader),
        }
        if self.log.term(self.log.committed) != Ok(self.term) {
            // Until an entry of this term commits, this leader's commit index may be behind
            // what its predecessor acknowledged; answering now could return a stale index.
            if self.deferred_reads.len() + self.read_only.len()
                >= self.config.max_pending_read_index
            {
                return Err(Error::ReadIndexQueueFull);
            }
            self.deferred_reads.push_back((from, context));
            return Ok(());
        }
        let index = self.log.committed;
        if self.tracker.voters.len() == 1 && self.tracker.is_voter(self.id) {
            self.answer_read(from, index, context);
            return Ok(());
        }
        self.read_only.add(index, from, context.clone())?;
        if let Some(acks) = self.read_only.ack(self.id, &context) {
            debug_assert!(
                !self.tracker.is_quorum(acks),
                "multi-voter quorum needs peers"
            );
        }
        self.broadcast_heartbeat(&context);
        Ok(())
    }

    fn answer_read(&mut self, from: NodeId, index: u64, context: Vec<u8>) {
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            let mut response = Message::new(MessageKind::ReadIndexResponse, from);
            response.index = index;
            response.context = context;
            self.send(response);
        }
    }

    /// Leader: catch `target` up, then tell it to campaign. Follower: forward to the leader.
    pub fn transfer_leader(&mut self, target: NodeId) {
        if self.role != Role::Leader {
            if let Some(leader) = self.leader {
                let mut forward = Message::new(MessageKind::TransferLeader, leader);
                forward.index = target;
                self.send(forward);
            }
            return;
        }
        if target == self.id || !self.tracker.is_voter(target) {
            return;
        }
        if self.lead_transferee == Some(target) {
            return;
        }
        // A newer request replaces an older one.
        self.lead_transferee = Some(target);
        self.election_elapsed = 0;
        let caught_up = self
            .tracker
            .progress
            .get(&target)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(Message::new(MessageKind::TimeoutNow, target));
        } else {
            self.send_append(target);
        }
    }

    /// The runtime finished (or failed) sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.tracker.progress.get_mut(&to) else {
            return;
        };
        if progress.state != ProgressState::Snapshot {
            return;
        }
        if !success {
            progress.pending_snapshot = 0;
        }
        progress.become_probe();
        // Wait for the next heartbeat response before probing, so a failing transfer is not
        // retried in a tight loop.
        progress.probe_sent = true;
    }

    /// The transport could not reach `to`: stop streaming to it optimistically.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.tracker.progress.get_mut(&to) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    /// Applies a committed membership change (called by the runtime when it applies the
    /// entry) and returns the new configuration.
    pub fn apply_conf_change(&mut self, change: &ConfChange) -> ConfState {
        self.tracker.apply(change, self.log.last_index() + 1);
        if change.kind == ConfChangeKind::RemoveNode && self.lead_transferee == Some(change.node_id)
        {
            self.lead_transferee = None;
        }
        if self.role == Role::Leader {
            if self.tracker.is_voter(self.id) {
                // The quorum changed (a lagging voter left, or a caught-up one joined).
                if self.maybe_commit() {
                    self.broadcast_append();
                } else {
                    self.broadcast_pending = true;
                }
            } else {
                // Removed: share the commit index one last time, then stop leading.
                self.broadcast_append();
                self.become_follower(self.term, None);
            }
        }
        self.conf_state()
    }
}
