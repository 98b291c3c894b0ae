//! The Raft log as the core reads it: the WAL's entries in memory ([`MemStorage`]), with two
//! rules of Keel's on top.
//!
//! - The configuration Raft starts from is the membership as of the store's consistent index
//!   (where Raft resumes applying), not the one in the log's snapshot.
//! - The snapshot the core sees holds no data: it only says where the log was compacted. The
//!   bootstrap snapshot (index 1, the founding configuration) is sent as it is; any later one
//!   is replaced on its way out by the store itself at its applied index (`replica.rs`,
//!   `snapshot_transfer.rs`), so the receiver never skips a write.

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

    /// Installs the leader's snapshot (its data is in the store already; see the module doc).
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
        self.log.snapshot()
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

    /// The core learns where the log was compacted (the runtime ships the data).
    #[test]
    fn the_snapshot_marks_the_compacted_log() {
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
        assert_eq!(log.snapshot().unwrap().metadata.index, 3);
        assert_eq!(log.first_index(), Ok(4));
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
