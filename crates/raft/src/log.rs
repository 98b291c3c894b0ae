//! The log as the core sees it: the runtime's [`Storage`] (durable) followed by an in-memory
//! unstable tail (entries, or a snapshot, that the runtime has not persisted yet).
//!
//! ```text
//!   snapshot   | storage entries (durable) | unstable entries (not yet persisted)
//!  ..=first-1  | first ..= offset-1        | offset ..= last
//!                     applied <= committed <= last
//! ```
//!
//! An unstable append may start below `offset` (a new leader overwrote the tail); storage
//! entries at or after the new `offset` are then stale until the runtime persists the new
//! ones, and every read at or after `offset` is answered from the unstable part.

use crate::error::StorageError;
use crate::message::{Entry, EntryKind, Snapshot};
use crate::storage::Storage;

/// Entries and a snapshot received but not yet persisted.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Index of `entries[0]` (or where the next entry goes).
    pub offset: u64,
}

impl Unstable {
    fn first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.metadata.index + 1)
    }

    fn last_index(&self) -> Option<u64> {
        match self.entries.last() {
            Some(entry) => Some(entry.index),
            None => self.snapshot.as_ref().map(|s| s.metadata.index),
        }
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.metadata.index == index)
                .map(|s| s.metadata.term);
        }
        let position = usize::try_from(index - self.offset).ok()?;
        self.entries.get(position).map(|e| e.term)
    }

    fn truncate_and_append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let after = first.index;
        let end = self.offset + self.entries.len() as u64;
        if after == end {
            self.entries.extend(entries);
        } else if after <= self.offset {
            // Everything unstable is replaced; storage entries at `after..` are stale now.
            self.offset = after;
            self.entries = entries;
        } else {
            let keep = usize::try_from(after - self.offset).expect("index fits usize");
            self.entries.truncate(keep);
            self.entries.extend(entries);
        }
    }

    fn size_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size_bytes).sum()
    }
}

/// Storage plus unstable tail, with the commit and apply cursors.
pub(crate) struct RaftLog<S> {
    pub storage: S,
    pub unstable: Unstable,
    /// Highest index known committed. Never decreases.
    pub committed: u64,
    /// Highest index the runtime has applied (acknowledged through `advance`).
    pub applied: u64,
}

fn fatal(what: &str, error: &StorageError) -> ! {
    panic!("storage failed while reading {what}: {error}")
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S) -> Self {
        let first_index = storage
            .first_index()
            .unwrap_or_else(|e| fatal("first index", &e));
        let last_index = storage
            .last_index()
            .unwrap_or_else(|e| fatal("last index", &e));
        Self {
            storage,
            unstable: Unstable {
                snapshot: None,
                entries: Vec::new(),
                offset: last_index + 1,
            },
            committed: first_index - 1,
            applied: first_index - 1,
        }
    }

    pub fn first_index(&self) -> u64 {
        self.unstable.first_index().unwrap_or_else(|| {
            self.storage
                .first_index()
                .unwrap_or_else(|e| fatal("first index", &e))
        })
    }

    pub fn last_index(&self) -> u64 {
        self.unstable.last_index().unwrap_or_else(|| {
            self.storage
                .last_index()
                .unwrap_or_else(|e| fatal("last index", &e))
        })
    }

    /// The last index known to be durable and consistent with this log, or `None` while a
    /// snapshot is waiting to be persisted.
    pub fn persisted_last_index(&self) -> Option<u64> {
        if self.unstable.snapshot.is_some() {
            return None;
        }
        if self.unstable.entries.is_empty() {
            Some(self.last_index())
        } else {
            Some(self.unstable.offset - 1)
        }
    }

    /// The term at `index`, which must lie in `first_index() - 1 ..= last_index()`.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index + 1 < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(term) = self.unstable.term(index) {
            return Ok(term);
        }
        match self.storage.term(index) {
            Ok(term) => Ok(term),
            Err(StorageError::Compacted) => Err(StorageError::Compacted),
            Err(StorageError::Unavailable) => Err(StorageError::Unavailable),
            Err(error) => fatal("a term", &error),
        }
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index())
            .unwrap_or_else(|e| fatal("the last term", &e))
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Ok(term)
    }

    /// Raft's election restriction: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let our_term = self.last_term();
        term > our_term || (term == our_term && last_index >= self.last_index())
    }

    /// Entries `low..high` limited to `max_bytes` (at least one if the range is non-empty).
    pub fn slice(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted);
        }
        assert!(
            high <= self.last_index() + 1,
            "slice {low}..{high} beyond last index {}",
            self.last_index()
        );
        let mut taken = Vec::new();
        let offset = self.unstable.offset;
        if low < offset {
            let stored_high = high.min(offset);
            taken = match self.storage.entries(low, stored_high, max_bytes) {
                Ok(entries) => entries,
                Err(StorageError::Compacted) => return Err(StorageError::Compacted),
                Err(error) => fatal("entries", &error),
            };
            // Storage stopped early because of the size limit: do not add unstable ones.
            if (taken.len() as u64) < stored_high - low {
                return Ok(taken);
            }
        }
        if high > offset {
            let mut size_bytes: u64 = taken.iter().map(Entry::size_bytes).sum();
            let start = usize::try_from(low.max(offset) - offset).expect("index fits usize");
            let end = usize::try_from(high - offset).expect("index fits usize");
            for entry in &self.unstable.entries[start..end] {
                size_bytes += entry.size_bytes();
                if !taken.is_empty() && size_bytes > max_bytes {
                    break;
                }
                taken.push(entry.clone());
            }
        }
        Ok(taken)
    }

    /// Entries from `low` to the end, limited to `max_bytes`.
    pub fn entries_from(&self, low: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low > self.last_index() {
            return Ok(Vec::new());
        }
        self.slice(low, self.last_index() + 1, max_bytes)
    }

    /// The index of the first entry of `entries` that is not already in the log with the
    /// same term, if any.
    fn find_conflict(&self, entries: &[Entry]) -> Option<u64> {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map(|e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, with that term; used on both
    /// sides of the conflict hint so the leader skips a whole term per round trip. Stops at
    /// the compaction boundary (term 0 there means "unknown").
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut candidate = index.min(self.last_index());
        loop {
            match self.term(candidate) {
                Ok(found) if found > term && candidate > 0 => candidate -= 1,
                Ok(found) => return (candidate, found),
                Err(_) => return (candidate, 0),
            }
        }
    }

    /// The follower side of `Append`: if the entry at `prev_index` has `prev_term`, append
    /// `entries` (overwriting any conflicting suffix), move the commit index forward and return
    /// the last index now known to match the leader.
    ///
    /// # Panics
    /// If a conflicting entry is at or below the commit index: committed entries never change.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        leader_commit: u64,
        entries: Vec<Entry>,
    ) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new_index = prev_index + entries.len() as u64;
        if let Some(conflict) = self.find_conflict(&entries) {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with the committed log (commit {})",
                self.committed
            );
            let skip = usize::try_from(conflict - prev_index - 1).expect("index fits usize");
            self.append(entries.into_iter().skip(skip).collect());
        }
        self.commit_to(leader_commit.min(last_new_index));
        Some(last_new_index)
    }

    /// Appends entries whose indexes continue (or overwrite part of) the log.
    pub fn append(&mut self, entries: Vec<Entry>) -> u64 {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(
            first.index > self.committed,
            "append at {} would overwrite committed index {}",
            first.index,
            self.committed
        );
        self.unstable.truncate_and_append(entries);
        self.last_index()
    }

    /// # Panics
    /// If `to` is beyond the last index: the log was lost or corrupted.
    pub fn commit_to(&mut self, to: u64) {
        if to <= self.committed {
            return;
        }
        assert!(
            to <= self.last_index(),
            "commit {to} is beyond the last index {}; was the log lost?",
            self.last_index()
        );
        self.committed = to;
    }

    /// The leader's rule: commit `index` only if it holds an entry of the current term.
    pub fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        if index > self.committed && self.term(index) == Ok(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// # Panics
    /// If `index` is beyond the commit index or below what was already applied.
    pub fn applied_to(&mut self, index: u64) {
        if index == 0 {
            return;
        }
        assert!(
            index <= self.committed && index >= self.applied,
            "applied {index} is outside {}..={}",
            self.applied,
            self.committed
        );
        self.applied = index;
    }

    /// Committed entries not yet handed out for applying, up to `max_bytes`.
    pub fn next_committed_entries(&self, max_bytes: u64) -> Vec<Entry> {
        let low = (self.applied + 1).max(self.first_index());
        if self.committed < low {
            return Vec::new();
        }
        self.slice(low, self.committed + 1, max_bytes)
            .unwrap_or_else(|e| fatal("committed entries", &e))
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.committed >= (self.applied + 1).max(self.first_index())
    }

    /// Whether a committed but unapplied entry changes the configuration: a node must not
    /// campaign under a configuration it is about to leave.
    pub fn has_unapplied_conf_changes(&self) -> bool {
        let low = (self.applied + 1).max(self.first_index());
        if self.committed < low {
            return false;
        }
        let mut next = low;
        while next <= self.committed {
            let batch = self
                .slice(next, self.committed + 1, 1024 * 1024)
                .unwrap_or_else(|e| fatal("committed entries", &e));
            if batch.iter().any(|e| e.kind == EntryKind::ConfChange) {
                return true;
            }
            next += batch.len() as u64;
        }
        false
    }

    /// The runtime persisted entries up to `index` of `term`; drop them from the unstable
    /// tail unless they were overwritten in the meantime.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if self.unstable.term(index) != Some(term) || index < self.unstable.offset {
            return;
        }
        let drop = usize::try_from(index + 1 - self.unstable.offset).expect("index fits usize");
        self.unstable.entries.drain(..drop);
        self.unstable.offset = index + 1;
    }

    pub fn stable_snapshot_to(&mut self, index: u64) {
        if self
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.metadata.index == index)
        {
            self.unstable.snapshot = None;
        }
    }

    /// Replaces the log with `snapshot` (not yet persisted).
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.metadata.index;
        assert!(
            index > self.committed,
            "restoring snapshot {index} at or below commit {}",
            self.committed
        );
        self.committed = index;
        self.unstable.entries.clear();
        self.unstable.offset = index + 1;
        self.unstable.snapshot = Some(snapshot);
    }

    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        if let Some(snapshot) = &self.unstable.snapshot {
            return Ok(snapshot.clone());
        }
        match self.storage.snapshot() {
            Ok(snapshot) => Ok(snapshot),
            Err(StorageError::SnapshotTemporarilyUnavailable) => {
                Err(StorageError::SnapshotTemporarilyUnavailable)
            }
            Err(error) => fatal("the snapshot", &error),
        }
    }

    pub fn unstable_size_bytes(&self) -> u64 {
        self.unstable.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            ..Entry::default()
        }
    }

    fn log_with_terms(stored: &[u64], unstable: &[u64]) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        let stored_entries: Vec<Entry> = (1..).zip(stored).map(|(i, &t)| entry(i, t)).collect();
        storage.append(&stored_entries);
        let mut log = RaftLog::new(storage);
        let first_unstable = stored.len() as u64 + 1;
        log.append(
            (first_unstable..)
                .zip(unstable)
                .map(|(i, &t)| entry(i, t))
                .collect(),
        );
        log
    }

    #[test]
    fn reads_span_storage_and_unstable() {
        let log = log_with_terms(&[1, 1, 2], &[3, 3]);
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.persisted_last_index(), Some(3));
        let terms: Vec<u64> = (0..=5).map(|i| log.term(i).unwrap()).collect();
        assert_eq!(terms, [0, 1, 1, 2, 3, 3]);
        let all = log.slice(2, 6, u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        let limited = log.slice(2, 6, 2 * Entry::OVERHEAD_BYTES).unwrap();
        assert_eq!(limited.len(), 2);
    }

    /// Data-driven: (stored terms, unstable terms, append prev index, prev term, entries'
    /// terms, expected result, expected terms of the log afterwards).
    #[test]
    fn maybe_append_cases() {
        type Case = (
            &'static [u64],
            u64,
            u64,
            &'static [u64],
            Option<u64>,
            &'static [u64],
        );
        let cases: &[Case] = &[
            // Matching append at the end.
            (&[1, 1, 2], 3, 2, &[2, 3], Some(5), &[1, 1, 2, 2, 3]),
            // Mismatched previous term: rejected, log unchanged.
            (&[1, 1, 2], 3, 3, &[3], None, &[1, 1, 2]),
            // Gap: rejected.
            (&[1, 1, 2], 5, 2, &[2], None, &[1, 1, 2]),
            // Duplicate: nothing changes, still matches up to the last new index.
            (&[1, 1, 2], 1, 1, &[1], Some(2), &[1, 1, 2]),
            // Conflict: suffix overwritten.
            (&[1, 1, 2, 2], 2, 1, &[3, 3, 3], Some(5), &[1, 1, 3, 3, 3]),
        ];
        for (stored, prev_index, prev_term, new_terms, expected, after) in cases {
            let mut log = log_with_terms(stored, &[]);
            let entries = (prev_index + 1..)
                .zip(new_terms.iter())
                .map(|(i, &t)| entry(i, t))
                .collect();
            let result = log.maybe_append(*prev_index, *prev_term, 0, entries);
            assert_eq!(
                result, *expected,
                "case {stored:?} prev {prev_index}/{prev_term}"
            );
            let terms: Vec<u64> = (1..=log.last_index())
                .map(|i| log.term(i).unwrap())
                .collect();
            assert_eq!(
                terms, *after,
                "case {stored:?} prev {prev_index}/{prev_term}"
            );
        }
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4, 4], &[]);
        assert_eq!(log.find_conflict_by_term(7, 3), (5, 2));
        assert_eq!(log.find_conflict_by_term(7, 4), (7, 4));
        assert_eq!(log.find_conflict_by_term(9, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(7, 0), (0, 0));
    }

    #[test]
    fn stable_to_ignores_overwritten_entries() {
        let mut log = log_with_terms(&[1], &[1, 1]);
        log.append(vec![entry(3, 2)]);
        log.stable_to(3, 1);
        assert_eq!(log.unstable.entries.len(), 2);
        log.stable_to(3, 2);
        assert!(log.unstable.entries.is_empty());
        assert_eq!(log.unstable.offset, 4);
    }

    #[test]
    #[should_panic(expected = "conflicts with the committed log")]
    fn overwriting_a_committed_entry_panics() {
        let mut log = log_with_terms(&[1, 1, 1], &[]);
        log.commit_to(3);
        log.maybe_append(1, 1, 3, vec![entry(2, 2)]);
    }
}
