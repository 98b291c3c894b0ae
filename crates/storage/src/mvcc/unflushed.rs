//! Applied `kv` records not yet written to redb, in revision order (etcd's read buffer).
//!
//! A redb commit has a fixed cost (root updates, checksums, page bookkeeping) that dwarfs one
//! small record, so applied writes gather here and reach redb together, in one commit per
//! [`RECORDS_MAX`] records or [`BYTES_MAX`] bytes (or sooner, when something needs redb
//! current: a durable sync, a compaction, a snapshot, a hash, a lease, auth or membership
//! change). Readers look here first: a record is removed only after the commit holding it, so
//! every revision is in one place or the other, and for revisions below [`Unflushed::first`]
//! redb is the one to ask.

use std::collections::VecDeque;
use std::sync::Arc;

/// An encoded `kv` record, shared with readers that copy it out under the store's lock.
pub type SharedRecord = Arc<Vec<u8>>;

/// Records gathered before a commit is due: a commit per ~1,000 small writes instead of per
/// batch of a few (one per Raft Ready), and a bound on the memory held.
pub const RECORDS_MAX: usize = 256;
/// Likewise, by size: large values reach redb sooner.
pub const BYTES_MAX: usize = 4 << 20;
/// How far past full the records may grow while a commit waits (a durable sync is running).
const OVER_BOUND: usize = 8;

#[derive(Debug, Default)]
pub struct Unflushed {
    /// `((main, sub), record)`, revisions strictly increasing.
    records: VecDeque<((i64, i64), SharedRecord)>,
    bytes: usize,
}

impl Unflushed {
    /// Appends the record of `revision`, which must be newer than every record held.
    pub fn push(&mut self, revision: (i64, i64), record: Vec<u8>) {
        assert!(
            self.records.back().is_none_or(|(last, _)| *last < revision),
            "record {revision:?} is not newer than the last one held"
        );
        self.bytes += record.len();
        self.records.push_back((revision, Arc::new(record)));
    }

    /// The record of `revision`, when it is held here.
    pub fn get(&self, revision: (i64, i64)) -> Option<&SharedRecord> {
        self.records
            .binary_search_by_key(&revision, |(held, _)| *held)
            .ok()
            .map(|at| &self.records[at].1)
    }

    /// The oldest revision held: redb holds every record before it.
    pub fn first(&self) -> Option<(i64, i64)> {
        self.records.front().map(|(revision, _)| *revision)
    }

    /// The newest revision held.
    pub fn last(&self) -> Option<(i64, i64)> {
        self.records.back().map(|(revision, _)| *revision)
    }

    /// Every record held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &((i64, i64), SharedRecord)> {
        self.records.iter()
    }

    /// The records of main revisions `from` and later, oldest first.
    pub fn since(&self, from: i64) -> impl Iterator<Item = &((i64, i64), SharedRecord)> {
        let start = self.records.partition_point(|((main, _), _)| *main < from);
        self.records.range(start..)
    }

    /// Forgets the records up to and including `revision`: a commit now holds them.
    pub fn remove_through(&mut self, revision: (i64, i64)) {
        while let Some((held, record)) = self.records.front() {
            if *held > revision {
                break;
            }
            self.bytes -= record.len();
            self.records.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A commit is due.
    pub fn is_full(&self) -> bool {
        self.records.len() >= RECORDS_MAX || self.bytes >= BYTES_MAX
    }

    /// A commit is overdue (nobody made it, or a durable sync has been running for long):
    /// the next writer makes it, whatever it waits for.
    pub fn is_over_bound(&self) -> bool {
        self.records.len() >= OVER_BOUND * RECORDS_MAX || self.bytes >= OVER_BOUND * BYTES_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(unflushed: &Unflushed) -> Vec<(i64, i64)> {
        unflushed.iter().map(|(revision, _)| *revision).collect()
    }

    #[test]
    fn records_are_found_by_revision_until_removed() {
        let mut unflushed = Unflushed::default();
        for main in 2..6 {
            unflushed.push((main, 0), vec![main as u8]);
            unflushed.push((main, 1), vec![main as u8, 1]);
        }
        assert_eq!(
            unflushed.get((3, 1)).map(|r| r.as_slice()),
            Some(&[3, 1][..])
        );
        assert_eq!(unflushed.get((6, 0)), None);
        assert_eq!(unflushed.first(), Some((2, 0)));
        assert_eq!(unflushed.last(), Some((5, 1)));
        assert_eq!(
            unflushed.since(4).map(|(r, _)| *r).collect::<Vec<_>>(),
            [(4, 0), (4, 1), (5, 0), (5, 1)]
        );
        unflushed.remove_through((3, 1));
        assert_eq!(held(&unflushed), [(4, 0), (4, 1), (5, 0), (5, 1)]);
        assert_eq!(unflushed.get((3, 1)), None, "redb has it now");
        assert_eq!(unflushed.bytes, 6);
        unflushed.clear();
        assert!(unflushed.is_empty() && unflushed.bytes == 0);
    }

    #[test]
    fn lookups_work_across_the_ring_buffers_wrap() {
        let mut unflushed = Unflushed::default();
        for main in 1..=10 {
            unflushed.push((main, 0), vec![0]);
        }
        unflushed.remove_through((7, 0));
        for main in 11..=20 {
            unflushed.push((main, 0), vec![0]);
        }
        for main in 8..=20 {
            assert!(unflushed.get((main, 0)).is_some(), "revision {main}");
        }
        assert_eq!(unflushed.since(15).count(), 6);
    }

    #[test]
    fn it_is_full_by_count_or_by_size() {
        let mut unflushed = Unflushed::default();
        for main in 0..RECORDS_MAX as i64 - 1 {
            unflushed.push((main, 0), vec![0]);
        }
        assert!(!unflushed.is_full());
        unflushed.push((RECORDS_MAX as i64, 0), vec![0]);
        assert!(unflushed.is_full());
        assert!(!unflushed.is_over_bound());
        let mut big = Unflushed::default();
        big.push((1, 0), vec![0; BYTES_MAX]);
        assert!(big.is_full());
    }

    #[test]
    #[should_panic(expected = "not newer")]
    fn records_must_come_in_revision_order() {
        let mut unflushed = Unflushed::default();
        unflushed.push((3, 0), vec![]);
        unflushed.push((2, 0), vec![]);
    }
}
