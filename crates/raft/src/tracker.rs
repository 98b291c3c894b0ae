//! Membership and quorum arithmetic: who votes, who learns, what a majority has matched, how
//! an election is going.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use crate::message::{ConfChange, ConfChangeKind, ConfState, NodeId};
use crate::progress::Progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

pub(crate) struct Tracker {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// One entry per voter and learner (meaningful on the leader only).
    pub progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    max_inflight: usize,
}

impl Tracker {
    pub fn new(conf_state: &ConfState, max_inflight: usize) -> Self {
        let mut tracker = Self {
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        };
        tracker.restore(conf_state, 1);
        tracker
    }

    /// Replaces the configuration (snapshot install, start-up).
    pub fn restore(&mut self, conf_state: &ConfState, next_index: u64) {
        self.voters = conf_state.voters.iter().copied().collect();
        self.learners = conf_state
            .learners
            .iter()
            .copied()
            .filter(|id| !self.voters.contains(id))
            .collect();
        self.progress = self
            .voters
            .iter()
            .chain(&self.learners)
            .map(|&id| (id, Progress::new(next_index, self.max_inflight)))
            .collect();
        self.votes.clear();
    }

    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Resets every follower's progress for a new term; `own_persisted` is this node's
    /// durable last index (its own match).
    pub fn reset_progress(&mut self, self_id: NodeId, last_index: u64, own_persisted: u64) {
        for (&id, progress) in &mut self.progress {
            *progress = Progress::new(last_index + 1, self.max_inflight);
            if id == self_id {
                progress.matched = own_persisted;
                progress.recent_active = true;
            }
        }
    }

    /// The highest index matched by a quorum of voters (0 without voters).
    pub fn committed_index(&self) -> u64 {
        if self.voters.is_empty() {
            return 0;
        }
        let mut matched: Vec<u64> = self
            .voters
            .iter()
            .map(|id| self.progress.get(id).map_or(0, |p| p.matched))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        matched[self.quorum() - 1]
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote (the first answer of each voter counts) and returns the tally.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) -> VoteResult {
        if self.voters.contains(&id) {
            self.votes.entry(id).or_insert(granted);
        }
        let granted_count = self.votes.values().filter(|&&g| g).count();
        let rejected_count = self.votes.values().filter(|&&g| !g).count();
        if granted_count >= self.quorum() {
            VoteResult::Won
        } else if self.voters.len() - rejected_count < self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// Whether `acks` contains a quorum of voters.
    pub fn is_quorum(&self, acks: &BTreeSet<NodeId>) -> bool {
        self.voters.iter().filter(|id| acks.contains(id)).count() >= self.quorum()
    }

    /// Whether a quorum of voters was heard from during the last election timeout (this node
    /// counts as heard from).
    pub fn quorum_active(&self, self_id: NodeId) -> bool {
        let active = self
            .voters
            .iter()
            .filter(|&&id| id == self_id || self.progress.get(&id).is_some_and(|p| p.recent_active))
            .count();
        active >= self.quorum()
    }

    pub fn reset_recent_active(&mut self, self_id: NodeId) {
        for (&id, progress) in &mut self.progress {
            progress.recent_active = id == self_id;
        }
    }

    /// Checks a proposed change against the current configuration.
    pub fn validate(&self, change: &ConfChange) -> Result<(), Error> {
        let id = change.node_id;
        if id == 0 {
            return Err(Error::InvalidConfChange("node id 0"));
        }
        let member = self.is_voter(id) || self.is_learner(id);
        match change.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddLearner if member => {
                Err(Error::InvalidConfChange("node is already a member"))
            }
            ConfChangeKind::PromoteLearner if !self.is_learner(id) => {
                Err(Error::InvalidConfChange("node is not a learner"))
            }
            ConfChangeKind::RemoveNode if !member => {
                Err(Error::InvalidConfChange("node is not a member"))
            }
            ConfChangeKind::RemoveNode if self.is_voter(id) && self.voters.len() == 1 => {
                Err(Error::InvalidConfChange("cannot remove the last voter"))
            }
            _ => Ok(()),
        }
    }

    /// Applies a committed change. Changes that `validate` would refuse are ignored: the log
    /// may carry them (proposed before an earlier change applied), and ignoring them
    /// deterministically keeps every member's configuration identical.
    pub fn apply(&mut self, change: &ConfChange, next_index: u64) {
        if self.validate(change).is_err() {
            return;
        }
        let id = change.node_id;
        match change.kind {
            ConfChangeKind::AddVoter => {
                self.voters.insert(id);
                self.add_progress(id, next_index);
            }
            ConfChangeKind::AddLearner => {
                self.learners.insert(id);
                self.add_progress(id, next_index);
            }
            ConfChangeKind::PromoteLearner => {
                self.learners.remove(&id);
                self.voters.insert(id);
            }
            ConfChangeKind::RemoveNode => {
                self.voters.remove(&id);
                self.learners.remove(&id);
                self.progress.remove(&id);
                self.votes.remove(&id);
            }
        }
    }

    fn add_progress(&mut self, id: NodeId, next_index: u64) {
        let mut progress = Progress::new(next_index, self.max_inflight);
        // A new member gets the benefit of the doubt, so the leader may send it a snapshot.
        progress.recent_active = true;
        self.progress.insert(id, progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[NodeId], matched: &[u64]) -> Tracker {
        let mut tracker = Tracker::new(
            &ConfState {
                voters: voters.to_vec(),
                learners: vec![],
            },
            4,
        );
        for (id, &m) in voters.iter().zip(matched) {
            tracker.progress.get_mut(id).unwrap().matched = m;
        }
        tracker
    }

    /// (matched index of each voter, expected committed index).
    #[test]
    fn committed_index_is_the_quorum_match() {
        let cases: &[(&[u64], u64)] = &[
            (&[5], 5),
            (&[5, 3], 3),
            (&[5, 3, 1], 3),
            (&[1, 5, 3, 4], 3),
            (&[9, 1, 1, 9, 2], 2),
            (&[9, 8, 7, 9, 2], 8),
        ];
        for (matched, expected) in cases {
            let voters: Vec<NodeId> = (1..=matched.len() as u64).collect();
            assert_eq!(
                tracker(&voters, matched).committed_index(),
                *expected,
                "{matched:?}"
            );
        }
    }

    /// (voters, votes in order, result after the last vote).
    #[test]
    fn vote_tally() {
        type Case = (&'static [NodeId], &'static [(NodeId, bool)], VoteResult);
        let cases: &[Case] = &[
            (&[1], &[(1, true)], VoteResult::Won),
            (&[1, 2, 3], &[(1, true)], VoteResult::Pending),
            (&[1, 2, 3], &[(1, true), (2, true)], VoteResult::Won),
            (
                &[1, 2, 3],
                &[(1, true), (2, false), (3, false)],
                VoteResult::Lost,
            ),
            (&[1, 2, 3, 4], &[(1, true), (2, true)], VoteResult::Pending),
            (
                &[1, 2, 3, 4],
                &[(1, true), (2, false), (3, false)],
                VoteResult::Lost,
            ),
            // A learner's or stranger's vote does not count; repeated votes count once.
            (
                &[1, 2, 3],
                &[(1, true), (9, true), (1, true)],
                VoteResult::Pending,
            ),
        ];
        for (voters, votes, expected) in cases {
            let mut tracker = tracker(voters, &[]);
            let mut result = VoteResult::Pending;
            for &(id, granted) in *votes {
                result = tracker.record_vote(id, granted);
            }
            assert_eq!(result, *expected, "{voters:?} {votes:?}");
        }
    }

    #[test]
    fn validate_refuses_nonsense_changes() {
        let mut tracker = tracker(&[1, 2], &[]);
        let change = |kind, node_id| ConfChange {
            kind,
            node_id,
            context: vec![],
        };
        assert!(tracker
            .validate(&change(ConfChangeKind::AddVoter, 2))
            .is_err());
        assert!(tracker
            .validate(&change(ConfChangeKind::PromoteLearner, 3))
            .is_err());
        assert!(tracker
            .validate(&change(ConfChangeKind::RemoveNode, 3))
            .is_err());
        tracker.apply(&change(ConfChangeKind::AddLearner, 3), 1);
        assert!(tracker.is_learner(3));
        tracker.apply(&change(ConfChangeKind::PromoteLearner, 3), 1);
        assert!(tracker.is_voter(3) && !tracker.is_learner(3));
        tracker.apply(&change(ConfChangeKind::RemoveNode, 1), 1);
        tracker.apply(&change(ConfChangeKind::RemoveNode, 2), 1);
        assert!(tracker
            .validate(&change(ConfChangeKind::RemoveNode, 3))
            .is_err());
    }
}
