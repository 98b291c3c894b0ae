//! A store shipped as a snapshot arrives whole and identical, or not at all.

use super::*;

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::open(&dir.path().join(name)).unwrap()
}

/// A store with history, a compaction, a lease, a membership change and auth records.
fn populated(dir: &tempfile::TempDir) -> Store {
    let store = open(dir, "leader");
    let mut index = 1;
    for round in 0..3 {
        for key in 0..50 {
            index += 1;
            let mut txn = store.write(index).unwrap();
            txn.put(
                format!("key/{key:03}").as_bytes(),
                format!("value {round}").into_bytes(),
                0,
            )
            .unwrap();
            txn.commit(false).unwrap();
        }
    }
    index += 1;
    let mut txn = store.write(index).unwrap();
    txn.delete_range(b"key/000", RangeEnd::Single).unwrap();
    txn.grant_lease(StoredLease {
        id: 7,
        ttl_secs: 30,
    })
    .unwrap();
    txn.put_member_raft(9, b"member nine").unwrap();
    txn.auth_put(AuthTable::Users, "alice", b"user record")
        .unwrap();
    txn.set_auth_state(true, 4).unwrap();
    txn.commit(false).unwrap();
    index += 1;
    let revision = store.revision() - 20;
    store.compact(revision, index).unwrap();
    // An entry applied without a change still moves the consistent index.
    store.skip(index + 1);
    // The last writes are still in memory, not in redb: the snapshot has them too.
    for key in 0..5 {
        let mut txn = store.write(index + 2 + key).unwrap();
        txn.put(format!("late/{key}").as_bytes(), b"late".to_vec(), 0)
            .unwrap();
        txn.commit(false).unwrap();
    }
    assert!(!store.read_state().unflushed.is_empty());
    store
}

fn write_file(store: &Store, path: &std::path::Path) -> u64 {
    let snapshot = store.snapshot().unwrap();
    let file = std::fs::File::create(path).unwrap();
    snapshot.write_to(file).unwrap()
}

fn assert_same(a: &Store, b: &Store) {
    assert_eq!(a.revision(), b.revision());
    assert_eq!(a.compact_revision(), b.compact_revision());
    assert_eq!(a.consistent_index(), b.consistent_index());
    assert_eq!(a.key_count(), b.key_count());
    assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    assert_eq!(a.leases().unwrap(), b.leases().unwrap());
    assert_eq!(
        a.membership_changes().unwrap(),
        b.membership_changes().unwrap()
    );
    assert_eq!(a.read_auth().unwrap().1, b.read_auth().unwrap().1);
    let all = |store: &Store| {
        store
            .range(
                b"\0",
                RangeEnd::from_request(b"\0"),
                &RangeOptions::default(),
            )
            .unwrap()
            .kvs
    };
    assert_eq!(all(a), all(b));
}

#[test]
fn an_installed_snapshot_is_the_same_store_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let leader = populated(&dir);
    let path = dir.path().join("snap");
    let bytes = write_file(&leader, &path);
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());

    // The receiver had state of its own, all of which is replaced.
    let follower = open(&dir, "follower");
    let mut txn = follower.write(1).unwrap();
    txn.put(b"stale", b"gone".to_vec(), 0).unwrap();
    txn.commit(false).unwrap();
    let auth_version = follower.auth_version();

    let header = follower.install(&path).unwrap();
    assert_eq!(header.consistent_index, leader.consistent_index());
    assert!(follower.auth_version() > auth_version);
    assert_same(&leader, &follower);
    drop(follower);
    let reopened = open(&dir, "follower");
    assert_same(&leader, &reopened);
    // Writes go on from where the leader was.
    let index = reopened.consistent_index() + 1;
    let mut txn = reopened.write(index).unwrap();
    txn.put(b"next", b"x".to_vec(), 0).unwrap();
    assert_eq!(txn.commit(false).unwrap(), leader.revision() + 1);
}

#[test]
fn a_damaged_snapshot_is_refused_and_the_store_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let leader = populated(&dir);
    let path = dir.path().join("snap");
    write_file(&leader, &path);
    let good = std::fs::read(&path).unwrap();

    let follower = open(&dir, "follower");
    let mut txn = follower.write(1).unwrap();
    txn.put(b"mine", b"kept".to_vec(), 0).unwrap();
    txn.commit(false).unwrap();
    let before = follower.hash_kv(0).unwrap();

    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte", {
            let mut bytes = good.clone();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x20;
            bytes
        }),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("cut mid-record", good[..good.len() / 3].to_vec()),
        ("trailing garbage", {
            let mut bytes = good.clone();
            bytes.push(0);
            bytes
        }),
        ("not a snapshot", b"hello".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&path, &bytes).unwrap();
        let error = follower.install(&path).expect_err(what);
        assert!(
            matches!(error, MvccError::Snapshot(_)),
            "{what}: unexpected error {error}"
        );
        assert_eq!(follower.hash_kv(0).unwrap(), before, "{what}");
    }
}

/// Every single-byte corruption is caught before the store changes (the decoders of redb trust
/// their input, so nothing unchecked may reach them).
#[test]
fn every_flipped_byte_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "small");
    let mut txn = store.write(1).unwrap();
    txn.put(b"a", b"1".to_vec(), 0).unwrap();
    txn.grant_lease(StoredLease { id: 1, ttl_secs: 5 }).unwrap();
    txn.commit(false).unwrap();
    let path = dir.path().join("snap");
    write_file(&store, &path);
    let good = std::fs::read(&path).unwrap();
    let target = open(&dir, "target");
    for offset in 0..good.len() {
        let mut bytes = good.clone();
        bytes[offset] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(target.install(&path).is_err(), "offset {offset}");
    }
    assert_eq!(target.revision(), 1);
}
