//! What the leader knows about one follower's log, and how it paces replication to it.
//!
//! ```text
//!            rejection / unreachable                 snapshot acked / failed
//!   Probe <------------------------------ Replicate      Snapshot ----------> Probe
//!     |  accepted append                      ^             ^
//!     +---------------------------------------+             |
//!     +-----------------------------------------------------+
//!             next entry is compacted: send a snapshot
//! ```
//!
//! * Probe: one `Append` at a time until the follower says where its log matches.
//! * Replicate: stream entries optimistically, at most `max_inflight_messages` unacknowledged.
//! * Snapshot: wait for the snapshot to be installed (or reported failed); send nothing else.

use std::collections::VecDeque;

/// The replication state of one follower, as seen by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot,
}

/// The unacknowledged `Append` messages to one follower, by the last index each carried.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    last_indexes: VecDeque<u64>,
    capacity: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Self {
        Self {
            last_indexes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn add(&mut self, last_index: u64) {
        assert!(!self.full(), "inflight window overflow");
        self.last_indexes.push_back(last_index);
    }

    /// Forgets every message whose entries are all acknowledged by `to`.
    pub fn free_up_to(&mut self, to: u64) {
        while self.last_indexes.front().is_some_and(|&last| last <= to) {
            self.last_indexes.pop_front();
        }
    }

    pub fn free_first_one(&mut self) {
        self.last_indexes.pop_front();
    }

    pub fn full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    pub fn count(&self) -> usize {
        self.last_indexes.len()
    }

    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

/// One follower's replication progress.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to match the leader's log.
    pub matched: u64,
    /// The next index to send.
    pub next: u64,
    pub state: ProgressState,
    /// In Snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: u64,
    /// In Probe state: an `Append` is out, wait for its answer (or a heartbeat response).
    pub probe_sent: bool,
    /// Heard from within the current election timeout (check-quorum).
    pub recent_active: bool,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next: u64, max_inflight: usize) -> Self {
        Self {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            probe_sent: false,
            recent_active: false,
            inflights: Inflights::new(max_inflight),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.reset();
    }

    pub fn become_probe(&mut self) {
        // Coming out of Snapshot state, the snapshot most likely arrived: probe after it.
        let after_snapshot = if self.state == ProgressState::Snapshot {
            self.pending_snapshot + 1
        } else {
            0
        };
        self.reset_state(ProgressState::Probe);
        self.next = (self.matched + 1).max(after_snapshot);
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The follower acknowledged `index`; returns whether `matched` moved.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// The follower rejected an append at `rejected`; `match_hint` is the highest index that
    /// may still match. Returns false if the rejection is stale.
    pub fn maybe_decrease_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                self.next = self.matched + 1;
                true
            }
            ProgressState::Probe => {
                if self.next.saturating_sub(1) != rejected {
                    return false;
                }
                self.next = rejected.min(match_hint + 1).max(self.matched + 1);
                self.probe_sent = false;
                true
            }
            // The snapshot answer decides what happens next.
            ProgressState::Snapshot => false,
        }
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Record that an `Append` ending at `last_index` (or empty, `None`) went out.
    pub fn sent_append(&mut self, last_index: Option<u64>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next = last + 1;
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("no appends are sent in Snapshot state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_backs_off_to_the_hint_but_not_below_match() {
        let mut progress = Progress::new(11, 4);
        progress.matched = 3;
        assert!(!progress.maybe_decrease_to(5, 2), "stale rejection ignored");
        assert!(progress.maybe_decrease_to(10, 6));
        assert_eq!(progress.next, 7);
        progress.next = 7;
        assert!(progress.maybe_decrease_to(6, 0));
        assert_eq!(progress.next, 4, "never below matched + 1");
    }

    #[test]
    fn replicate_pauses_when_the_window_is_full() {
        let mut progress = Progress::new(1, 2);
        progress.become_replicate();
        progress.sent_append(Some(3));
        assert!(!progress.is_paused());
        progress.sent_append(Some(5));
        assert!(progress.is_paused());
        assert_eq!(progress.next, 6);
        progress.maybe_update(3);
        progress.inflights.free_up_to(3);
        assert!(!progress.is_paused());
        assert_eq!(progress.inflights.count(), 1);
    }

    #[test]
    fn leaving_snapshot_state_probes_after_the_snapshot() {
        let mut progress = Progress::new(1, 2);
        progress.become_snapshot(20);
        assert!(progress.is_paused());
        progress.become_probe();
        assert_eq!(progress.next, 21);
    }
}
