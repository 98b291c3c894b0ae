//! One test per Raft feature, each on a small cluster with a reliable, deterministic network
//! (the same harness and safety checker as the simulation). Each test opens with the bug it
//! guards against.

mod sim;

use keel_raft::{ConfChange, ConfChangeKind, Error, MessageKind, ProgressState, Role};
use sim::{Cluster, ClusterOptions};

fn cluster(voters: u64, adjust: impl FnOnce(&mut ClusterOptions)) -> Cluster {
    let mut options = ClusterOptions::new(voters);
    adjust(&mut options);
    Cluster::new(&options)
}

/// Campaigns on `id`, lets the cluster settle, and asserts `id` leads.
fn elect(cluster: &mut Cluster, id: u64) {
    cluster.campaign(id);
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(id), "node {id} should have won");
}

fn propose_and_settle(cluster: &mut Cluster, id: u64, count: u64, tag: &str) {
    for i in 0..count {
        cluster
            .propose(id, format!("{tag}-{i}").as_bytes())
            .expect("proposal accepted");
    }
    cluster.stabilize();
}

fn change(kind: ConfChangeKind, node_id: u64) -> ConfChange {
    ConfChange {
        kind,
        node_id,
        context: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Elections.

/// Guards against miscounted quorums: a candidate must win with a majority of the voters
/// that are up, and only then.
#[test]
fn election_needs_a_majority() {
    // (voters, nodes down, pre-vote, expected leader after node 1 campaigns).
    let cases: &[(u64, &[u64], bool, Option<u64>)] = &[
        (1, &[], true, Some(1)),
        (3, &[], true, Some(1)),
        (3, &[], false, Some(1)),
        (3, &[3], true, Some(1)),
        (3, &[2, 3], true, None),
        (3, &[2, 3], false, None),
        (5, &[4, 5], true, Some(1)),
        (5, &[3, 4, 5], false, None),
    ];
    for &(voters, down, pre_vote, expected) in cases {
        let mut cluster = cluster(voters, |o| o.pre_vote = pre_vote);
        for &id in down {
            cluster.crash(id);
        }
        cluster.campaign(1);
        cluster.stabilize();
        assert_eq!(
            cluster.leader(),
            expected,
            "voters {voters}, down {down:?}, pre-vote {pre_vote}"
        );
    }
}

/// Guards against electing a leader that lacks committed entries (the election
/// restriction): a node that missed writes cannot win.
#[test]
fn candidate_with_stale_log_loses() {
    let mut cluster = cluster(3, |o| {
        o.pre_vote = false;
        o.check_quorum = false;
    });
    elect(&mut cluster, 1);
    cluster.isolate(3);
    propose_and_settle(&mut cluster, 1, 3, "w");
    cluster.heal_partitions();
    cluster.campaign(3);
    cluster.stabilize();
    assert_ne!(cluster.node(3).role(), Some(Role::Leader));
    // Its higher term deposed the leader, but one of the up-to-date nodes wins next.
    for _ in 0..40 {
        if cluster.leader().is_some_and(|l| l != 3) {
            break;
        }
        cluster.tick();
    }
    let leader = cluster.leader().expect("a leader");
    assert_ne!(leader, 3);
}

/// Guards against a rejoining partitioned node forcing a healthy leader out: with pre-vote
/// its term does not grow while it cannot win, so nothing changes when it returns.
#[test]
fn pre_vote_does_not_disrupt_a_stable_leader() {
    // (pre-vote, leader 1 still leads in the same term after the partition heals).
    for (pre_vote, undisturbed) in [(true, true), (false, false)] {
        let mut cluster = cluster(3, |o| {
            o.pre_vote = pre_vote;
            o.check_quorum = false;
        });
        elect(&mut cluster, 1);
        let term = cluster.node(1).term();
        cluster.isolate(3);
        cluster.ticks(60);
        assert_eq!(
            cluster.node(3).term() == term,
            pre_vote,
            "isolated node's term (pre-vote {pre_vote})"
        );
        cluster.heal_partitions();
        cluster.ticks(25);
        let still = cluster.node(1).role() == Some(Role::Leader) && cluster.node(1).term() == term;
        assert_eq!(still, undisturbed, "pre-vote {pre_vote}");
    }
}

/// Guards against a leader cut off from its quorum serving forever (and accepting writes
/// that can never commit): with check-quorum it steps down within an election timeout.
#[test]
fn check_quorum_leader_steps_down_when_isolated() {
    for (check_quorum, steps_down) in [(true, true), (false, false)] {
        let mut cluster = cluster(3, |o| o.check_quorum = check_quorum);
        elect(&mut cluster, 1);
        cluster.isolate(1);
        cluster.ticks(25);
        assert_eq!(
            cluster.node(1).role() != Some(Role::Leader),
            steps_down,
            "check-quorum {check_quorum}"
        );
    }
}

/// Guards against a node that merely lost contact deposing a leader the others still hear:
/// with check-quorum, followers ignore vote requests within an election timeout of hearing
/// from their leader (the vote lease).
#[test]
fn vote_lease_ignores_candidates_while_the_leader_is_alive() {
    let mut cluster = cluster(3, |o| o.pre_vote = false);
    elect(&mut cluster, 1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster.ticks(25);
    assert!(
        cluster.node(3).term() > term,
        "node 3 campaigned in higher terms"
    );
    // Node 3's vote requests now reach the others, but nothing flows back to it.
    cluster.blocked.retain(|&(from, _)| from != 3);
    cluster.campaign(3);
    cluster.ticks(3);
    assert_eq!(cluster.node(1).role(), Some(Role::Leader));
    assert_eq!(cluster.node(1).term(), term);
    assert_eq!(cluster.node(2).term(), term);
}

// ---------------------------------------------------------------------------------------
// Replication.

/// Guards against slow log repair: a follower with a long conflicting tail must be brought
/// in line in a few round trips (one per conflicting term), not one entry at a time.
#[test]
fn conflicting_follower_is_repaired_with_few_rejections() {
    let mut cluster = cluster(3, |o| {
        o.check_quorum = false;
        o.max_size_per_message_bytes = 4096;
    });
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 2, "base");
    // Leader 1 is cut off and appends 30 entries nobody else gets.
    cluster.isolate(1);
    propose_and_settle(&mut cluster, 1, 30, "lost");
    // Node 2 takes over and commits different entries; then node 3 takes over, so the new
    // leader's first probe lands where node 1's log has a different term.
    elect(&mut cluster, 2);
    propose_and_settle(&mut cluster, 2, 5, "kept");
    elect(&mut cluster, 3);
    propose_and_settle(&mut cluster, 3, 1, "more");
    cluster.record_messages = true;
    cluster.heal_partitions();
    cluster.ticks(3);
    cluster.stabilize();
    let rejections = cluster
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::AppendResponse && m.reject && m.from == 1)
        .count();
    assert!(rejections >= 1, "the conflict was detected");
    assert!(
        rejections <= 3,
        "{rejections} rejections for one conflicting term"
    );
    let leader_last = cluster.node(3).raw().status().last_index;
    assert_eq!(cluster.node(1).raw().status().last_index, leader_last);
    assert_eq!(cluster.node(1).commit(), cluster.node(3).commit());
    assert!(!cluster.has_applied(1, b"lost-0") && cluster.has_applied(1, b"more-0"));
}

/// Guards against unbounded pipelining: a follower in the replicate state never has more
/// than `max_inflight_messages` appends outstanding, and batches respect the size limit.
#[test]
fn replication_is_pipelined_within_the_inflight_window() {
    let mut cluster = cluster(3, |o| {
        o.max_inflight_messages = 2;
        o.max_size_per_message_bytes = 64;
    });
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 1, "warm");
    cluster.isolate(3);
    cluster.blocked.remove(&(1, 3)); // messages reach node 3, its answers do not come back
    for i in 0..20 {
        cluster.propose(1, format!("entry-{i}").as_bytes()).unwrap();
    }
    cluster.record_messages = true;
    cluster.stabilize();
    let status = cluster.node(1).raw().status();
    let progress = status.progress[&3];
    assert_eq!(progress.state, ProgressState::Replicate);
    assert_eq!(progress.inflight_messages, 2);
    let appends: Vec<_> = cluster
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Append && m.to == 3 && !m.entries.is_empty())
        .collect();
    assert_eq!(appends.len(), 2, "two appends in flight, the rest waits");
    for append in appends {
        let size: u64 = append
            .entries
            .iter()
            .map(keel_raft::Entry::size_bytes)
            .sum();
        assert!(
            append.entries.len() == 1 || size <= 64,
            "batch of {size} bytes"
        );
    }
    cluster.heal_partitions();
    cluster.ticks(3);
    cluster.stabilize();
    assert_eq!(
        cluster.node(3).raw().status().last_index,
        cluster.node(1).raw().status().last_index
    );
}

/// Guards against a lagging follower being stuck once the entries it needs are compacted:
/// the leader sends its snapshot, the follower installs it and resumes from there.
#[test]
fn follower_behind_the_compacted_log_installs_a_snapshot() {
    let mut cluster = cluster(3, |_| {});
    cluster.compact_after_entries = 5;
    elect(&mut cluster, 1);
    cluster.crash(3);
    propose_and_settle(&mut cluster, 1, 30, "w");
    let leader_first = cluster.node(1).raw().status().first_index;
    assert!(
        leader_first > 10,
        "leader compacted (first index {leader_first})"
    );
    cluster.record_messages = true;
    cluster.restart(3);
    cluster.ticks(5);
    cluster.stabilize();
    assert!(cluster
        .sent
        .iter()
        .any(|m| m.kind == MessageKind::Snapshot && m.to == 3));
    let node3 = cluster.node(3);
    assert!(node3.raw().status().first_index > 1, "snapshot installed");
    assert_eq!(node3.applied_index, cluster.node(1).applied_index);
    assert!(cluster.has_applied(3, b"w-29"));
    let progress = cluster.node(1).raw().status().progress[&3];
    assert_eq!(progress.state, ProgressState::Replicate);
}

/// Guards against a failed snapshot transfer leaving the follower paused forever.
#[test]
fn failed_snapshot_is_retried() {
    let mut cluster = cluster(3, |_| {});
    cluster.compact_after_entries = 5;
    elect(&mut cluster, 1);
    cluster.crash(3);
    propose_and_settle(&mut cluster, 1, 20, "w");
    cluster.restart(3);
    // The first snapshot is lost (reported as a failure by the transport).
    cluster.blocked.insert((1, 3));
    cluster.ticks(4);
    let status = cluster.node(1).raw().status();
    assert_ne!(status.progress[&3].state, ProgressState::Replicate);
    cluster.heal_partitions();
    cluster.ticks(6);
    cluster.stabilize();
    assert_eq!(cluster.node(3).applied_index, cluster.node(1).applied_index);
}

// ---------------------------------------------------------------------------------------
// Proposals.

/// Guards against proposals silently vanishing: with no leader known they are refused.
#[test]
fn proposals_without_a_leader_are_refused() {
    let mut cluster = cluster(3, |_| {});
    assert_eq!(cluster.propose(1, b"x"), Err(Error::NoLeader));
    elect(&mut cluster, 1);
    // A follower forwards to the leader it knows.
    assert_eq!(cluster.propose(2, b"forwarded"), Ok(()));
    cluster.stabilize();
    assert!(cluster.has_applied(1, b"forwarded"));
}

/// Guards against unbounded memory on a leader that cannot commit.
#[test]
fn uncommitted_log_is_bounded() {
    let mut cluster = cluster(3, |o| o.check_quorum = false);
    elect(&mut cluster, 1);
    cluster.isolate(1);
    let big = vec![7u8; 4096];
    let mut accepted = 0;
    let refused = loop {
        match cluster.propose(1, &big) {
            Ok(()) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 1000, "the bound never triggered");
    };
    assert_eq!(refused, Error::UncommittedLogFull);
    assert!(accepted >= 10);
}

// ---------------------------------------------------------------------------------------
// Reads.

/// Guards against stale reads: a ReadIndex answer is at least every write acknowledged
/// before the read, from the leader directly or forwarded by a follower.
#[test]
fn read_index_answers_at_the_commit_index() {
    let mut cluster = cluster(3, |_| {});
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 3, "w");
    let commit = cluster.node(1).commit();
    for reader in [1, 2] {
        let context = cluster.read_index(reader).unwrap();
        cluster.stabilize();
        let answer = cluster.node(reader).read_states.last().cloned();
        assert_eq!(answer, Some((commit, context)), "read on node {reader}");
    }
}

/// Guards against a new leader answering reads with a commit index that predates its
/// predecessor's acknowledged writes: it defers them until it commits in its own term.
#[test]
fn new_leader_defers_reads_until_it_commits_in_its_term() {
    let mut cluster = cluster(3, |o| o.check_quorum = false);
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 3, "w");
    // Node 2 wins; cut it off the moment it does, so its first entry cannot commit.
    cluster.campaign(2);
    for _ in 0..100 {
        if cluster.node(2).role() == Some(Role::Leader) {
            break;
        }
        cluster.substep();
    }
    assert_eq!(cluster.leader(), Some(2));
    cluster.blocked.insert((2, 1));
    cluster.blocked.insert((2, 3));
    let context = cluster.read_index(2).unwrap();
    cluster.ticks(2);
    assert!(
        cluster.node(2).read_states.is_empty(),
        "read answered too early"
    );
    cluster.heal_partitions();
    cluster.ticks(3);
    cluster.stabilize();
    let answer = cluster.node(2).read_states.last().cloned();
    let commit = cluster.node(2).commit();
    assert_eq!(answer.map(|(_, c)| c), Some(context));
    assert!(cluster.node(2).read_states[0].0 <= commit);
}

/// Guards against reads served by a deposed leader: without a heartbeat quorum the read is
/// never answered.
#[test]
fn isolated_leader_cannot_answer_reads() {
    let mut cluster = cluster(3, |o| o.check_quorum = false);
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 1, "w");
    cluster.isolate(1);
    cluster.read_index(1).unwrap();
    cluster.ticks(10);
    assert!(cluster.node(1).read_states.is_empty());
}

// ---------------------------------------------------------------------------------------
// Membership.

/// Guards against learners voting or counting for quorum, and against promotion not taking
/// effect.
#[test]
fn learner_replicates_without_voting_until_promoted() {
    let mut cluster = cluster(3, |o| o.spares = 1);
    elect(&mut cluster, 1);
    cluster
        .propose_conf_change(1, &change(ConfChangeKind::AddLearner, 4))
        .unwrap();
    cluster.ticks(3);
    cluster.stabilize();
    propose_and_settle(&mut cluster, 1, 3, "w");
    assert_eq!(cluster.node(1).raw().conf_state().learners, [4]);
    assert!(cluster.has_applied(4, b"w-2"), "the learner replicates");
    // A learner never campaigns, however long it is cut off.
    let term = cluster.node(4).term();
    cluster.isolate(4);
    cluster.ticks(50);
    assert_eq!(cluster.node(4).term(), term);
    assert_eq!(cluster.node(4).role(), Some(Role::Follower));
    cluster.heal_partitions();
    cluster.ticks(3);
    // Promote it; it can then win an election.
    cluster
        .propose_conf_change(1, &change(ConfChangeKind::PromoteLearner, 4))
        .unwrap();
    cluster.ticks(3);
    cluster.stabilize();
    assert_eq!(cluster.node(1).raw().conf_state().voters, [1, 2, 3, 4]);
    assert_eq!(cluster.node(4).raw().conf_state().voters, [1, 2, 3, 4]);
    cluster.transfer_leader(1, 4);
    cluster.ticks(3);
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(4));
}

/// Guards against overlapping membership changes (which can split quorums): a second change
/// is refused until the first is applied, and nonsense changes are refused outright.
#[test]
fn membership_changes_happen_one_at_a_time() {
    let mut cluster = cluster(3, |o| o.spares = 2);
    elect(&mut cluster, 1);
    let cases: &[(ConfChange, Result<(), Error>)] = &[
        (
            change(ConfChangeKind::AddVoter, 2),
            Err(Error::InvalidConfChange("node is already a member")),
        ),
        (
            change(ConfChangeKind::PromoteLearner, 4),
            Err(Error::InvalidConfChange("node is not a learner")),
        ),
        (change(ConfChangeKind::AddLearner, 4), Ok(())),
        (
            change(ConfChangeKind::AddVoter, 5),
            Err(Error::ConfChangePending),
        ),
    ];
    for (proposed, expected) in cases {
        assert_eq!(
            cluster.propose_conf_change(1, proposed),
            *expected,
            "{proposed:?}"
        );
    }
    cluster.stabilize();
    assert_eq!(
        cluster.propose_conf_change(1, &change(ConfChangeKind::AddVoter, 5)),
        Ok(())
    );
}

/// Guards against a removed leader lingering: once its removal is applied it steps down and
/// the remaining voters elect a leader among themselves.
#[test]
fn removed_leader_steps_down() {
    let mut cluster = cluster(3, |_| {});
    elect(&mut cluster, 1);
    cluster
        .propose_conf_change(1, &change(ConfChangeKind::RemoveNode, 1))
        .unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Some(Role::Follower));
    cluster.ticks(40);
    let leader = cluster.leader().expect("a new leader");
    assert_ne!(leader, 1);
    assert_eq!(cluster.node(leader).raw().conf_state().voters, [2, 3]);
    propose_and_settle(&mut cluster, leader, 1, "after");
    assert!(cluster.has_applied(2, b"after-0") && cluster.has_applied(3, b"after-0"));
}

// ---------------------------------------------------------------------------------------
// Leadership transfer.

/// Guards against a transfer that loses writes or leaves no leader: the target is caught up
/// first, proposals are refused meanwhile, and the target wins despite the vote lease.
#[test]
fn leadership_transfer_catches_the_target_up_first() {
    let mut cluster = cluster(3, |_| {});
    elect(&mut cluster, 1);
    cluster.isolate(3);
    propose_and_settle(&mut cluster, 1, 5, "w");
    cluster.heal_partitions();
    cluster.transfer_leader(1, 3);
    assert_eq!(
        cluster.propose(1, b"during"),
        Err(Error::LeaderTransferInProgress)
    );
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3));
    assert!(cluster.has_applied(3, b"w-4"));
    propose_and_settle(&mut cluster, 3, 1, "after");
    assert!(cluster.has_applied(1, b"after-0"));
}

/// Guards against a transfer to an unreachable node blocking proposals forever: it is
/// abandoned after an election timeout.
#[test]
fn stalled_transfer_is_abandoned() {
    let mut cluster = cluster(3, |_| {});
    elect(&mut cluster, 1);
    cluster.crash(3);
    cluster.transfer_leader(1, 3);
    assert_eq!(
        cluster.propose(1, b"x"),
        Err(Error::LeaderTransferInProgress)
    );
    cluster.ticks(12);
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.propose(1, b"x"), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Crashes.

/// Guards against trusting unpersisted state: a node that crashes before persisting a Ready
/// restarts from its storage alone and the cluster still converges.
#[test]
fn restart_recovers_from_storage_only() {
    let mut cluster = cluster(3, |_| {});
    elect(&mut cluster, 1);
    propose_and_settle(&mut cluster, 1, 3, "w");
    // Proposals reach node 1's memory but it crashes before any Ready is processed.
    cluster.faults.ready_per_mille = 0;
    for i in 0..3 {
        cluster.propose(1, format!("lost-{i}").as_bytes()).unwrap();
    }
    cluster.crash(1);
    cluster.faults.ready_per_mille = 1000;
    cluster.restart(1);
    assert_eq!(
        cluster.node(1).raw().status().last_index,
        5,
        "unpersisted tail lost"
    );
    cluster.ticks(40);
    let leader = cluster.leader().expect("a leader");
    propose_and_settle(&mut cluster, leader, 1, "after");
    cluster.ticks(3);
    cluster.stabilize();
    for id in 1..=3 {
        assert!(cluster.has_applied(id, b"after-0"), "node {id}");
        assert!(!cluster.has_applied(id, b"lost-0"), "node {id}");
    }
}

/// Guards against the "Figure 8" bug of the Raft paper (§5.4.2): a leader must not commit
/// an entry of an earlier term by counting replicas, because a later leader may still
/// overwrite it; it commits only entries of its own term (and earlier ones with them).
/// The simulation rarely produces the exact interleaving, so this drives one node by hand.
#[test]
fn leader_commits_only_entries_of_its_own_term_by_counting() {
    use keel_raft::{ConfState, Config, Entry, HardState, MemStorage, Message, RawNode};

    let mut storage = MemStorage::new_bootstrapped(ConfState {
        voters: vec![1, 2, 3],
        learners: vec![],
    });
    // Index 2 holds an entry of term 2 that was never committed; we are now in term 3.
    storage.append(&[Entry {
        term: 2,
        index: 2,
        ..Entry::default()
    }]);
    storage.set_hard_state(HardState {
        term: 3,
        vote: None,
        commit: 1,
    });
    let mut config = Config::new(1);
    config.pre_vote = false;
    let mut node = RawNode::new(&config, storage).unwrap();
    let persist = |node: &mut RawNode<MemStorage>| {
        let ready = node.ready();
        node.storage_mut().append(&ready.entries);
        if let Some(hard_state) = ready.hard_state {
            node.storage_mut().set_hard_state(hard_state);
        }
        node.advance();
    };
    let from_2 = |kind, index| Message {
        kind,
        from: 2,
        to: 1,
        term: 4,
        index,
        ..Message::default()
    };

    node.campaign();
    node.step(from_2(MessageKind::RequestVoteResponse, 0))
        .unwrap();
    assert_eq!(node.soft_state().role, Role::Leader);
    persist(&mut node); // the leader's empty entry (index 3, term 4) is now durable
    assert_eq!(node.log_term(3), Some(4));

    // Node 2 acknowledges the old entry only: a majority (1 and 2) holds index 2, but it is
    // of term 2, so it must stay uncommitted.
    node.step(from_2(MessageKind::AppendResponse, 2)).unwrap();
    assert_eq!(node.hard_state().commit, 1);

    // Once the entry of term 4 is on a majority, it and everything before it commit.
    node.step(from_2(MessageKind::AppendResponse, 3)).unwrap();
    assert_eq!(node.hard_state().commit, 3);
}

/// Guards against a follower over-claiming its match: when a snapshot arrives whose last
/// entry it already holds, it may only acknowledge up to that entry, since its later entries
/// may conflict with the leader's log.
#[test]
fn snapshot_already_covered_acknowledges_only_the_snapshot_index() {
    use keel_raft::{
        ConfState, Config, Entry, HardState, MemStorage, Message, RawNode, Snapshot,
        SnapshotMetadata,
    };

    let conf_state = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![],
    };
    let mut storage = MemStorage::new_bootstrapped(conf_state.clone());
    // Follower 2 holds 2..=3 of term 2 (matching the leader) and 4..=6 of term 3 (a deposed
    // leader's entries, which the current leader does not have).
    let entries: Vec<Entry> = [(2, 2), (3, 2), (4, 3), (5, 3), (6, 3)]
        .iter()
        .map(|&(index, term)| Entry {
            term,
            index,
            ..Entry::default()
        })
        .collect();
    storage.append(&entries);
    storage.set_hard_state(HardState {
        term: 4,
        vote: None,
        commit: 1,
    });
    let mut node = RawNode::new(&Config::new(2), storage).unwrap();
    let snapshot = Snapshot {
        metadata: SnapshotMetadata {
            index: 3,
            term: 2,
            conf_state,
        },
        data: Vec::new(),
    };
    node.step(Message {
        kind: MessageKind::Snapshot,
        from: 1,
        to: 2,
        term: 4,
        snapshot: Some(snapshot),
        ..Message::default()
    })
    .unwrap();
    let ready = node.ready();
    let answer = ready
        .messages
        .iter()
        .find(|m| m.kind == MessageKind::AppendResponse)
        .expect("an answer");
    assert_eq!(answer.index, 3);
    assert_eq!(node.hard_state().commit, 3);
}
