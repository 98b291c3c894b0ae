//! The in-memory index from a key to the revisions that changed it, as etcd keeps it.
//!
//! A key's history is a list of generations. A generation starts with the put that created the
//! key and ends with the tombstone that deleted it; the last generation is the live one (or empty
//! after a delete). Reading a key "at revision r" finds the generation alive at r and, in it, the
//! newest revision not after r.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::Revision;

/// One life of a key: from its creation to its tombstone (the last revision of a closed
/// generation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Number of puts in this generation, including any compacted away.
    version: i64,
    created: Revision,
    revisions: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }
}

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

/// The history of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIndex {
    modified: Revision,
    generations: Vec<Generation>,
}

impl KeyIndex {
    /// Records a put at `revision`.
    pub fn put(&mut self, revision: Revision) {
        assert!(
            revision > self.modified || self.generations.is_empty(),
            "put at {revision:?} is not after the last modification {:?}",
            self.modified
        );
        if self.generations.is_empty() {
            // Most keys have one generation of one revision: exact capacities keep a million
            // keys ~190 MB smaller than Vec's growth from 4 would.
            self.generations = vec![Generation::default()];
        }
        let generation = self
            .generations
            .last_mut()
            .expect("just ensured a generation");
        if generation.is_empty() {
            generation.created = revision;
            generation.revisions.reserve_exact(1);
        }
        generation.revisions.push(revision);
        generation.version += 1;
        self.modified = revision;
    }

    /// Rebuilds the live generation of a key from a stored record, whose earlier history may
    /// have been compacted away.
    pub fn restore(&mut self, created: Revision, modified: Revision, version: i64) {
        debug_assert!(self.generations.is_empty());
        self.modified = modified;
        self.generations = vec![Generation {
            version,
            created,
            revisions: vec![modified],
        }];
    }

    /// Records a delete at `revision`: the tombstone closes the live generation.
    pub fn tombstone(&mut self, revision: Revision) {
        if self.is_empty() {
            // Only when restoring history that starts with a tombstone (its put was compacted):
            // the generation holds just its end.
            self.generations = vec![Generation {
                version: 1,
                created: revision,
                revisions: vec![revision],
            }];
            self.modified = revision;
        } else {
            self.put(revision);
        }
        self.generations.reserve_exact(1);
        self.generations.push(Generation::default());
    }

    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(Generation::is_empty)
    }

    /// The state of the key at revision `at`, or None when it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let generation = self.find_generation(at)?;
        // The newest revision of the generation that is not after `at`.
        let position = generation
            .revisions
            .iter()
            .rposition(|revision| revision.main <= at)?;
        let newer = generation.revisions.len() - position - 1;
        Some(KeyAt {
            modified: generation.revisions[position],
            created: generation.created,
            version: generation.version - newer as i64,
        })
    }

    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (position, generation) in self.generations.iter().enumerate().rev() {
            let Some(first) = generation.revisions.first() else {
                continue;
            };
            if position != last {
                let tombstone = generation.revisions.last().expect("non-empty generation");
                if tombstone.main <= at {
                    return None;
                }
            }
            if first.main <= at {
                return Some(generation);
            }
        }
        None
    }

    /// Drops history older than `at`, keeping the revision each generation had at `at` (so reads
    /// at `at` still work). Revisions that must stay in the backend are added to `keep`.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() {
            return;
        }
        // The first generation that was alive at `at` or created after it.
        let mut generation_index = 0;
        while generation_index < self.generations.len() - 1 {
            let generation = &self.generations[generation_index];
            let tombstone = generation
                .revisions
                .last()
                .expect("closed generations are non-empty");
            if tombstone.main > at {
                break;
            }
            generation_index += 1;
        }
        let last = self.generations.len() - 1;
        let generation = &mut self.generations[generation_index];
        if !generation.is_empty() {
            if let Some(position) = generation
                .revisions
                .iter()
                .rposition(|revision| revision.main <= at)
            {
                keep.insert(generation.revisions[position]);
                generation.revisions.drain(..position);
            }
            // A generation that is only its tombstone is history nobody can read any more.
            if generation.revisions.len() == 1 && generation_index != last {
                keep.remove(&generation.revisions[0]);
                generation_index += 1;
            }
        }
        self.generations.drain(..generation_index);
    }
}

/// All keys' histories, ordered by key.
#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// Where a range stops (etcd's conventions for `range_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Only the key itself (an empty `range_end`).
    Single,
    /// Every key from the key on (`range_end` is `"\0"`).
    Unbounded,
    /// Keys before this one (exclusive).
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    /// Reads a request's `range_end` field as etcd does.
    pub fn from_request(range_end: &'a [u8]) -> RangeEnd<'a> {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        }
    }
}

impl TreeIndex {
    /// Records a put of `key` at `revision` and returns the key's state just before it (None
    /// when it was not alive). One lookup, and no copy of a key the index already holds: this
    /// is on every put's path.
    pub fn put(&mut self, key: &[u8], revision: Revision) -> Option<KeyAt> {
        if let Some(index) = self.keys.get_mut(key) {
            let before = index.get(revision.main);
            index.put(revision);
            return before;
        }
        let mut index = KeyIndex::default();
        index.put(revision);
        self.keys.insert(key.to_vec(), index);
        None
    }

    pub fn tombstone(&mut self, key: &[u8], revision: Revision) {
        self.keys
            .entry(key.to_vec())
            .or_default()
            .tombstone(revision);
    }

    pub fn key_index_mut(&mut self, key: &[u8]) -> &mut KeyIndex {
        self.keys.entry(key.to_vec()).or_default()
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key)?.get(at)
    }

    /// Calls `visit` with each key in the range alive at `at`, in key order, until it returns
    /// false.
    pub fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        at: i64,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        let upper = match end {
            RangeEnd::Single => {
                if let Some(found) = self.get(key, at) {
                    visit(key, found);
                }
                return;
            }
            RangeEnd::Unbounded => Bound::Unbounded,
            RangeEnd::Before(end) if end <= key => return,
            RangeEnd::Before(end) => Bound::Excluded(end),
        };
        for (name, index) in self.keys.range::<[u8], _>((Bound::Included(key), upper)) {
            if let Some(found) = index.get(at) {
                if !visit(name, found) {
                    return;
                }
            }
        }
    }

    /// Compacts every key's history at `at`; returns the revisions at or before `at` that are
    /// still readable and so must stay in the backend.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, index| {
            index.compact(at, &mut keep);
            !index.is_empty()
        });
        keep
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// etcd's reference history: put 2, 4, 6, delete 8, put 10, 12, delete 14, put 16.
    fn history() -> KeyIndex {
        let mut index = KeyIndex::default();
        index.put(rev(2));
        index.put(rev(4));
        index.put(rev(6));
        index.tombstone(rev(8));
        index.put(rev(10));
        index.put(rev(12));
        index.tombstone(rev(14));
        index.put(rev(16));
        index
    }

    #[test]
    fn put_returns_the_state_before_it() {
        let mut tree = TreeIndex::default();
        assert_eq!(tree.put(b"k", rev(2)), None);
        let before = tree.put(b"k", rev(3)).expect("alive");
        assert_eq!(
            (before.created, before.modified, before.version),
            (rev(2), rev(2), 1)
        );
        tree.tombstone(b"k", rev(4));
        assert_eq!(tree.put(b"k", rev(5)), None, "a deleted key starts over");
        let before = tree.put(b"k", rev(6)).expect("alive");
        assert_eq!(
            (before.created, before.modified, before.version),
            (rev(5), rev(5), 1)
        );
        assert_eq!(tree.get(b"k", 6).map(|now| now.version), Some(2));
    }

    #[test]
    fn get_finds_the_revision_alive_at_each_point_in_history() {
        let index = history();
        // (read at, expected (modified, created, version))
        type Case = (i64, Option<(i64, i64, i64)>);
        let cases: &[Case] = &[
            (1, None),
            (2, Some((2, 2, 1))),
            (3, Some((2, 2, 1))),
            (5, Some((4, 2, 2))),
            (7, Some((6, 2, 3))),
            (8, None),
            (9, None),
            (10, Some((10, 10, 1))),
            (13, Some((12, 10, 2))),
            (14, None),
            (15, None),
            (16, Some((16, 16, 1))),
            (100, Some((16, 16, 1))),
        ];
        for &(at, expected) in cases {
            let got = index
                .get(at)
                .map(|found| (found.modified.main, found.created.main, found.version));
            assert_eq!(got, expected, "get at {at}");
        }
    }

    #[test]
    fn compaction_keeps_what_is_readable_at_the_compacted_revision() {
        // (compact at, revisions kept in the backend, reads that must still work)
        let cases: &[(i64, &[i64])] = &[
            (1, &[]),
            (2, &[2]),
            (5, &[4]),
            (7, &[6]),
            (8, &[]),
            (9, &[]),
            (11, &[10]),
            (14, &[]),
            (16, &[16]),
        ];
        for &(at, kept) in cases {
            let mut index = history();
            let before: Vec<_> = (at..20).map(|r| index.get(r)).collect();
            let mut keep = HashSet::new();
            index.compact(at, &mut keep);
            let mut kept_mains: Vec<i64> = keep.iter().map(|r| r.main).collect();
            kept_mains.sort();
            assert_eq!(kept_mains, kept, "kept at {at}");
            let after: Vec<_> = (at..20).map(|r| index.get(r)).collect();
            assert_eq!(
                before, after,
                "reads at or after {at} unchanged by compaction"
            );
        }
    }

    #[test]
    fn compaction_of_a_deleted_key_empties_its_index() {
        let mut index = KeyIndex::default();
        index.put(rev(2));
        index.tombstone(rev(3));
        let mut keep = HashSet::new();
        index.compact(3, &mut keep);
        assert!(index.is_empty());
        assert!(keep.is_empty());
    }

    #[test]
    fn range_visits_live_keys_in_order() {
        let mut tree = TreeIndex::default();
        tree.put(b"a", rev(2));
        tree.put(b"b", rev(3));
        tree.tombstone(b"b", rev(4));
        tree.put(b"c", rev(5));
        let collect = |end, at| {
            let mut keys = Vec::new();
            tree.range(b"a", end, at, |key, _| {
                keys.push(String::from_utf8(key.to_vec()).unwrap());
                true
            });
            keys
        };
        assert_eq!(collect(RangeEnd::Unbounded, 5), ["a", "c"]);
        assert_eq!(collect(RangeEnd::Unbounded, 3), ["a", "b"]);
        assert_eq!(collect(RangeEnd::Before(b"c"), 5), ["a"]);
        assert_eq!(collect(RangeEnd::Single, 5), ["a"]);
        assert_eq!(collect(RangeEnd::Before(b"a"), 5), Vec::<String>::new());
    }
}
