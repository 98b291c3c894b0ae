//! A deterministic cluster of `RawNode<MemStorage>`s on a simulated network, with a checker
//! that asserts Raft's safety properties after every step.
//!
//! Determinism: every random choice comes from one `SplitMix64` seeded by the test, nothing
//! reads a clock or iterates a hash map, so a seed replays exactly.
//!
//! The "runtime" here follows the Ready contract literally: persist (to the node's
//! `MemStorage`), send, apply, advance, in one step. A crash drops the `RawNode` and keeps
//! only its `MemStorage`, so whatever had not gone through a Ready is lost, and the volatile
//! state machine restarts from the storage's snapshot.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Entry, EntryKind, MemStorage, Message,
    MessageKind, NodeId, RawNode, Role, SnapshotStatus, SplitMix64, Storage,
};

/// Logical time: a tick is `SUBSTEPS_PER_TICK` network sub-steps, so a round trip usually
/// fits in a fraction of a heartbeat, as on a real network.
pub const SUBSTEPS_PER_TICK: u64 = 10;

/// How the simulated network misbehaves. Probabilities are per mille.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Delays are uniform in `0..=max_delay_substeps`.
    pub max_delay_substeps: u64,
    /// Probability that a node's pending Ready is processed at the end of a sub-step (so
    /// crashes sometimes catch unpersisted state). 1000 = always, immediately.
    pub ready_per_mille: u64,
}

impl Faults {
    pub fn none() -> Self {
        Self {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            max_delay_substeps: 0,
            ready_per_mille: 1000,
        }
    }
}

struct Flight {
    deliver_at: u64,
    sequence: u64,
    message: Message,
}

/// The hash chain over a log: `chain(i) = mix(chain(i - 1), entry i)`. Two logs agree up to
/// `i` exactly when their chains at `i` are equal, so comparing one number checks a prefix.
pub fn chain(previous: u64, entry: &Entry) -> u64 {
    fn mix(mut value: u64) -> u64 {
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }
    let mut hash = mix(previous ^ entry.index);
    hash = mix(hash ^ entry.term);
    hash = mix(hash ^ u64::from(entry.kind == EntryKind::ConfChange));
    for chunk in entry.data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = mix(hash ^ u64::from_le_bytes(word));
    }
    mix(hash ^ entry.data.len() as u64)
}

fn snapshot_chain(data: &[u8]) -> u64 {
    if data.is_empty() {
        return 0;
    }
    u64::from_le_bytes(data.try_into().expect("snapshot data is a chain value"))
}

pub struct SimNode {
    pub id: NodeId,
    pub raw: Option<RawNode<MemStorage>>,
    /// Holds the storage while the node is down.
    crashed_storage: Option<MemStorage>,
    pub config: Config,
    /// The volatile state machine: how far it applied and the chain at that point.
    pub applied_index: u64,
    pub applied_chain: u64,
    /// Application payloads applied since the last restart, with their index.
    pub applied_payloads: Vec<(u64, Vec<u8>)>,
    pub read_states: Vec<(u64, Vec<u8>)>,
    /// Chain values of the persisted log, starting at `persisted_base` (the snapshot).
    persisted_base: u64,
    persisted_chains: Vec<u64>,
    observed_commit: u64,
    /// (term, role, leader) at the last observation, for tracing.
    observed_roles: (u64, Role, Option<NodeId>),
    pub restarts: u64,
}

impl SimNode {
    pub fn raw(&self) -> &RawNode<MemStorage> {
        self.raw.as_ref().expect("node is up")
    }

    pub fn raw_mut(&mut self) -> &mut RawNode<MemStorage> {
        self.raw.as_mut().expect("node is up")
    }

    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    pub fn role(&self) -> Option<Role> {
        self.raw.as_ref().map(|r| r.soft_state().role)
    }

    pub fn term(&self) -> u64 {
        self.raw.as_ref().map_or(0, |r| r.hard_state().term)
    }

    pub fn commit(&self) -> u64 {
        self.raw.as_ref().map_or(0, |r| r.hard_state().commit)
    }

    fn reset_persisted_chains(&mut self, base_index: u64, base_chain: u64) {
        self.persisted_base = base_index;
        self.persisted_chains = vec![base_chain];
    }
}

/// Safety properties, checked as the cluster runs.
#[derive(Default)]
pub struct Checker {
    pub seed: u64,
    /// Every (term, leader) ever observed.
    pub leaders: BTreeMap<u64, NodeId>,
    /// Terms whose leader has been checked for leader completeness.
    checked_leader_terms: BTreeSet<u64>,
    /// (index, term) → chain, from every persisted log.
    log_chains: HashMap<(u64, u64), u64>,
    /// index → term of every entry any node has seen committed.
    committed_terms: BTreeMap<u64, u64>,
    pub max_commit: u64,
    /// index → state-machine chain after applying it, from every node.
    applied_chains: HashMap<u64, u64>,
    /// The highest index any node has applied: every write up to it is acknowledged.
    pub max_applied: u64,
    /// Read context → the highest applied index when the read was issued.
    pending_reads: HashMap<Vec<u8>, u64>,
    pub reads_answered: u64,
    pub payload_index: HashMap<Vec<u8>, u64>,
}

impl Checker {
    fn check_log_chain(&mut self, node: NodeId, index: u64, term: u64, value: u64) {
        let known = *self.log_chains.entry((index, term)).or_insert(value);
        assert_eq!(
            known, value,
            "seed {}: log matching violated on node {node}: entry ({index}, term {term}) has a \
             different prefix than on another node",
            self.seed
        );
    }

    fn check_applied(&mut self, node: NodeId, index: u64, value: u64) {
        let known = *self.applied_chains.entry(index).or_insert(value);
        assert_eq!(
            known, value,
            "seed {}: state machine safety violated: node {node} applied a different entry (or \
             history) at index {index}",
            self.seed
        );
        self.max_applied = self.max_applied.max(index);
    }
}

pub struct ClusterOptions {
    pub voters: u64,
    /// Extra nodes that start empty and can be added by membership changes.
    pub spares: u64,
    pub seed: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub max_inflight_messages: usize,
    pub max_size_per_message_bytes: u64,
}

impl ClusterOptions {
    pub fn new(voters: u64) -> Self {
        Self {
            voters,
            spares: 0,
            seed: 0,
            pre_vote: true,
            check_quorum: true,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_inflight_messages: 4,
            max_size_per_message_bytes: 256,
        }
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, SimNode>,
    in_flight: Vec<Flight>,
    next_sequence: u64,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub faults: Faults,
    pub rng: SplitMix64,
    pub checker: Checker,
    /// In sub-steps.
    pub now: u64,
    pub seed: u64,
    next_read: u64,
    /// Print role changes and faults to stderr (`KEEL_SIM_TRACE=1`).
    pub trace: bool,
    /// Nodes whose removal some node has applied.
    pub removed: BTreeSet<NodeId>,
    /// Stop removed nodes for good, as an operator would. Without check-quorum a removed node
    /// that never learns of its removal keeps timing out and disrupting the cluster with
    /// higher terms (a known Raft limitation that check-quorum's vote lease fixes).
    pub decommission_removed: bool,
    /// Every message sent, when `record_messages` is set (for tests that count them).
    pub record_messages: bool,
    /// How often interesting things happened, to confirm the random runs cover them.
    pub coverage: BTreeMap<&'static str, u64>,
    pub sent: Vec<Message>,
    /// Compact a node's log once it has applied this many entries past its snapshot.
    pub compact_after_entries: u64,
}

impl Cluster {
    pub fn new(options: &ClusterOptions) -> Self {
        let voters: Vec<NodeId> = (1..=options.voters).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=options.voters + options.spares {
            let mut config = Config::new(id);
            config.random_seed = options.seed;
            config.pre_vote = options.pre_vote;
            config.check_quorum = options.check_quorum;
            config.election_ticks = options.election_ticks;
            config.heartbeat_ticks = options.heartbeat_ticks;
            config.max_inflight_messages = options.max_inflight_messages;
            config.max_size_per_message_bytes = options.max_size_per_message_bytes;
            config.max_uncommitted_entries_bytes = 64 * 1024;
            config.max_committed_bytes_per_ready = 4 * 1024;
            config.max_pending_read_index = 64;
            let storage = if id <= options.voters {
                MemStorage::new_bootstrapped(ConfState {
                    voters: voters.clone(),
                    learners: vec![],
                })
            } else {
                MemStorage::new()
            };
            let snapshot = storage.snapshot().expect("memory");
            let mut node = SimNode {
                id,
                raw: None,
                crashed_storage: Some(storage),
                config,
                applied_index: 0,
                applied_chain: 0,
                applied_payloads: Vec::new(),
                read_states: Vec::new(),
                persisted_base: 0,
                persisted_chains: Vec::new(),
                observed_commit: 0,
                observed_roles: (0, Role::Follower, None),
                restarts: 0,
            };
            node.reset_persisted_chains(snapshot.metadata.index, snapshot_chain(&snapshot.data));
            nodes.insert(id, node);
        }
        let mut cluster = Self {
            nodes,
            in_flight: Vec::new(),
            next_sequence: 0,
            blocked: BTreeSet::new(),
            faults: Faults::none(),
            rng: SplitMix64::new(options.seed ^ 0x5EED),
            checker: Checker {
                seed: options.seed,
                ..Checker::default()
            },
            now: 0,
            seed: options.seed,
            next_read: 0,
            trace: std::env::var_os("KEEL_SIM_TRACE").is_some(),
            removed: BTreeSet::new(),
            record_messages: false,
            coverage: BTreeMap::new(),
            sent: Vec::new(),
            decommission_removed: !options.check_quorum,
            compact_after_entries: u64::MAX,
        };
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.start(id);
        }
        cluster
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("known node")
    }

    // -----------------------------------------------------------------------------------
    // Crash and restart.

    fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let storage = node.crashed_storage.take().expect("node is down");
        let snapshot = storage.snapshot().expect("memory");
        let mut config = node.config.clone();
        config.applied = snapshot.metadata.index;
        // A restarted node draws new timeouts, as a real one would.
        config.random_seed = config.random_seed.wrapping_add(node.restarts);
        let raw = RawNode::new(&config, storage)
            .unwrap_or_else(|e| panic!("seed {}: node {id} failed to restart: {e}", self.seed));
        node.applied_index = snapshot.metadata.index;
        node.applied_chain = snapshot_chain(&snapshot.data);
        node.applied_payloads.clear();
        node.observed_commit = raw.hard_state().commit;
        node.raw = Some(raw);
        self.observe(id);
    }

    /// Power cut: everything not yet persisted through a Ready is lost.
    pub fn crash(&mut self, id: NodeId) {
        if self.trace {
            eprintln!("t={} node {id}: crash", self.now);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(raw) = node.raw.take() {
            let lost = raw.has_ready();
            node.crashed_storage = Some(raw.into_storage());
            node.restarts += 1;
            *self.coverage.entry("crashes").or_default() += 1;
            if lost {
                *self
                    .coverage
                    .entry("crashes losing unpersisted state")
                    .or_default() += 1;
            }
        }
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.decommission_removed && self.removed.contains(&id) {
            return;
        }
        if !self.nodes[&id].is_up() {
            if self.trace {
                eprintln!("t={} node {id}: restart", self.now);
            }
            self.start(id);
        }
    }

    // -----------------------------------------------------------------------------------
    // The runtime side of the Ready contract.

    /// Persist, send, apply, advance. Returns whether there was anything to do.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let seed = self.seed;
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        if !raw.has_ready() {
            return false;
        }
        let ready = raw.ready();

        // 1. Persist.
        let mut persisted_checks = Vec::new();
        if let Some(snapshot) = &ready.snapshot {
            raw.storage_mut()
                .apply_snapshot(snapshot.clone())
                .unwrap_or_else(|e| panic!("seed {seed}: node {id} snapshot: {e}"));
            let value = snapshot_chain(&snapshot.data);
            node.reset_persisted_chains(snapshot.metadata.index, value);
            persisted_checks.push((snapshot.metadata.index, snapshot.metadata.term, value));
        }
        if let Some(first) = ready.entries.first() {
            let raw = node.raw.as_mut().expect("up");
            raw.storage_mut().append(&ready.entries);
            let keep = usize::try_from(first.index - node.persisted_base).expect("fits");
            node.persisted_chains.truncate(keep);
            for entry in &ready.entries {
                let value = chain(*node.persisted_chains.last().expect("base"), entry);
                node.persisted_chains.push(value);
                persisted_checks.push((entry.index, entry.term, value));
            }
        }
        let raw = node.raw.as_mut().expect("up");
        if let Some(hard_state) = &ready.hard_state {
            let previous = raw.storage().hard_state().commit;
            assert!(
                hard_state.commit >= previous,
                "seed {seed}: node {id} persisted commit went back from {previous} to {}",
                hard_state.commit
            );
            raw.storage_mut().set_hard_state(hard_state.clone());
        }

        // 3. Apply (the messages are queued below, after this borrow ends; nothing here
        // depends on them).
        let mut applied_checks = Vec::new();
        if let Some(snapshot) = &ready.snapshot {
            node.applied_index = snapshot.metadata.index;
            node.applied_chain = snapshot_chain(&snapshot.data);
            applied_checks.push((node.applied_index, node.applied_chain));
        }
        let mut payloads = Vec::new();
        let mut removed = Vec::new();
        let mut applied_conf_changes = 0;
        let installed_snapshot = ready.snapshot.is_some();
        for entry in &ready.committed_entries {
            assert_eq!(
                entry.index,
                node.applied_index + 1,
                "seed {seed}: node {id} applies out of order"
            );
            node.applied_index = entry.index;
            node.applied_chain = chain(node.applied_chain, entry);
            applied_checks.push((entry.index, node.applied_chain));
            match entry.kind {
                EntryKind::ConfChange => {
                    let change = ConfChange::decode(&entry.data)
                        .unwrap_or_else(|e| panic!("seed {seed}: bad conf change: {e}"));
                    node.raw_mut().apply_conf_change(&change);
                    applied_conf_changes += 1;
                    if change.kind == ConfChangeKind::RemoveNode {
                        removed.push(change.node_id);
                    }
                }
                EntryKind::Normal if !entry.data.is_empty() => {
                    node.applied_payloads
                        .push((entry.index, entry.data.clone()));
                    payloads.push((entry.index, entry.data.clone()));
                }
                EntryKind::Normal => {}
            }
        }
        let mut read_checks = Vec::new();
        for read in &ready.read_states {
            node.read_states.push((read.index, read.context.clone()));
            read_checks.push((read.index, read.context.clone()));
        }
        node.raw_mut().advance();

        for (index, term, value) in persisted_checks {
            self.checker.check_log_chain(id, index, term, value);
        }
        for (index, value) in applied_checks {
            self.checker.check_applied(id, index, value);
        }
        for (index, payload) in payloads {
            // A duplicated forwarded proposal is appended twice (Raft is at-least-once;
            // clients deduplicate), so keep the first index.
            self.checker.payload_index.entry(payload).or_insert(index);
        }
        for (index, context) in read_checks {
            self.check_read(id, index, &context);
        }
        // 2. Send (after persisting; queued last only for borrow reasons).
        for message in ready.messages {
            self.send(message);
        }
        self.maybe_compact(id);
        self.observe(id);
        *self.coverage.entry("conf changes applied").or_default() += applied_conf_changes;
        if installed_snapshot {
            *self.coverage.entry("snapshots installed").or_default() += 1;
        }
        for gone in removed {
            self.removed.insert(gone);
            if self.decommission_removed {
                self.crash(gone);
            }
        }
        true
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let threshold = self.compact_after_entries;
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        let first = raw.storage().first_index().expect("memory");
        if raw.has_ready() || node.applied_index < first.saturating_add(threshold) {
            return;
        }
        // The configuration now is the one at the applied index: every conf change up to it
        // went through apply_conf_change, and nothing newer has been applied.
        let conf_state = raw.conf_state();
        let data = node.applied_chain.to_le_bytes().to_vec();
        let index = node.applied_index;
        raw.storage_mut()
            .compact(index, conf_state, data)
            .unwrap_or_else(|e| panic!("seed {}: compact {index}: {e}", self.seed));
        let drop = usize::try_from(index - node.persisted_base).expect("fits");
        node.persisted_chains.drain(..drop);
        node.persisted_base = index;
    }

    fn check_read(&mut self, id: NodeId, index: u64, context: &[u8]) {
        let seed = self.seed;
        let Some(required) = self.checker.pending_reads.remove(context) else {
            // Answered twice (a duplicated message) or not ours: the first answer counted.
            return;
        };
        assert!(
            index >= required,
            "seed {seed}: ReadIndex on node {id} answered {index}, but index {required} was \
             already applied (acknowledged) when the read started: not linearizable"
        );
        assert!(
            index <= self.checker.max_commit.max(self.max_commit_now()),
            "seed {seed}: ReadIndex answered {index}, beyond any commit index"
        );
        self.checker.reads_answered += 1;
        *self.coverage.entry("reads answered").or_default() += 1;
    }

    fn max_commit_now(&self) -> u64 {
        self.nodes.values().map(SimNode::commit).max().unwrap_or(0)
    }

    // -----------------------------------------------------------------------------------
    // Safety checks on one node after it changed.

    fn observe(&mut self, id: NodeId) {
        let seed = self.seed;
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raw) = node.raw.as_ref() else {
            return;
        };
        let hard = raw.hard_state();
        let soft = raw.soft_state();
        let roles = (hard.term, soft.role, soft.leader);
        if self.trace && roles != node.observed_roles {
            eprintln!(
                "t={} node {id}: term {} {:?} leader {:?} commit {} last {}",
                self.now,
                hard.term,
                soft.role,
                soft.leader,
                hard.commit,
                raw.status().last_index
            );
        }
        let was_leader = node.observed_roles.1 == Role::Leader;
        node.observed_roles = roles;
        assert!(
            hard.commit >= node.observed_commit,
            "seed {seed}: node {id} commit index went back from {} to {}",
            node.observed_commit,
            hard.commit
        );
        if hard.commit > node.observed_commit {
            for index in node.observed_commit + 1..=hard.commit {
                if let Some(term) = raw.log_term(index) {
                    let known = *self.checker.committed_terms.entry(index).or_insert(term);
                    assert_eq!(
                        known, term,
                        "seed {seed}: node {id} committed term {term} at index {index}, \
                         another node committed term {known} there"
                    );
                }
            }
            node.observed_commit = hard.commit;
            self.checker.max_commit = self.checker.max_commit.max(hard.commit);
        }
        if soft.role == Role::Leader && !was_leader {
            *self.coverage.entry("leaders elected").or_default() += 1;
        }
        if soft.role == Role::Leader {
            let known = *self.checker.leaders.entry(hard.term).or_insert(id);
            assert_eq!(
                known, id,
                "seed {seed}: two leaders in term {}: {known} and {id}",
                hard.term
            );
            if known == id && !self.checker.leaders_checked(hard.term) {
                self.check_leader_completeness(id, hard.term);
            }
        }
    }

    fn check_leader_completeness(&mut self, id: NodeId, term: u64) {
        let seed = self.seed;
        let raw = self.nodes[&id].raw();
        let status = raw.status();
        for (&index, &committed_term) in self.checker.committed_terms.range(status.first_index..) {
            assert!(
                index <= status.last_index,
                "seed {seed}: leader {id} of term {term} lacks committed index {index} \
                 (its log ends at {})",
                status.last_index
            );
            assert_eq!(
                raw.log_term(index),
                Some(committed_term),
                "seed {seed}: leader {id} of term {term} has a different entry at committed \
                 index {index}"
            );
        }
        self.checker.mark_leader_checked(term);
    }

    // -----------------------------------------------------------------------------------
    // Network.

    pub fn send(&mut self, message: Message) {
        if self.record_messages {
            self.sent.push(message.clone());
        }
        let delay = if self.faults.max_delay_substeps == 0 {
            0
        } else {
            self.rng.below(self.faults.max_delay_substeps + 1)
        };
        let copies = if self.rng.chance(self.faults.duplicate_per_mille, 1000) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            self.next_sequence += 1;
            self.in_flight.push(Flight {
                deliver_at: self.now + delay + copy,
                sequence: self.next_sequence,
                message: message.clone(),
            });
        }
    }

    fn take_due(&mut self) -> Vec<Message> {
        let now = self.now;
        let mut due: Vec<Flight> = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].deliver_at <= now {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|f| (f.deliver_at, f.sequence));
        due.into_iter().map(|f| f.message).collect()
    }

    /// Delivers one message, applying partitions and loss; reports snapshot outcomes to the
    /// sender as a transport would.
    fn deliver(&mut self, message: Message) {
        let (from, to) = (message.from, message.to);
        let is_snapshot = message.kind == MessageKind::Snapshot;
        let lost = self.blocked.contains(&(from, to))
            || !self.nodes.get(&to).is_some_and(SimNode::is_up)
            || self.rng.chance(self.faults.drop_per_mille, 1000);
        if lost {
            if let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
                if is_snapshot {
                    sender.report_snapshot(to, SnapshotStatus::Failure);
                } else if self.rng.chance(1, 10) {
                    sender.report_unreachable(to);
                }
            }
            return;
        }
        if message.kind == MessageKind::TimeoutNow {
            *self
                .coverage
                .entry("transfers (TimeoutNow delivered)")
                .or_default() += 1;
        }
        let receiver = self.nodes.get_mut(&to).expect("checked").raw_mut();
        // Errors are dropped forwarded requests; a real runtime would log them.
        let _ = receiver.step(message);
        self.observe(to);
        if is_snapshot {
            if let Some(sender) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
                sender.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
        if self.rng.chance(self.faults.ready_per_mille, 1000) {
            self.process_ready(to);
        }
    }

    /// One network sub-step: deliver what is due, then let nodes catch up on their Readies.
    pub fn substep(&mut self) {
        self.now += 1;
        for message in self.take_due() {
            self.deliver(message);
        }
        for id in self.ids() {
            if self.faults.ready_per_mille >= 1000
                || self.rng.chance(self.faults.ready_per_mille, 1000)
            {
                self.process_ready(id);
            }
        }
    }

    /// Ticks every live node once and runs the network for one tick's worth of sub-steps.
    pub fn tick(&mut self) {
        for id in self.ids() {
            if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                raw.tick();
                self.observe(id);
            }
        }
        for _ in 0..SUBSTEPS_PER_TICK {
            self.substep();
        }
    }

    pub fn ticks(&mut self, count: u64) {
        for _ in 0..count {
            self.tick();
        }
    }

    /// Delivers and processes until nothing is in flight and no node has work (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let busy = !self.in_flight.is_empty()
                || self
                    .nodes
                    .values()
                    .any(|n| n.raw.as_ref().is_some_and(RawNode::has_ready));
            if !busy {
                return;
            }
            self.substep();
        }
        panic!("seed {}: the cluster did not quiesce", self.seed);
    }

    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    pub fn heal_partitions(&mut self) {
        self.blocked.clear();
    }

    // -----------------------------------------------------------------------------------
    // Client operations.

    /// The leader with the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.role() == Some(Role::Leader))
            .max_by_key(|n| n.term())
            .map(|n| n.id)
    }

    pub fn campaign(&mut self, id: NodeId) {
        self.node_mut(id).raw_mut().campaign();
        self.observe(id);
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<(), keel_raft::Error> {
        let result = self.node_mut(id).raw_mut().propose(data.to_vec());
        self.observe(id);
        result
    }

    pub fn propose_conf_change(
        &mut self,
        id: NodeId,
        change: &ConfChange,
    ) -> Result<(), keel_raft::Error> {
        let result = self.node_mut(id).raw_mut().propose_conf_change(change);
        self.observe(id);
        result
    }

    /// Issues a ReadIndex with a fresh context and records what it must observe.
    pub fn read_index(&mut self, id: NodeId) -> Result<Vec<u8>, keel_raft::Error> {
        self.next_read += 1;
        let context = format!("read-{}", self.next_read).into_bytes();
        let required = self.checker.max_applied;
        self.node_mut(id).raw_mut().read_index(context.clone())?;
        self.checker.pending_reads.insert(context.clone(), required);
        self.observe(id);
        Ok(context)
    }

    pub fn transfer_leader(&mut self, id: NodeId, target: NodeId) {
        self.node_mut(id).raw_mut().transfer_leader(target);
        self.observe(id);
    }

    /// Whether `id` applied the payload (since its last restart or via a later snapshot).
    pub fn has_applied(&self, id: NodeId, payload: &[u8]) -> bool {
        match self.checker.payload_index.get(payload) {
            Some(&index) => self.nodes[&id].applied_index >= index,
            None => false,
        }
    }
}

impl Checker {
    fn leaders_checked(&self, term: u64) -> bool {
        self.checked_leader_terms.contains(&term)
    }

    fn mark_leader_checked(&mut self, term: u64) {
        self.checked_leader_terms.insert(term);
    }
}
