//! The Raft log as the core reads it: the WAL's entries in memory ([`MemStorage`]), with two
//! rules of Keel's on top.
//!
//! - The configuration Raft starts from is the membership as of the store's consistent index
//!   (where Raft resumes applying), not the one in the log's snapshot.
//! - A snapshot is only ever sent while it is the bootstrap snapshot (index 1, no data, the
//!   founding configuration): that is how a member that joins learns where the log starts.
//!   Past index 1 the snapshot holds no data (the store is not shipped yet), so sending it would
//!   make the receiver skip every write before it; it answers "temporarily unavailable"
//!   instead, and a member that needs it waits (see docs/design/membership.md).

use keel_raft::{
    ConfState, Entry, HardState, MemStorage, RaftState, Snapshot, Storage, StorageError,
};

/// The Raft log of a member.
#[derive(Debug, Default)]
pub struct RaftLog {
    log: MemStorage,
    start_conf_state: ConfState,
}

impl RaftLog {
    /// `start_conf_state` is the configuration as of the index Raft resumes applying from.
    pub fn new(log: MemStorage, start_conf_state: ConfState) -> RaftLog {
        RaftLog {
            log,
            start_conf_state,
        }
    }

    pub fn append(&mut self, entries: &[Entry]) {
        self.log.append(entries);
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.log.set_hard_state(hard_state);
    }

    /// Installs the leader's snapshot (only ever the bootstrap one; see the module doc).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.log.apply_snapshot(snapshot)
    }

    pub fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.log.compact(index, conf_state, data)
    }
}

impl Storage for RaftLog {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.log.initial_state()?.hard_state,
            conf_state: self.start_conf_state.clone(),
        })
    }

    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(low, high, max_bytes)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.log.term(index)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        self.log.first_index()
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        self.log.last_index()
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let snapshot = self.log.snapshot()?;
        if snapshot.metadata.index > 1 && snapshot.data.is_empty() {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founding() -> ConfState {
        ConfState {
            voters: vec![1, 2, 3],
            learners: Vec::new(),
        }
    }

    /// Guards against a leader that sends an empty snapshot past index 1: the receiver would
    /// skip every write before it.
    #[test]
    fn only_the_bootstrap_snapshot_is_ever_handed_out() {
        let mut log = RaftLog::new(MemStorage::new_bootstrapped(founding()), founding());
        assert_eq!(log.snapshot().unwrap().metadata.index, 1);
        let entries: Vec<Entry> = (2..=5)
            .map(|index| Entry {
                term: 1,
                index,
                ..Entry::default()
            })
            .collect();
        log.append(&entries);
        log.compact(3, founding(), Vec::new()).unwrap();
        assert_eq!(
            log.snapshot(),
            Err(StorageError::SnapshotTemporarilyUnavailable)
        );
    }

    #[test]
    fn raft_starts_from_the_configuration_it_was_given() {
        let now = ConfState {
            voters: vec![1, 2],
            learners: vec![4],
        };
        let log = RaftLog::new(MemStorage::new_bootstrapped(founding()), now.clone());
        assert_eq!(log.initial_state().unwrap().conf_state, now);
        assert_eq!(log.snapshot().unwrap().metadata.conf_state, founding());
    }
}
