//! The rules that turn a sequence of records into a log. Pure, no I/O.
//!
//! The writer checks every append against the same `LogPosition` rules that replay applies, so
//! anything `Wal::append_*` accepts, `Wal::open` reads back (the assertion pair around the disk).

use super::{Entry, HardState, Replay, SnapshotMarker};

/// Where the log stands: enough to check whether the next record is acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LogPosition {
    /// The index of the last entry, or of the snapshot marker if that is higher.
    pub(super) last_index: u64,
    /// The index of the latest snapshot marker, 0 when there is none.
    pub(super) snapshot_index: u64,
}

impl LogPosition {
    /// Checks that an entry with `index` may follow: it must not be covered by the snapshot and
    /// must leave no gap (it may be lower than `last_index + 1`, which overwrites a suffix).
    pub(super) fn check_entry(&self, index: u64) -> Result<(), String> {
        if index <= self.snapshot_index {
            return Err(format!(
                "entry index {index} is covered by the snapshot marker at index {}",
                self.snapshot_index
            ));
        }
        // `index >= 1` here, so `index - 1` can't underflow (and `last_index + 1` could overflow).
        if index - 1 > self.last_index {
            return Err(format!(
                "entry index {index} leaves a gap after last index {}",
                self.last_index
            ));
        }
        Ok(())
    }

    pub(super) fn apply_entry(&mut self, index: u64) {
        self.last_index = index;
    }

    /// Snapshot markers never move backwards.
    pub(super) fn check_snapshot_marker(&self, marker: &SnapshotMarker) -> Result<(), String> {
        if marker.index < self.snapshot_index {
            return Err(format!(
                "snapshot marker index {} is below the previous marker's index {}",
                marker.index, self.snapshot_index
            ));
        }
        Ok(())
    }

    pub(super) fn apply_snapshot_marker(&mut self, marker: &SnapshotMarker) {
        self.snapshot_index = marker.index;
        self.last_index = self.last_index.max(marker.index);
    }
}

/// The log as replayed so far.
#[derive(Debug)]
pub(super) struct ReplayState {
    pub(super) position: LogPosition,
    pub(super) hard_state: Option<HardState>,
    pub(super) snapshot: Option<SnapshotMarker>,
    /// Contiguous by index; every index is above `position.snapshot_index`.
    entries: Vec<Entry>,
}

impl ReplayState {
    /// Starts replay at a segment whose header says its first index is `first_index`.
    pub(super) fn new(first_index: u64) -> ReplayState {
        ReplayState {
            position: LogPosition {
                last_index: first_index.saturating_sub(1),
                snapshot_index: 0,
            },
            hard_state: None,
            snapshot: None,
            entries: Vec::new(),
        }
    }

    pub(super) fn apply_entry(&mut self, entry: Entry) -> Result<(), String> {
        self.position.check_entry(entry.index)?;
        // Drop every entry at or above the new one's index: the new suffix replaces them.
        let keep = match self.entries.first() {
            Some(first) if entry.index > first.index => {
                usize::try_from(entry.index - first.index).expect("entries fit in memory")
            }
            _ => 0,
        };
        self.entries.truncate(keep);
        self.position.apply_entry(entry.index);
        self.entries.push(entry);
        Ok(())
    }

    pub(super) fn apply_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = Some(hard_state);
    }

    pub(super) fn apply_snapshot_marker(&mut self, marker: SnapshotMarker) -> Result<(), String> {
        self.position.check_snapshot_marker(&marker)?;
        let covered = self
            .entries
            .iter()
            .take_while(|entry| entry.index <= marker.index)
            .count();
        self.entries.drain(..covered);
        self.position.apply_snapshot_marker(&marker);
        self.snapshot = Some(marker);
        Ok(())
    }

    pub(super) fn into_replay(self) -> Replay {
        debug_assert!(self
            .entries
            .windows(2)
            .all(|pair| pair[1].index == pair[0].index + 1));
        debug_assert!(self
            .entries
            .first()
            .is_none_or(|entry| entry.index > self.position.snapshot_index));
        Replay {
            hard_state: self.hard_state,
            snapshot: self.snapshot,
            entries: self.entries,
        }
    }
}
