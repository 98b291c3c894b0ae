//! The store against etcd's revision model: revisions, generations, history, compaction, and
//! rebuilding the index from disk.

use super::*;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("db")).unwrap()
}

fn put(store: &Store, index: u64, key: &str, value: &str) -> i64 {
    let mut txn = store.write(index).unwrap();
    txn.put(key.as_bytes(), value.as_bytes().to_vec(), 0)
        .unwrap();
    txn.commit(false).unwrap()
}

fn delete(store: &Store, index: u64, key: &str, end: RangeEnd<'_>) -> i64 {
    let mut txn = store.write(index).unwrap();
    let (deleted, _) = txn.delete_range(key.as_bytes(), end).unwrap();
    assert!(deleted > 0);
    txn.commit(false).unwrap()
}

fn get(
    store: &Store,
    key: &str,
    revision: i64,
) -> Result<Option<(String, i64, i64, i64)>, MvccError> {
    let options = RangeOptions {
        revision,
        ..RangeOptions::default()
    };
    let result = store.range(key.as_bytes(), RangeEnd::Single, &options)?;
    Ok(result.kvs.first().map(|kv| {
        (
            String::from_utf8(kv.value.clone()).unwrap(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
        )
    }))
}

#[test]
fn each_write_raises_the_revision_by_one_starting_after_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.revision(), 1);
    assert_eq!(put(&store, 1, "a", "1"), 2);
    assert_eq!(put(&store, 2, "a", "2"), 3);
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
    // A transaction without changes leaves the revision alone.
    let txn = store.write(3).unwrap();
    assert_eq!(txn.commit(false).unwrap(), 3);
}

#[test]
fn a_delete_ends_a_generation_and_a_new_put_starts_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, 1, "k", "a"); // 2
    put(&store, 2, "k", "b"); // 3
    delete(&store, 3, "k", RangeEnd::Single); // 4
    put(&store, 4, "k", "c"); // 5
    assert_eq!(get(&store, "k", 3).unwrap(), Some(("b".into(), 2, 3, 2)));
    assert_eq!(get(&store, "k", 4).unwrap(), None);
    assert_eq!(get(&store, "k", 5).unwrap(), Some(("c".into(), 5, 5, 1)));
}

#[test]
fn all_changes_of_one_transaction_share_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, 1, "a", "1");
    let mut txn = store.write(2).unwrap();
    assert_eq!(txn.put(b"b", b"2".to_vec(), 0).unwrap(), 3);
    assert_eq!(txn.put(b"c", b"3".to_vec(), 0).unwrap(), 3);
    // Reads inside the transaction see its own writes.
    assert_eq!(
        txn.range(b"a", RangeEnd::Unbounded, &RangeOptions::default())
            .unwrap()
            .count,
        3
    );
    assert_eq!(txn.delete_range(b"a", RangeEnd::Single).unwrap(), (1, 3));
    assert_eq!(txn.commit(false).unwrap(), 3);
    let all = store
        .range(b"a", RangeEnd::Unbounded, &RangeOptions::default())
        .unwrap();
    let keys: Vec<_> = all
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    assert_eq!(keys, [(b"b".to_vec(), 3), (b"c".to_vec(), 3)]);
}

#[test]
fn compaction_keeps_reads_at_or_after_it_and_refuses_reads_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, 1, "a", "1"); // 2
    put(&store, 2, "a", "2"); // 3
    put(&store, 3, "b", "1"); // 4
    delete(&store, 4, "b", RangeEnd::Single); // 5
    put(&store, 5, "a", "3"); // 6
    let before: Vec<_> = (4..=6)
        .map(|revision| {
            (
                get(&store, "a", revision).unwrap(),
                get(&store, "b", revision).unwrap(),
            )
        })
        .collect();
    store.compact(4, 6).unwrap();
    let after: Vec<_> = (4..=6)
        .map(|revision| {
            (
                get(&store, "a", revision).unwrap(),
                get(&store, "b", revision).unwrap(),
            )
        })
        .collect();
    assert_eq!(before, after);
    assert!(matches!(get(&store, "a", 3), Err(MvccError::Compacted)));
    assert!(matches!(store.compact(4, 7), Err(MvccError::Compacted)));
    assert!(matches!(
        store.compact(99, 7),
        Err(MvccError::FutureRevision)
    ));
    assert!(matches!(
        get(&store, "a", 99),
        Err(MvccError::FutureRevision)
    ));
}

#[test]
fn reopening_rebuilds_the_index_history_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        put(&store, 1, "a", "1"); // 2
        put(&store, 2, "a", "2"); // 3
        put(&store, 3, "b", "1"); // 4
        delete(&store, 4, "b", RangeEnd::Single); // 5
        put(&store, 5, "a", "3"); // 6
        store.compact(3, 6).unwrap();
        store.sync().unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.revision(), 6);
    assert_eq!(store.compact_revision(), 3);
    assert_eq!(store.consistent_index(), 6);
    assert_eq!(get(&store, "a", 3).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("3".into(), 2, 6, 3)));
    assert_eq!(get(&store, "b", 4).unwrap(), Some(("1".into(), 4, 4, 1)));
    assert_eq!(get(&store, "b", 5).unwrap(), None);
    // The version keeps counting after a restart over compacted history.
    assert_eq!(put(&store, 7, "a", "4"), 7);
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("4".into(), 2, 7, 4)));
}

#[test]
fn limit_and_count_only_count_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for (index, key) in ["a", "b", "c", "d"].iter().enumerate() {
        put(&store, index as u64 + 1, key, "v");
    }
    let limited = store
        .range(
            b"a",
            RangeEnd::Unbounded,
            &RangeOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.count), (2, 4));
    let counted = store
        .range(
            b"b",
            RangeEnd::Before(b"d"),
            &RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 2));
}

#[test]
fn changes_come_in_revision_order_and_never_split_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, 1, "a", "1"); // 2
    let mut txn = store.write(2).unwrap();
    txn.put(b"b", b"1".to_vec(), 0).unwrap();
    txn.put(b"c", b"1".to_vec(), 0).unwrap();
    txn.commit(false).unwrap(); // 3
    delete(&store, 3, "a", RangeEnd::Single); // 4

    let all = store.changes(2, 100).unwrap();
    let seen: Vec<_> = all
        .changes
        .iter()
        .map(|change| (change.kind, change.kv.key.clone(), change.kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        [
            (ChangeKind::Put, b"a".to_vec(), 2),
            (ChangeKind::Put, b"b".to_vec(), 3),
            (ChangeKind::Put, b"c".to_vec(), 3),
            (ChangeKind::Delete, b"a".to_vec(), 4),
        ]
    );
    assert_eq!(all.through_revision, 4);
    // A limit of 2 still returns all of revision 3.
    let first = store.changes(2, 2).unwrap();
    assert_eq!((first.changes.len(), first.through_revision), (3, 3));
    assert_eq!(
        store.changes(5, 10).unwrap(),
        Changes {
            changes: vec![],
            through_revision: 4
        }
    );
    store.compact(3, 4).unwrap();
    assert!(matches!(store.changes(2, 10), Err(MvccError::Compacted)));
    assert_eq!(
        store.changes(3, 10).unwrap().changes.len(),
        3,
        "b and c at 3 are kept, then the delete"
    );
}

#[test]
fn leases_survive_reopening_with_the_keys_that_still_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut txn = store.write(1).unwrap();
        txn.grant_lease(StoredLease {
            id: 7,
            ttl_secs: 10,
        })
        .unwrap();
        txn.grant_lease(StoredLease {
            id: 8,
            ttl_secs: 20,
        })
        .unwrap();
        assert_eq!(
            txn.commit(false).unwrap(),
            1,
            "a grant changes no key, so no revision"
        );
        let mut txn = store.write(2).unwrap();
        txn.put(b"a", b"1".to_vec(), 7).unwrap();
        txn.put(b"b", b"1".to_vec(), 7).unwrap();
        txn.put(b"c", b"1".to_vec(), 0).unwrap();
        txn.commit(false).unwrap();
        put(&store, 3, "b", "2"); // b no longer holds lease 7
        let mut txn = store.write(4).unwrap();
        txn.revoke_lease(8).unwrap();
        txn.commit(false).unwrap();
        store.sync().unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.leases().unwrap(),
        [LeaseKeys {
            lease: StoredLease {
                id: 7,
                ttl_secs: 10
            },
            keys: vec![b"a".to_vec()]
        }]
    );
}

/// Guards against membership that is lost or half-applied across a restart: member changes
/// commit with their entry's consistent index, and a re-added member is no longer removed.
#[test]
fn membership_changes_commit_with_their_entry_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        let mut txn = store.write(5).unwrap();
        txn.put_member_raft(7, b"seven").unwrap();
        txn.put_member_attributes(7, b"attributes").unwrap();
        txn.commit(false).unwrap();
        let mut txn = store.write(6).unwrap();
        txn.remove_member(7).unwrap();
        txn.remove_member(9).unwrap();
        txn.commit(false).unwrap();
        store.sync().unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.consistent_index(), 6);
    let changes = store.membership_changes().unwrap();
    assert_eq!(changes.members, Vec::<(u64, Vec<u8>)>::new());
    assert_eq!(changes.removed, vec![7, 9]);
    assert!(store.member_attributes().unwrap().is_empty());
    let mut txn = store.write(7).unwrap();
    txn.put_member_raft(7, b"again").unwrap();
    txn.commit(false).unwrap();
    let changes = store.membership_changes().unwrap();
    assert_eq!(changes.members, vec![(7, b"again".to_vec())]);
    assert_eq!(changes.removed, vec![9]);
}

/// Several entries in one redb transaction: each its own revision, one commit, and the same
/// state as applying them one by one (after a reopen too).
#[test]
fn a_batch_of_entries_gets_one_revision_each_and_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut txn = store.write(2).unwrap();
    txn.put(b"a", b"1".to_vec(), 0).unwrap();
    txn.put(b"b", b"1".to_vec(), 0).unwrap();
    txn.next_entry(3);
    // An entry that changes nothing (a failed request) keeps the revision.
    txn.next_entry(4);
    assert_eq!(txn.read_revision(), 2);
    txn.put(b"a", b"2".to_vec(), 0).unwrap();
    assert_eq!(txn.read_revision(), 3);
    txn.next_entry(5);
    let (deleted, revision) = txn.delete_range(b"b", RangeEnd::Single).unwrap();
    assert_eq!((deleted, revision), (1, 4));
    assert_eq!(txn.commit(false).unwrap(), 4);
    assert_eq!(store.consistent_index(), 5);
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(get(&store, "a", 2).unwrap(), Some(("1".into(), 2, 2, 1)));
    assert_eq!(get(&store, "b", 3).unwrap(), Some(("1".into(), 2, 2, 1)));
    assert_eq!(get(&store, "b", 0).unwrap(), None);
    store.sync().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.revision(), 4);
    assert_eq!(store.consistent_index(), 5);
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
}

/// A durable sync flushes everything written since the last one (milliseconds to tens of them):
/// readers go on meanwhile. Here a reader holds the state while another thread syncs; the sync
/// must finish without it (it used to take the write lock, and so waited for every reader and
/// made every reader wait for the flush).
#[test]
fn a_durable_sync_does_not_wait_for_readers_nor_block_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(&dir));
    put(&store, 2, "a", "1");
    let reading = store.read_state();
    let (done, synced) = std::sync::mpsc::channel();
    let syncing = std::sync::Arc::clone(&store);
    let thread = std::thread::spawn(move || {
        let result = syncing.sync();
        let _ = done.send(());
        result
    });
    // Generous: a failure here means the sync waits for the reader.
    let finished = synced.recv_timeout(std::time::Duration::from_secs(30));
    drop(reading);
    thread.join().unwrap().unwrap();
    assert!(finished.is_ok(), "the sync waited for a reader");
    drop(store);
    let store = open(&dir);
    assert_eq!((store.revision(), store.consistent_index()), (2, 2));
}

/// Key changes stay in memory until a commit is due (`Unflushed`): reads at every revision,
/// watch history and hashes are the same as for a store that commits every write to redb at
/// once, across the boundary between the two and through a compaction.
#[test]
fn writes_held_in_memory_read_the_same_as_committed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let committed = Store::open(&dir.path().join("committed")).unwrap();
    let held = Store::open(&dir.path().join("held")).unwrap();
    let mut index = 1;
    let apply = |index: u64, write: &dyn Fn(&mut WriteTxn<'_>)| {
        for store in [&committed, &held] {
            let mut txn = store.write(index).unwrap();
            write(&mut txn);
            txn.commit(false).unwrap();
        }
        committed.flush().unwrap();
    };
    for round in 0..3 {
        for key in 0..40 {
            index += 1;
            apply(index, &|txn| {
                txn.put(
                    format!("k{key:02}").as_bytes(),
                    format!("v{round}").into_bytes(),
                    0,
                )
                .unwrap();
            });
        }
        index += 1;
        apply(index, &|txn| {
            txn.delete_range(b"k05", RangeEnd::Before(b"k08")).unwrap();
        });
        if round == 1 {
            // Half of the history reaches redb; the rest stays in memory.
            held.flush().unwrap();
        }
    }
    // A commit's records are forgotten by the next writer: at most the last write's are left.
    let in_memory = |store: &Store| store.read_state().unflushed.iter().count();
    assert!(in_memory(&committed) <= 3);
    assert_eq!(
        in_memory(&held),
        43,
        "the last round: 40 puts and 3 deletes"
    );
    let same = |what: &str| {
        assert_eq!(committed.revision(), held.revision(), "{what}");
        assert_eq!(
            committed.hash_kv(0).unwrap(),
            held.hash_kv(0).unwrap(),
            "{what}"
        );
        for revision in [0, 2, 41, 42, 80, 83, 100, held.revision()] {
            let all = |store: &Store| {
                let options = RangeOptions {
                    revision,
                    ..RangeOptions::default()
                };
                store.range(b"k", RangeEnd::Before(b"l"), &options)
            };
            assert_eq!(
                all(&committed).ok(),
                all(&held).ok(),
                "{what}: at {revision}"
            );
        }
        // Watch history in small steps, across the boundary.
        let mut from = committed.compact_revision().max(2);
        while from <= committed.revision() {
            let a = committed.changes(from, 7).unwrap();
            let b = held.changes(from, 7).unwrap();
            assert_eq!(a, b, "{what}: changes from {from}");
            from = a.through_revision + 1;
        }
    };
    same("before compacting");
    // A read-write transaction sees history in memory and in redb, and its own changes.
    index += 1;
    apply(index, &|txn| {
        txn.put(b"k00", b"new".to_vec(), 0).unwrap();
        let read = txn
            .range(b"k", RangeEnd::Before(b"l"), &RangeOptions::default())
            .unwrap();
        assert_eq!(read.kvs.len(), 37);
        assert_eq!(read.kvs[0].value, b"new");
        let old = RangeOptions {
            revision: 10,
            ..RangeOptions::default()
        };
        let read = txn.range(b"k00", RangeEnd::Single, &old).unwrap();
        assert_eq!(read.kvs[0].value, b"v0");
    });
    let revision = committed.revision() - 50;
    index += 1;
    committed.compact(revision, index).unwrap();
    held.compact(revision, index).unwrap();
    same("after compacting");
}

/// redb's stored consistent index never names an entry whose records are only in memory: a
/// store dropped (or crashed) with writes held reopens at its last commit, and the log's
/// entries after it are applied again.
#[test]
fn a_store_dropped_with_writes_in_memory_reopens_at_its_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, 2, "a", "1");
    put(&store, 3, "a", "2");
    store.sync().unwrap();
    put(&store, 4, "a", "3");
    put(&store, 5, "b", "1");
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("3".into(), 2, 4, 3)));
    drop(store);
    let store = open(&dir);
    assert_eq!((store.consistent_index(), store.revision()), (3, 3));
    assert_eq!(get(&store, "a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(get(&store, "b", 0).unwrap(), None);
}

/// Records in memory are bounded: `flush_if_full` commits a full set to redb, and the next
/// writer forgets them; a writer that finds them far over that, not flushed, commits them.
#[test]
fn records_in_memory_reach_redb_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let records = super::unflushed::RECORDS_MAX as u64;
    for index in 2..2 + records {
        store.flush_if_full().unwrap();
        put(&store, index, &format!("k{index}"), "v");
    }
    assert_eq!(stored(&store), 0, "not full until the last put");
    store.flush_if_full().unwrap();
    assert_eq!(stored(&store), records);
    put(&store, 2 + records, "last", "v");
    assert_eq!(store.read_state().unflushed.iter().count(), 1);
    assert_eq!(get(&store, "k2", 0).unwrap(), Some(("v".into(), 2, 2, 1)));
    assert_eq!(
        get(&store, "last", 0).unwrap().unwrap().2,
        2 + records as i64
    );

    // Nobody flushes: the writer that finds them far over their bound commits them.
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bound = 8 * records;
    for index in 2..3 + bound {
        put(&store, index, &format!("k{index}"), "v");
    }
    assert_eq!(stored(&store), bound);
    assert_eq!(store.read_state().unflushed.iter().count(), 1);
}

/// Guards against a writeback that fails on the store's own file (it would be skipped
/// silently in the sync thread) or that changes what the store holds.
#[test]
fn writeback_of_committed_pages_changes_nothing_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(
        store.writeback_file.is_some(),
        "the file opened for writeback"
    );
    let records = super::unflushed::RECORDS_MAX as u64;
    for index in 2..2 + records {
        put(&store, index, &format!("k{index}"), "v");
    }
    store.flush_if_full().unwrap();
    assert_eq!(stored(&store), records, "committed, not durable");
    store.start_writeback().unwrap();
    assert_eq!(get(&store, "k2", 0).unwrap(), Some(("v".into(), 2, 2, 1)));
    store.sync().unwrap();
    store.start_writeback().unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(stored(&store), records);
    assert_eq!(store.consistent_index(), 1 + records);
}

/// Records in `kv` as redb holds them (committed).
fn stored(store: &Store) -> u64 {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let read = store.db.begin_read().unwrap();
    read.open_table(backend::KV).unwrap().len().unwrap()
}

/// The durable sync runs beside the applying thread (its commit holds no lock): however it and
/// the applying thread's own commits interleave, what redb holds is the store as of its stored
/// consistent index, never records past it nor an index past its records.
#[test]
fn a_sync_beside_the_writer_keeps_redb_consistent() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut synced = Vec::new();
            while !done.load(Ordering::Relaxed) {
                synced.push(store.sync().unwrap());
            }
            synced
        })
    };
    // Readers meanwhile find every record, in memory or in redb, and miss no change.
    let reader = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let all = RangeOptions::default();
                let found = store.range(b"k", RangeEnd::Before(b"l"), &all).unwrap();
                assert_eq!(found.count, found.kvs.len());
                let from = (found.revision - 400).max(2);
                let changes = store.changes(from, 10_000).unwrap();
                let revisions: Vec<i64> =
                    changes.changes.iter().map(|c| c.kv.mod_revision).collect();
                let expected: Vec<i64> = (from..=changes.through_revision).collect();
                assert_eq!(revisions, expected, "every revision from {from}, once");
                reads += 1;
            }
            reads
        })
    };
    let last = 4000;
    for index in 2..=last {
        put(
            &store,
            index,
            &format!("k{:03}", index % 300),
            &index.to_string(),
        );
        store.flush_if_full().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let synced = syncer.join().unwrap();
    assert!(synced.len() > 1, "the syncs ran beside the writes");
    assert!(
        synced.windows(2).all(|pair| pair[0] <= pair[1]),
        "{synced:?}"
    );
    assert!(*synced.last().unwrap() <= last);
    drop(store);
    let store = open(&dir);
    let applied = store.consistent_index();
    assert!(applied >= *synced.last().unwrap());
    // Entry i is revision i: the index and the records agree.
    assert_eq!(store.revision(), applied as i64);
    for residue in 0..300 {
        let newest = (2..=applied).rev().find(|index| index % 300 == residue);
        let value = get(&store, &format!("k{residue:03}"), 0).unwrap();
        assert_eq!(
            value.map(|(value, ..)| value),
            newest.map(|index| index.to_string())
        );
    }
}
