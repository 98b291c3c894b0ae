//! The durable log as the core sees it: a trait the runtime implements over its WAL, and
//! [`MemStorage`], the in-memory reference implementation used by tests and the simulation.

use crate::error::StorageError;
use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

/// What a node recovers on start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    /// The configuration as of `Config::applied` (for [`MemStorage`]: as of its snapshot).
    pub conf_state: ConfState,
}

/// Read access to the persisted log. The core never writes through it: the runtime writes
/// (what each `Ready` says to persist) and then calls `advance`.
///
/// The log is a snapshot covering `..=first_index() - 1` followed by the entries
/// `first_index()..=last_index()`. Every entry returned must already be durable.
pub trait Storage {
    /// The hard state and configuration to start from.
    ///
    /// # Errors
    /// Any [`StorageError`]; the node then fails to start.
    fn initial_state(&self) -> Result<RaftState, StorageError>;

    /// Entries `low..high`, stopping before the total [`Entry::size_bytes`] exceeds
    /// `max_bytes` but always returning at least one entry when the range is not empty.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if `low < first_index()`; [`StorageError::Unavailable`] if
    /// `high > last_index() + 1`.
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`
    /// (the lower end is the snapshot's term).
    ///
    /// # Errors
    /// [`StorageError::Compacted`] below that range, [`StorageError::Unavailable`] above it.
    fn term(&self, index: u64) -> Result<u64, StorageError>;

    /// The index of the first entry still in the log (snapshot index + 1).
    ///
    /// # Errors
    /// Only fatal errors.
    fn first_index(&self) -> Result<u64, StorageError>;

    /// The index of the last entry (the snapshot's index if there are no entries).
    ///
    /// # Errors
    /// Only fatal errors.
    fn last_index(&self) -> Result<u64, StorageError>;

    /// The most recent snapshot, to send to a follower behind the compacted log.
    ///
    /// # Errors
    /// [`StorageError::SnapshotTemporarilyUnavailable`] while one is being built.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// A [`Storage`] in memory. The runtime-side half (`append`, `set_hard_state`,
/// `apply_snapshot`, `compact`) is what a WAL-backed storage does durably.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.metadata.index + 1` when not empty.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty log with no configuration: a node that will join an existing cluster and
    /// learn everything from its leader.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A new cluster's starting log: a snapshot at index 1, term 1, holding `conf_state` and
    /// empty data, already committed. Every founding member starts from the same one; nodes
    /// that join later receive the configuration through a snapshot or the log.
    #[must_use]
    pub fn new_bootstrapped(conf_state: ConfState) -> Self {
        Self {
            hard_state: HardState {
                term: 1,
                vote: None,
                commit: 1,
            },
            snapshot: Snapshot {
                metadata: SnapshotMetadata {
                    index: 1,
                    term: 1,
                    conf_state,
                },
                data: Vec::new(),
            },
            entries: Vec::new(),
        }
    }

    #[must_use]
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Appends `entries`, first discarding any stored entries at or after `entries[0].index`
    /// (a new leader overwrote them).
    ///
    /// # Panics
    /// If `entries` would leave a gap after the last entry or start inside the snapshot: the
    /// core never asks for either.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let snapshot_index = self.snapshot.metadata.index;
        assert!(
            first.index > snapshot_index,
            "append at {} overlaps the snapshot at {snapshot_index}",
            first.index
        );
        let last_index = snapshot_index + self.entries.len() as u64;
        assert!(
            first.index <= last_index + 1,
            "append at {} leaves a gap after {last_index}",
            first.index
        );
        let keep = usize::try_from(first.index - snapshot_index - 1).expect("index fits usize");
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Replaces the whole log with `snapshot` (a leader sent it because this node was behind
    /// its compacted log).
    ///
    /// # Errors
    /// [`StorageError::Other`] if `snapshot` is older than the current one.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        if snapshot.metadata.index < self.snapshot.metadata.index {
            return Err(StorageError::Other(format!(
                "snapshot at {} is older than the one at {}",
                snapshot.metadata.index, self.snapshot.metadata.index
            )));
        }
        self.hard_state.term = self.hard_state.term.max(snapshot.metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(snapshot.metadata.index);
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    /// Makes a snapshot at `index` (which the state machine has applied) with `data` and the
    /// configuration in force at `index`, and drops the entries it covers.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if `index` is at or below the current snapshot,
    /// [`StorageError::Unavailable`] if it is beyond the last entry.
    ///
    /// # Panics
    /// Only if the log is larger than memory can address.
    pub fn compact(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let snapshot_index = self.snapshot.metadata.index;
        if index <= snapshot_index {
            return Err(StorageError::Compacted);
        }
        let term = self.term(index)?;
        let drop = usize::try_from(index - snapshot_index).expect("index fits usize");
        self.entries.drain(..drop);
        self.snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.metadata.index
    }

    fn stored_last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.snapshot_index() {
            return Err(StorageError::Compacted);
        }
        if high > self.stored_last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let offset = self.snapshot_index() + 1;
        let mut taken = Vec::new();
        let mut size_bytes = 0;
        for index in low..high {
            let entry = &self.entries[usize::try_from(index - offset).expect("index fits usize")];
            size_bytes += entry.size_bytes();
            if !taken.is_empty() && size_bytes > max_bytes {
                break;
            }
            taken.push(entry.clone());
        }
        Ok(taken)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        let snapshot_index = self.snapshot_index();
        if index < snapshot_index {
            return Err(StorageError::Compacted);
        }
        if index == snapshot_index {
            return Ok(self.snapshot.metadata.term);
        }
        if index > self.stored_last_index() {
            return Err(StorageError::Unavailable);
        }
        let position = usize::try_from(index - snapshot_index - 1).expect("index fits usize");
        Ok(self.entries[position].term)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.stored_last_index())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            ..Entry::default()
        }
    }

    fn storage_with(terms: &[u64]) -> MemStorage {
        let mut storage = MemStorage::new();
        let entries: Vec<Entry> = (1..).zip(terms).map(|(i, &t)| entry(i, t)).collect();
        storage.append(&entries);
        storage
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut storage = storage_with(&[1, 1, 2, 2]);
        storage.append(&[entry(3, 3)]);
        assert_eq!(storage.last_index(), Ok(3));
        assert_eq!(storage.term(3), Ok(3));
        assert_eq!(storage.term(4), Err(StorageError::Unavailable));
    }

    #[test]
    fn compact_keeps_the_term_of_the_snapshot_index() {
        let mut storage = storage_with(&[1, 1, 2, 2, 3]);
        storage.compact(3, ConfState::default(), vec![7]).unwrap();
        assert_eq!(storage.first_index(), Ok(4));
        assert_eq!(storage.term(3), Ok(2));
        assert_eq!(storage.term(2), Err(StorageError::Compacted));
        assert_eq!(
            storage.entries(3, 5, u64::MAX),
            Err(StorageError::Compacted)
        );
        assert_eq!(storage.entries(4, 6, u64::MAX).unwrap().len(), 2);
        assert_eq!(
            storage.compact(3, ConfState::default(), vec![]),
            Err(StorageError::Compacted)
        );
    }

    #[test]
    fn entries_respects_max_bytes_but_returns_one() {
        let storage = storage_with(&[1, 1, 1]);
        assert_eq!(storage.entries(1, 4, 0).unwrap().len(), 1);
        let two = 2 * Entry::OVERHEAD_BYTES;
        assert_eq!(storage.entries(1, 4, two).unwrap().len(), 2);
        assert_eq!(
            storage.entries(1, 5, u64::MAX),
            Err(StorageError::Unavailable)
        );
    }

    #[test]
    fn apply_snapshot_replaces_the_log() {
        let mut storage = storage_with(&[1, 1, 1]);
        let snapshot = Snapshot {
            metadata: SnapshotMetadata {
                index: 10,
                term: 4,
                conf_state: ConfState::default(),
            },
            data: vec![],
        };
        storage.apply_snapshot(snapshot).unwrap();
        assert_eq!(storage.first_index(), Ok(11));
        assert_eq!(storage.last_index(), Ok(10));
        assert_eq!(storage.term(10), Ok(4));
        assert_eq!(storage.hard_state().commit, 10);
    }
}
