//! The MVCC store: the in-memory key index over the revision-keyed records in redb.
//!
//! Reads take the state's read lock only to resolve revisions, to copy out the records not yet
//! in redb ([`Unflushed`]) and to open a redb read transaction (which sees every commit made
//! before it); they fetch the other values after releasing it. Writes hold the write lock for
//! the whole transaction, so a reader never sees half of one. A write's `kv` records go to
//! [`Unflushed`], not to redb: they reach redb together, one commit per ~1,000 records
//! ([`Store::flush`]), or sooner when something needs redb current.
//!
//! redb commits are not durable by themselves (`Durability::None`): the write-ahead log is what
//! makes a write durable, and entries after the stored consistent index are applied again on
//! start. `commit(durable = true)` or [`Store::sync`] makes the redb state durable so the log
//! before it can be released.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keel_api::mvccpb::KeyValue;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::backend::{self, Record, KV, LEASES, MEMBERS, MEMBERS_RAFT, MEMBERS_REMOVED, META};
use super::key_index::{KeyAt, RangeEnd, TreeIndex};
use super::unflushed::{SharedRecord, Unflushed};
use super::{MvccError, Revision};

/// How a range is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many keys (0: no limit). `count` still counts them all.
    pub limit: usize,
    /// Read history at this revision (0: the current one).
    pub revision: i64,
    /// Count the keys, return none.
    pub count_only: bool,
}

/// What a range read found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// The store's current revision when it was read (not the revision asked for, as in etcd).
    pub revision: i64,
    /// Keys in the range, before `limit`.
    pub count: usize,
}

/// A consistent view of the store: every range through it reads one revision's state.
pub trait ReadView {
    /// Reads keys in `[key, end)` as of `options.revision` (0: this view's revision).
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError>;
    /// The revision this view reads at.
    fn revision(&self) -> i64;
    /// Reads before this revision fail.
    fn compact_revision(&self) -> i64;
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) index: TreeIndex,
    pub(super) current_revision: i64,
    pub(super) compact_revision: i64,
    pub(super) consistent_index: u64,
    /// Commits that changed the auth tables since the store was opened (in memory only), so
    /// readers of the auth state know cheaply when to read it again.
    pub(super) auth_version: u64,
    /// `kv` records applied but not yet committed to redb.
    pub(super) unflushed: Unflushed,
}

/// Pages redb keeps in its own cache.
const REDB_CACHE_BYTES: usize = 64 << 20;

/// The compacted revision of a store never compacted (etcd's initial `compactMainRev`). Reads and
/// transactions at a negative revision, and a compaction at revision 0, succeed until the first
/// compaction, as in etcd.
pub const NEVER_COMPACTED: i64 = -1;

/// The multi-version key-value store.
pub struct Store {
    pub(super) db: Database,
    state: RwLock<State>,
    /// `State::auth_version`, readable without the lock: every request checks it, and must not
    /// wait behind a batch of applied entries holding the write lock.
    pub(super) auth_version: AtomicU64,
    /// The newest record in memory that redb has too: the next writer forgets it and those
    /// before it ([`Store::write_unflushed`]).
    flushed_through: Mutex<Option<(i64, i64)>>,
    /// A commit of the records held holds redb's writer (see [`Store::sync`]).
    committing: AtomicBool,
    /// The database file, opened again for [`Store::start_writeback`] (None if it could not be).
    pub(super) writeback_file: Option<std::fs::File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and rebuilds the key index from it.
    pub fn open(path: &Path) -> Result<Store, MvccError> {
        // redb caches 1 GiB of pages by default; the OS page cache holds the file anyway, and
        // the key index is in memory, so a small cache keeps the resident size close to the
        // key index's (etcd's bbolt maps the whole file instead).
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(path)?;
        let write = db.begin_write()?;
        {
            let mut meta = write.open_table(META)?;
            let stored_version = meta
                .get(backend::META_SCHEMA_VERSION)?
                .map(|version| version.value());
            match stored_version {
                None => {
                    meta.insert(backend::META_SCHEMA_VERSION, backend::SCHEMA_VERSION)?;
                }
                Some(backend::SCHEMA_VERSION) => {}
                Some(version)
                    if (backend::SCHEMA_VERSION_UPGRADABLE..backend::SCHEMA_VERSION)
                        .contains(&version) =>
                {
                    meta.insert(backend::META_SCHEMA_VERSION, backend::SCHEMA_VERSION)?;
                }
                Some(other) => {
                    return Err(MvccError::Corrupt(format!(
                        "schema version {other}; this build reads version {}",
                        backend::SCHEMA_VERSION
                    )))
                }
            }
            write.open_table(KV)?;
            write.open_table(LEASES)?;
            write.open_table(MEMBERS)?;
            write.open_table(MEMBERS_RAFT)?;
            write.open_table(MEMBERS_REMOVED)?;
            super::auth_tables::create_tables(&write)?;
        }
        write.commit()?;
        let state = load_state(&db, 0)?;
        tracing::info!(
            revision = state.current_revision,
            compact_revision = state.compact_revision,
            consistent_index = state.consistent_index,
            keys = state.index.len(),
            "mvcc store opened"
        );
        let writeback_file = std::fs::File::open(path)
            .inspect_err(|error| tracing::debug!(%error, "cannot open the store for writeback"))
            .ok();
        Ok(Store {
            db,
            state: RwLock::new(state),
            auth_version: AtomicU64::new(0),
            flushed_through: Mutex::new(None),
            committing: AtomicBool::new(false),
            writeback_file,
        })
    }

    /// Starts writing the pages that commits left dirty in the OS's cache to the disk, without
    /// waiting for them or flushing the disk's own cache (Linux's `sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`). Durability is unchanged: only [`Store::sync`] makes anything
    /// durable.
    ///
    /// Why: commits without durability (one per 256 records) leave their pages dirty, and the
    /// kernel writes them back only after 30 s. A durable sync (every 5,000 entries under
    /// load) then had all of them to write and flush at once, while every member's WAL fsync
    /// on the shared disk waited behind it: WAL fsyncs of up to ~10 ms were seen. Started every
    /// 50 ms, the same writes go out in smaller pieces.
    pub fn start_writeback(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.writeback_file else {
            return Ok(());
        };
        // SAFETY: a plain system call on a descriptor this store owns; it reads no memory.
        let result =
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub(super) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest revision.
    pub fn revision(&self) -> i64 {
        self.read_state().current_revision
    }

    /// The revision history was compacted at ([`NEVER_COMPACTED`]: never).
    pub fn compact_revision(&self) -> i64 {
        self.read_state().compact_revision
    }

    /// Index of the last log entry applied.
    pub fn consistent_index(&self) -> u64 {
        self.read_state().consistent_index
    }

    /// Number of keys alive or with readable history.
    pub fn key_count(&self) -> usize {
        self.read_state().index.len()
    }

    /// Reads keys `[key, end)` as of `options.revision`.
    pub fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let state = self.read_state();
        let read = self.db.begin_read()?;
        let (revisions, result) = plan_range(&state, state.current_revision, key, end, options)?;
        let located = locate(&state.unflushed, revisions);
        // Values are fetched without the lock: the read transaction already sees every
        // revision the index named that is not in the copied records.
        drop(state);
        fetch(located, result, || Ok(read.open_table(KV)?))
    }

    /// A consistent view for several reads (a read-only transaction). It holds the store's read
    /// lock, so writes wait until it is dropped: keep it short.
    pub fn read(&self) -> Result<ReadTxn<'_>, MvccError> {
        let state = self.read_state();
        let read = self.db.begin_read()?;
        Ok(ReadTxn { state, read })
    }

    /// Starts the write transaction of log entry `consistent_index`. It holds the store's write
    /// lock until it is committed or dropped.
    pub fn write(&self, consistent_index: u64) -> Result<WriteTxn<'_>, MvccError> {
        let mut state = self.write_state();
        if let Some(through) = self.flushed().take() {
            state.unflushed.remove_through(through);
        }
        if state.unflushed.is_over_bound() {
            // Nobody flushed: commit here (readers wait) rather than grow without bound.
            self.write_unflushed(&state, Durability::None)?;
            state.unflushed.clear();
        }
        assert!(
            consistent_index > state.consistent_index,
            "log entry {consistent_index} applied after entry {}",
            state.consistent_index
        );
        let begin_revision = state.current_revision;
        Ok(WriteTxn {
            state,
            store: self,
            txn: std::cell::OnceCell::new(),
            begin_revision,
            changes: 0,
            lease_changes: false,
            member_changes: false,
            auth_changes: false,
            consistent_index,
        })
    }

    /// Compacts history before `revision` (log entry `consistent_index`): later reads before it
    /// fail with [`MvccError::Compacted`], and its records are removed from the backend.
    pub fn compact(&self, revision: i64, consistent_index: u64) -> Result<(), MvccError> {
        let mut state = self.write_state();
        if revision <= state.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > state.current_revision {
            return Err(MvccError::FutureRevision);
        }
        let keep = state.index.compact(revision);
        let txn = self.db.begin_write()?;
        // The records still in memory go in first, so the compacted ones among them go too.
        insert_unflushed(&txn, &state.unflushed)?;
        let removed = {
            let mut table = txn.open_table(KV)?;
            let mut doomed = Vec::new();
            for record in table.range(..=(revision, i64::MAX))? {
                let (key, _) = record?;
                let (main, sub) = key.value();
                if !keep.contains(&Revision::new(main, sub)) {
                    doomed.push((main, sub));
                }
            }
            for revision in &doomed {
                table.remove(revision)?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(backend::META_COMPACT_REVISION, revision as u64)?;
            meta.insert(backend::META_CONSISTENT_INDEX, consistent_index)?;
            meta.insert(
                backend::META_CURRENT_REVISION,
                state.current_revision as u64,
            )?;
            doomed.len()
        };
        txn.commit()?;
        state.unflushed.clear();
        state.compact_revision = revision;
        state.consistent_index = state.consistent_index.max(consistent_index);
        tracing::info!(revision, removed, "compacted");
        Ok(())
    }

    /// Records that log entry `consistent_index` was applied without changing the store (a read,
    /// or a request that failed). It reaches disk with the next commit.
    pub fn skip(&self, consistent_index: u64) {
        let mut state = self.write_state();
        state.consistent_index = state.consistent_index.max(consistent_index);
    }

    /// Makes everything applied so far durable; returns the consistent index it made durable.
    ///
    /// The commit writes out everything written since the last sync (an fsync of milliseconds
    /// to tens of them under load), and nobody waits for it: the state is read under the read
    /// lock once redb's writer is held (so no commit can land after what is read), then the
    /// commit runs without the lock. Writers go on applying into memory meanwhile
    /// ([`Store::flush_if_full`] waits for the sync to end); only a writer that needs redb
    /// itself (a lease, membership or auth change) waits for it. So the durable sync can run
    /// on a thread of its own, beside the thread applying the log.
    pub fn sync(&self) -> Result<u64, MvccError> {
        self.commit_held(Durability::Immediate)
    }

    /// Commits the applied records still in memory to redb (not durably), so they no longer
    /// take memory. Nobody waits for it either, as for [`Store::sync`].
    pub fn flush(&self) -> Result<(), MvccError> {
        if self.read_state().unflushed.is_empty() {
            return Ok(());
        }
        self.commit_held(Durability::None).map(drop)
    }

    /// [`Store::flush`] when the records in memory have reached their bound. The applying
    /// thread calls it after answering a batch's proposers, so they do not wait for the commit
    /// (a writer that does not is caught by [`Store::write`], under the write lock).
    /// While a durable sync runs, the records wait for it (it takes them too, and its commit
    /// holds redb's writer): the applying thread must not stop for it.
    pub fn flush_if_full(&self) -> Result<(), MvccError> {
        if self.committing.load(Ordering::Acquire) || !self.read_state().unflushed.is_full() {
            return Ok(());
        }
        self.flush()
    }

    /// One redb commit of the records held in memory and the meta, taken under the read lock
    /// once redb's writer is held; the commit itself runs without the lock. Returns the
    /// consistent index redb holds after it.
    fn commit_held(&self, durability: Durability) -> Result<u64, MvccError> {
        let (mut txn, consistent_index, through) = {
            // Lock order, everywhere: the state's lock, then redb's writer.
            let state = self.read_state();
            let txn = self.db.begin_write()?;
            self.committing.store(true, Ordering::Release);
            let taken =
                insert_unflushed(&txn, &state.unflushed).and_then(|()| write_meta(&txn, &state));
            if let Err(error) = taken {
                self.committing.store(false, Ordering::Release);
                return Err(error);
            }
            (txn, state.consistent_index, state.unflushed.last())
        };
        let committed = txn
            .set_durability(durability)
            .map_err(MvccError::from)
            .and_then(|()| Ok(txn.commit()?));
        self.committing.store(false, Ordering::Release);
        committed?;
        // Only now may the next writer forget them: readers until now had them in memory alone.
        if let Some(through) = through {
            self.set_flushed_through(through);
        }
        Ok(consistent_index)
    }

    fn set_flushed_through(&self, through: (i64, i64)) {
        *self.flushed() = Some(through);
    }

    fn flushed(&self) -> std::sync::MutexGuard<'_, Option<(i64, i64)>> {
        self.flushed_through
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits `state`'s records still in memory and its meta to redb; the caller holds the
    /// lock `state` came from, so they match. The records stay in memory until the next writer
    /// takes the write lock (this must not wait for readers): until then readers find them in
    /// both places, and use either (they ask redb only below the oldest one held).
    pub(super) fn write_unflushed(
        &self,
        state: &State,
        durability: Durability,
    ) -> Result<(), MvccError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        insert_unflushed(&txn, &state.unflushed)?;
        write_meta(&txn, state)?;
        txn.commit()?;
        if let Some(through) = state.unflushed.last() {
            self.set_flushed_through(through);
        }
        Ok(())
    }
}

fn insert_unflushed(txn: &WriteTransaction, unflushed: &Unflushed) -> Result<(), MvccError> {
    if unflushed.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(KV)?;
    for (revision, record) in unflushed.iter() {
        table.insert(*revision, record.as_slice())?;
    }
    Ok(())
}

/// Reads the revisions from `meta` and rebuilds the key index from `kv`.
pub(super) fn load_state(db: &Database, auth_version: u64) -> Result<State, MvccError> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let value = |name, missing: u64| -> Result<u64, MvccError> {
        Ok(meta.get(name)?.map_or(missing, |value| value.value()))
    };
    let current_revision = value(backend::META_CURRENT_REVISION, 0)? as i64;
    // Never compacted is -1, as in etcd: revision 0 can still be compacted once.
    let compact_revision = value(backend::META_COMPACT_REVISION, NEVER_COMPACTED as u64)? as i64;
    let consistent_index = value(backend::META_CONSISTENT_INDEX, 0)?;
    let mut index = TreeIndex::default();
    let mut last_revision = 0;
    let table = read.open_table(KV)?;
    for record in table.iter()? {
        let (key, value) = record?;
        let (main, sub) = key.value();
        let revision = Revision::new(main, sub);
        last_revision = main;
        match backend::decode_key((main, sub), value.value())? {
            (true, kv) => {
                let key_index = index.key_index_mut(&kv.key);
                if key_index.is_empty() {
                    key_index.restore(Revision::new(kv.create_revision, 0), revision, kv.version);
                } else {
                    key_index.put(revision);
                }
            }
            (false, kv) => index.tombstone(&kv.key, revision),
        }
    }
    Ok(State {
        index,
        // An empty store is at revision 1, so the first write is revision 2, as in etcd.
        current_revision: current_revision
            .max(last_revision)
            .max(compact_revision)
            .max(1),
        compact_revision,
        consistent_index,
        auth_version,
        unflushed: Unflushed::default(),
    })
}

fn write_meta(txn: &WriteTransaction, state: &State) -> Result<(), MvccError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(backend::META_CONSISTENT_INDEX, state.consistent_index)?;
    meta.insert(
        backend::META_CURRENT_REVISION,
        state.current_revision as u64,
    )?;
    Ok(())
}

/// etcd's rules for the revision of a read: 0 is the current one; newer than current is an
/// error; older than the compacted one is an error (the compacted revision itself is readable).
fn resolve_revision(asked: i64, current: i64, compacted: i64) -> Result<i64, MvccError> {
    if asked > current {
        return Err(MvccError::FutureRevision);
    }
    let at = if asked <= 0 { current } else { asked };
    if at < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(at)
}

/// Resolves which revisions a range reads; the result holds everything but the values.
fn plan_range(
    state: &State,
    current: i64,
    key: &[u8],
    end: RangeEnd<'_>,
    options: &RangeOptions,
) -> Result<(Vec<Revision>, RangeResult), MvccError> {
    let at = resolve_revision(options.revision, current, state.compact_revision)?;
    let mut revisions = Vec::new();
    let mut count = 0;
    state.index.range(key, end, at, |_, found: KeyAt| {
        count += 1;
        if !options.count_only && (options.limit == 0 || revisions.len() < options.limit) {
            revisions.push(found.modified);
        }
        true
    });
    Ok((
        revisions,
        RangeResult {
            kvs: Vec::new(),
            revision: current,
            count,
        },
    ))
}

/// Pairs each revision with its record when it is still in memory (redb has the others).
fn locate(
    unflushed: &Unflushed,
    revisions: Vec<Revision>,
) -> Vec<(Revision, Option<SharedRecord>)> {
    let first = unflushed.first();
    revisions
        .into_iter()
        .map(|revision| {
            let key = (revision.main, revision.sub);
            let held = first
                .filter(|first| key >= *first)
                .and_then(|_| unflushed.get(key).cloned());
            (revision, held)
        })
        .collect()
}

/// Reads the values of `located` into `result`, from memory or from redb, opening the table
/// only when some are there.
fn fetch<T: ReadableTable<(i64, i64), &'static [u8]>>(
    located: Vec<(Revision, Option<SharedRecord>)>,
    mut result: RangeResult,
    open: impl FnOnce() -> Result<T, MvccError>,
) -> Result<RangeResult, MvccError> {
    if located.is_empty() {
        return Ok(result);
    }
    let mut open = Some(open);
    let mut table = None;
    result.kvs.reserve(located.len());
    for (revision, held) in located {
        let key = (revision.main, revision.sub);
        let record = match held {
            Some(record) => backend::decode(key, &record)?,
            None => {
                if table.is_none() {
                    let open = open.take().expect("the table is opened once");
                    table = Some(open()?);
                }
                let table = table.as_ref().expect("opened just above");
                let stored = table.get(key)?.ok_or_else(|| {
                    MvccError::Corrupt(format!("index names revision {key:?}, which is not stored"))
                })?;
                backend::decode(key, stored.value())?
            }
        };
        match record {
            Record::Put(kv) => result.kvs.push(kv),
            Record::Tombstone(_) => {
                return Err(MvccError::Corrupt(format!(
                    "index names tombstone {key:?} as a live key"
                )))
            }
        }
    }
    Ok(result)
}

/// See [`Store::read`].
pub struct ReadTxn<'a> {
    state: RwLockReadGuard<'a, State>,
    read: redb::ReadTransaction,
}

impl ReadView for ReadTxn<'_> {
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let (revisions, result) =
            plan_range(&self.state, self.state.current_revision, key, end, options)?;
        let located = locate(&self.state.unflushed, revisions);
        fetch(located, result, || Ok(self.read.open_table(KV)?))
    }

    fn revision(&self) -> i64 {
        self.state.current_revision
    }

    fn compact_revision(&self) -> i64 {
        self.state.compact_revision
    }
}

/// The changes of one log entry: every put and delete in it share one main revision. Several
/// consecutive entries may share one redb transaction ([`WriteTxn::next_entry`]): each still
/// gets its own revision, and the batch costs one commit.
pub struct WriteTxn<'a> {
    state: RwLockWriteGuard<'a, State>,
    store: &'a Store,
    /// The redb transaction, begun by the first lease, membership or auth access: key changes
    /// go to the state's [`Unflushed`] records, and need none.
    txn: std::cell::OnceCell<WriteTransaction>,
    begin_revision: i64,
    /// Changes so far; the next change's sub revision.
    changes: i64,
    /// Leases granted or revoked: redb must commit with the batch.
    lease_changes: bool,
    /// Member attributes recorded: likewise.
    member_changes: bool,
    /// Users, roles or the auth switch changed: likewise.
    pub(super) auth_changes: bool,
    consistent_index: u64,
}

impl WriteTxn<'_> {
    /// The redb transaction for tables other than `kv`, begun on first use.
    pub(super) fn redb(&self) -> Result<&WriteTransaction, MvccError> {
        if let Some(txn) = self.txn.get() {
            return Ok(txn);
        }
        let mut txn = self.store.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(self.txn.get_or_init(|| txn))
    }

    /// The store's revision before this transaction.
    pub fn begin_revision(&self) -> i64 {
        self.begin_revision
    }

    /// The revision reads inside this transaction see: its own changes included.
    pub fn read_revision(&self) -> i64 {
        self.begin_revision + i64::from(self.changes > 0)
    }

    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }

    /// Writes `key = value`; returns the revision of the change.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<i64, MvccError> {
        let main = self.begin_revision + 1;
        let revision = Revision::new(main, self.changes);
        let (create_revision, version) = match self.state.index.put(key, revision) {
            Some(before) => (before.created.main, before.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        self.state
            .unflushed
            .push((revision.main, revision.sub), backend::encode_put(&kv));
        self.changes += 1;
        Ok(main)
    }

    /// Deletes the keys alive in `[key, end)`; returns how many, and the revision after.
    pub fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Result<(i64, i64), MvccError> {
        let at = self.read_revision();
        let mut doomed = Vec::new();
        self.state.index.range(key, end, at, |name, _| {
            doomed.push(name.to_vec());
            true
        });
        if doomed.is_empty() {
            return Ok((0, self.read_revision()));
        }
        let main = self.begin_revision + 1;
        for name in &doomed {
            let revision = Revision::new(main, self.changes);
            self.state.unflushed.push(
                (revision.main, revision.sub),
                backend::encode_tombstone(name),
            );
            self.state.index.tombstone(name, revision);
            self.changes += 1;
        }
        Ok((doomed.len() as i64, main))
    }

    /// Ends the changes of the current entry and starts those of log entry `consistent_index`
    /// in the same transaction. The store's readers wait until [`WriteTxn::commit`] (the write
    /// lock is held throughout), so nobody sees an entry of the batch before all of them are
    /// applied. An entry whose request failed changed nothing and needs no undo: every
    /// check runs before the first change.
    pub fn next_entry(&mut self, consistent_index: u64) {
        assert!(
            consistent_index > self.consistent_index,
            "log entry {consistent_index} applied after entry {}",
            self.consistent_index
        );
        if self.changes > 0 {
            self.state.current_revision = self.begin_revision + 1;
        }
        self.begin_revision = self.state.current_revision;
        self.changes = 0;
        self.consistent_index = consistent_index;
    }

    /// Ends the transaction; returns the store's revision after it. Key changes stay in memory
    /// until a commit is due ([`Store::flush_if_full`]); lease, membership and auth changes, and
    /// `durable`, commit to redb now, with every record in memory. With `durable`, the redb
    /// state reaches disk before this returns.
    pub fn commit(self, durable: bool) -> Result<i64, MvccError> {
        let WriteTxn {
            mut state,
            store,
            txn,
            begin_revision,
            changes,
            lease_changes,
            member_changes,
            auth_changes,
            consistent_index,
            ..
        } = self;
        state.consistent_index = consistent_index;
        if changes > 0 {
            state.current_revision = begin_revision + 1;
        }
        let revision = state.current_revision;
        if lease_changes || member_changes || auth_changes || durable {
            let mut txn = match txn.into_inner() {
                Some(txn) => txn,
                None => store.db.begin_write()?,
            };
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            insert_unflushed(&txn, &state.unflushed)?;
            write_meta(&txn, &state)?;
            txn.commit()?;
            state.unflushed.clear();
            if auth_changes {
                state.auth_version += 1;
                store
                    .auth_version
                    .store(state.auth_version, Ordering::Release);
            }
            return Ok(revision);
        }
        if let Some(txn) = txn.into_inner() {
            // Only read through.
            txn.abort()?;
        }
        Ok(revision)
    }
}

impl ReadView for WriteTxn<'_> {
    /// Reads see this transaction's own changes, as in etcd.
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        let (revisions, result) = plan_range(&self.state, self.read_revision(), key, end, options)?;
        let located = locate(&self.state.unflushed, revisions);
        // Records not in memory were committed before this transaction began.
        fetch(located, result, || {
            Ok(self.store.db.begin_read()?.open_table(KV)?)
        })
    }

    fn revision(&self) -> i64 {
        self.read_revision()
    }

    fn compact_revision(&self) -> i64 {
        self.state.compact_revision
    }
}

/// A store read on its own is consistent: each range sees one revision.
impl ReadView for Store {
    fn range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        options: &RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        Store::range(self, key, end, options)
    }

    fn revision(&self) -> i64 {
        Store::revision(self)
    }

    fn compact_revision(&self) -> i64 {
        Store::compact_revision(self)
    }
}

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change in history, as watchers see it. A delete's `kv` holds only the key and its
/// `mod_revision` (the delete's revision), as etcd's delete events do.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub kv: KeyValue,
}

/// A run of history read by [`Store::changes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// Every change up to and including this revision has been read.
    pub through_revision: i64,
}

impl Store {
    /// Reads the changes made at revisions `from..=current`, in revision order, stopping after
    /// the first revision that brings the count to `changes_max` (a revision is never split, so
    /// a transaction's changes are delivered together). Fails with [`MvccError::Compacted`] when
    /// `from` is before the compacted revision.
    pub fn changes(&self, from: i64, changes_max: usize) -> Result<Changes, MvccError> {
        let state = self.read_state();
        let current = state.current_revision;
        if from < state.compact_revision {
            return Err(MvccError::Compacted);
        }
        let mut result = Changes {
            changes: Vec::new(),
            through_revision: current,
        };
        if from > current {
            return Ok(result);
        }
        // redb holds everything before the oldest record in memory; the rest is copied out.
        let held_from = state.unflushed.first().unwrap_or((current + 1, 0));
        let held: Vec<((i64, i64), SharedRecord)> = state.unflushed.since(from).cloned().collect();
        let read = ((from, 0) < held_from)
            .then(|| self.db.begin_read())
            .transpose()?;
        drop(state);
        let mut add = |(main, sub): (i64, i64), bytes: &[u8]| -> Result<bool, MvccError> {
            if result.changes.len() >= changes_max
                && result
                    .changes
                    .last()
                    .is_some_and(|last| last.kv.mod_revision != main)
            {
                result.through_revision = main - 1;
                return Ok(false);
            }
            let change = match backend::decode((main, sub), bytes)? {
                Record::Put(kv) => Change {
                    kind: ChangeKind::Put,
                    kv,
                },
                Record::Tombstone(key) => Change {
                    kind: ChangeKind::Delete,
                    kv: KeyValue {
                        key,
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                },
            };
            result.changes.push(change);
            Ok(true)
        };
        if let Some(read) = read {
            let table = read.open_table(KV)?;
            for record in table.range((from, 0)..held_from)? {
                let (key, value) = record?;
                if !add(key.value(), value.value())? {
                    return Ok(result);
                }
            }
        }
        for (revision, record) in &held {
            if !add(*revision, record)? {
                break;
            }
        }
        Ok(result)
    }
}

/// A lease as stored: its id and granted TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLease {
    pub id: i64,
    pub ttl_secs: i64,
}

/// A stored lease with the live keys whose records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKeys {
    pub lease: StoredLease,
    pub keys: Vec<Vec<u8>>,
}

impl Store {
    /// Every granted lease, and the live keys attached to each (from the keys' records).
    pub fn leases(&self) -> Result<Vec<LeaseKeys>, MvccError> {
        let state = self.read_state();
        let read = self.db.begin_read()?;
        let mut leases: std::collections::BTreeMap<i64, LeaseKeys> =
            std::collections::BTreeMap::new();
        for record in read.open_table(LEASES)?.iter()? {
            let (id, ttl) = record?;
            let lease = StoredLease {
                id: id.value(),
                ttl_secs: ttl.value(),
            };
            leases.insert(
                lease.id,
                LeaseKeys {
                    lease,
                    keys: Vec::new(),
                },
            );
        }
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut revisions = Vec::new();
        // Every key is at least "\0" (keys are never empty).
        state.index.range(
            b"\0",
            RangeEnd::Unbounded,
            state.current_revision,
            |_, found| {
                revisions.push(found.modified);
                true
            },
        );
        let located = locate(&state.unflushed, revisions);
        drop(state);
        let live = fetch(located, RangeResult::default(), || Ok(read.open_table(KV)?))?;
        for kv in live.kvs {
            if let Some(lease) = leases.get_mut(&kv.lease) {
                lease.keys.push(kv.key);
            }
        }
        Ok(leases.into_values().collect())
    }
}

impl WriteTxn<'_> {
    /// Records a granted lease (or a new TTL for it).
    pub fn grant_lease(&mut self, lease: StoredLease) -> Result<(), MvccError> {
        self.redb()?
            .open_table(LEASES)?
            .insert(lease.id, lease.ttl_secs)?;
        self.lease_changes = true;
        Ok(())
    }

    /// Forgets a lease (its keys are deleted separately, in the same transaction).
    pub fn revoke_lease(&mut self, id: i64) -> Result<(), MvccError> {
        self.redb()?.open_table(LEASES)?.remove(id)?;
        self.lease_changes = true;
        Ok(())
    }
}

/// What [`Store::hash_kv`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    pub compact_revision: i64,
    pub hash_revision: i64,
}

impl Store {
    /// A CRC32C over every record up to `revision` (0: the current one), in revision order.
    /// Members that applied the same log hash alike (compaction removes the same records
    /// everywhere), so differing hashes mean diverged data.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let state = self.read_state();
        let hash_revision = if revision <= 0 {
            state.current_revision
        } else {
            revision
        };
        if hash_revision > state.current_revision {
            return Err(MvccError::FutureRevision);
        }
        if hash_revision < state.compact_revision {
            return Err(MvccError::Compacted);
        }
        let compact_revision = state.compact_revision;
        if !state.unflushed.is_empty() {
            // Hashing reads redb alone (it is rare, an operator's check).
            self.write_unflushed(&state, Durability::None)?;
        }
        let read = self.db.begin_read()?;
        drop(state);
        let mut hash = 0u32;
        for record in read.open_table(KV)?.range(..=(hash_revision, i64::MAX))? {
            let (key, value) = record?;
            let (main, sub) = key.value();
            hash = crc32c::crc32c_append(hash, &main.to_be_bytes());
            hash = crc32c::crc32c_append(hash, &sub.to_be_bytes());
            hash = crc32c::crc32c_append(hash, value.value());
        }
        Ok(KvHash {
            hash,
            compact_revision,
            hash_revision,
        })
    }
}

impl Store {
    /// Every member's published attributes, by member id.
    pub fn member_attributes(&self) -> Result<Vec<(u64, Vec<u8>)>, MvccError> {
        let read = self.db.begin_read()?;
        let mut members = Vec::new();
        for record in read.open_table(MEMBERS)?.iter()? {
            let (id, bytes) = record?;
            members.push((id.value(), bytes.value().to_vec()));
        }
        Ok(members)
    }

    /// The membership changes recorded since the founding members: member id → the server's
    /// encoding of its peer URLs and learner flag; and the ids removed.
    pub fn membership_changes(&self) -> Result<MembershipChanges, MvccError> {
        let read = self.db.begin_read()?;
        let mut changes = MembershipChanges::default();
        for record in read.open_table(MEMBERS_RAFT)?.iter()? {
            let (id, bytes) = record?;
            changes.members.push((id.value(), bytes.value().to_vec()));
        }
        for record in read.open_table(MEMBERS_REMOVED)?.iter()? {
            let (id, _) = record?;
            changes.removed.push(id.value());
        }
        Ok(changes)
    }
}

/// What [`Store::membership_changes`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipChanges {
    /// Member id → its peer URLs and learner flag, encoded by the server.
    pub members: Vec<(u64, Vec<u8>)>,
    /// Members removed from the cluster.
    pub removed: Vec<u64>,
}

impl WriteTxn<'_> {
    /// Records a member's peer URLs and learner flag (it was added, promoted or updated).
    /// Adding a member again clears an earlier removal of the same id.
    pub fn put_member_raft(&mut self, id: u64, member: &[u8]) -> Result<(), MvccError> {
        let txn = self.redb()?;
        txn.open_table(MEMBERS_RAFT)?.insert(id, member)?;
        txn.open_table(MEMBERS_REMOVED)?.remove(id)?;
        self.member_changes = true;
        Ok(())
    }

    /// Records that a member left the cluster: its records go, its id is marked removed.
    pub fn remove_member(&mut self, id: u64) -> Result<(), MvccError> {
        let txn = self.redb()?;
        txn.open_table(MEMBERS_RAFT)?.remove(id)?;
        txn.open_table(MEMBERS)?.remove(id)?;
        txn.open_table(MEMBERS_REMOVED)?
            .insert(id, self.consistent_index)?;
        self.member_changes = true;
        Ok(())
    }

    /// Records what a member published about itself (its name and client URLs).
    pub fn put_member_attributes(&mut self, id: u64, attributes: &[u8]) -> Result<(), MvccError> {
        self.redb()?.open_table(MEMBERS)?.insert(id, attributes)?;
        self.member_changes = true;
        Ok(())
    }
}
