//! The whole store as one byte stream: what a leader sends to a member that fell behind its
//! compacted log (Raft's InstallSnapshot with data), and what that member installs.
//!
//! ```text
//!  "KEELSNP1" | consistent index u64 | current revision i64 | compact revision i64
//!  record*    : table u8 | key length u32 | key | value length u32 | value
//!  end        : 0xFF | record count u64 | CRC-32C u32 of every byte before it
//! ```
//! Integers are little-endian; keys and values are redb's own encoding of the table's types.
//! The three numbers in the header come from the store's in-memory state, not from `meta`,
//! because an entry applied without a change (`Store::skip`) moves the consistent index
//! without a commit.
//!
//! A stream is checked whole (CRC, record count, every key's size and encoding) before the
//! first byte of it reaches the store; installing replaces every table in one durable redb
//! transaction, so a member has either its old state or the leader's, never a mix.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use redb::{
    Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, Value,
    WriteTransaction,
};

use super::backend::{
    self, AUTH_ROLES, AUTH_USERS, KV, LEASES, MEMBERS, MEMBERS_RAFT, MEMBERS_REMOVED, META,
};
use super::store::load_state;
use super::{MvccError, Store};

const MAGIC: &[u8; 8] = b"KEELSNP1";
const END: u8 = 0xFF;
/// Keys and values of Keel's tables are far below this; a larger length is corruption.
const FIELD_BYTES_MAX: u32 = 64 << 20;

const TAG_KV: u8 = 1;
const TAG_META: u8 = 2;
const TAG_LEASES: u8 = 3;
const TAG_MEMBERS: u8 = 4;
const TAG_MEMBERS_RAFT: u8 = 5;
const TAG_MEMBERS_REMOVED: u8 = 6;
const TAG_AUTH_USERS: u8 = 7;
const TAG_AUTH_ROLES: u8 = 8;

/// Where the store stood when a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub consistent_index: u64,
    pub current_revision: i64,
    pub compact_revision: i64,
}

/// A consistent view of the whole store, to be written out with [`StoreSnapshot::write_to`].
/// It holds a redb read transaction, so writes go on while it is sent.
pub struct StoreSnapshot {
    read: ReadTransaction,
    header: SnapshotHeader,
}

impl std::fmt::Debug for StoreSnapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StoreSnapshot")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn io_error(error: std::io::Error) -> MvccError {
    MvccError::Snapshot(error.to_string())
}

/// Counts and checksums what it writes.
struct Encoder<W: Write> {
    out: W,
    crc: u32,
    records: u64,
    bytes: u64,
}

impl<W: Write> Encoder<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), MvccError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(io_error)
    }

    fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
        self.write(&[tag])?;
        for field in [key, value] {
            let length = u32::try_from(field.len())
                .ok()
                .filter(|&length| length <= FIELD_BYTES_MAX)
                .ok_or_else(|| MvccError::Corrupt(format!("a field of {} bytes", field.len())))?;
            self.write(&length.to_le_bytes())?;
            self.write(field)?;
        }
        self.records += 1;
        Ok(())
    }
}

fn dump<K: Key + 'static, V: Value + 'static, W: Write>(
    read: &ReadTransaction,
    definition: TableDefinition<K, V>,
    tag: u8,
    encoder: &mut Encoder<W>,
) -> Result<(), MvccError> {
    let table = read.open_table(definition)?;
    for row in table.iter()? {
        let (key, value) = row?;
        encoder.record(
            tag,
            K::as_bytes(&key.value()).as_ref(),
            V::as_bytes(&value.value()).as_ref(),
        )?;
    }
    Ok(())
}

impl StoreSnapshot {
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    /// Writes the whole stream to `out`; returns its length in bytes.
    pub fn write_to(&self, out: impl Write) -> Result<u64, MvccError> {
        let mut encoder = Encoder {
            out: BufWriter::with_capacity(256 << 10, out),
            crc: 0,
            records: 0,
            bytes: 0,
        };
        encoder.write(MAGIC)?;
        encoder.write(&self.header.consistent_index.to_le_bytes())?;
        encoder.write(&self.header.current_revision.to_le_bytes())?;
        encoder.write(&self.header.compact_revision.to_le_bytes())?;
        let read = &self.read;
        dump(read, KV, TAG_KV, &mut encoder)?;
        dump(read, META, TAG_META, &mut encoder)?;
        dump(read, LEASES, TAG_LEASES, &mut encoder)?;
        dump(read, MEMBERS, TAG_MEMBERS, &mut encoder)?;
        dump(read, MEMBERS_RAFT, TAG_MEMBERS_RAFT, &mut encoder)?;
        dump(read, MEMBERS_REMOVED, TAG_MEMBERS_REMOVED, &mut encoder)?;
        dump(read, AUTH_USERS, TAG_AUTH_USERS, &mut encoder)?;
        dump(read, AUTH_ROLES, TAG_AUTH_ROLES, &mut encoder)?;
        encoder.write(&[END])?;
        let records = encoder.records;
        encoder.write(&records.to_le_bytes())?;
        let crc = encoder.crc;
        encoder
            .out
            .write_all(&crc.to_le_bytes())
            .map_err(io_error)?;
        encoder.out.flush().map_err(io_error)?;
        Ok(encoder.bytes + 4)
    }
}

/// Reads a stream record by record, checksumming as it goes.
struct Decoder<R: Read> {
    input: R,
    crc: u32,
}

enum Item {
    Record {
        tag: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    End,
}

impl<R: Read> Decoder<R> {
    fn read(&mut self, buffer: &mut [u8]) -> Result<(), MvccError> {
        self.input.read_exact(buffer).map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                MvccError::Snapshot("the snapshot is truncated".into())
            } else {
                io_error(error)
            }
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buffer);
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, MvccError> {
        let mut bytes = [0; 8];
        self.read(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn field(&mut self) -> Result<Vec<u8>, MvccError> {
        let mut length = [0; 4];
        self.read(&mut length)?;
        let length = u32::from_le_bytes(length);
        if length > FIELD_BYTES_MAX {
            return Err(MvccError::Snapshot(format!(
                "a field claims {length} bytes"
            )));
        }
        let mut field = vec![0; length as usize];
        self.read(&mut field)?;
        Ok(field)
    }

    fn header(&mut self) -> Result<SnapshotHeader, MvccError> {
        let mut magic = [0; 8];
        self.read(&mut magic)?;
        if &magic != MAGIC {
            return Err(MvccError::Snapshot("not a Keel store snapshot".into()));
        }
        Ok(SnapshotHeader {
            consistent_index: self.u64()?,
            current_revision: self.u64()? as i64,
            compact_revision: self.u64()? as i64,
        })
    }

    fn next(&mut self) -> Result<Item, MvccError> {
        let mut tag = [0; 1];
        self.read(&mut tag)?;
        if tag[0] == END {
            return Ok(Item::End);
        }
        let key = self.field()?;
        let value = self.field()?;
        Ok(Item::Record {
            tag: tag[0],
            key,
            value,
        })
    }

    /// After `End`: checks the record count and the checksum.
    fn finish(&mut self, records: u64) -> Result<(), MvccError> {
        let counted = self.u64()?;
        let expected_crc = self.crc;
        let mut crc = [0; 4];
        self.input
            .read_exact(&mut crc)
            .map_err(|_| MvccError::Snapshot("the snapshot is truncated (no checksum)".into()))?;
        if u32::from_le_bytes(crc) != expected_crc {
            return Err(MvccError::Snapshot(
                "checksum mismatch: the snapshot is corrupt".into(),
            ));
        }
        if counted != records {
            return Err(MvccError::Snapshot(format!(
                "the snapshot names {counted} records but holds {records}"
            )));
        }
        let mut extra = [0; 1];
        if self.input.read(&mut extra).map_err(io_error)? != 0 {
            return Err(MvccError::Snapshot(
                "bytes after the end of the snapshot".into(),
            ));
        }
        Ok(())
    }
}

fn open_file(path: &Path) -> Result<Decoder<BufReader<std::fs::File>>, MvccError> {
    let file = std::fs::File::open(path)
        .map_err(|error| MvccError::Snapshot(format!("{}: {error}", path.display())))?;
    Ok(Decoder {
        input: BufReader::with_capacity(256 << 10, file),
        crc: 0,
    })
}

/// Checks that `key` and `value` decode as the table's types (redb's decoders trust their
/// input and would panic on a wrong size or bad UTF-8).
fn check<K: Key + 'static, V: Value + 'static>(
    _: TableDefinition<K, V>,
    key: &[u8],
    value: &[u8],
    str_key: bool,
) -> Result<(), MvccError> {
    let fits = |width: Option<usize>, bytes: &[u8]| width.is_none_or(|width| width == bytes.len());
    if !fits(K::fixed_width(), key) || !fits(V::fixed_width(), value) {
        return Err(MvccError::Snapshot("a record has the wrong size".into()));
    }
    if str_key && std::str::from_utf8(key).is_err() {
        return Err(MvccError::Snapshot("a record's name is not UTF-8".into()));
    }
    Ok(())
}

fn check_record(tag: u8, key: &[u8], value: &[u8]) -> Result<(), MvccError> {
    match tag {
        TAG_KV => check(KV, key, value, false),
        TAG_META => check(META, key, value, true),
        TAG_LEASES => check(LEASES, key, value, false),
        TAG_MEMBERS => check(MEMBERS, key, value, false),
        TAG_MEMBERS_RAFT => check(MEMBERS_RAFT, key, value, false),
        TAG_MEMBERS_REMOVED => check(MEMBERS_REMOVED, key, value, false),
        TAG_AUTH_USERS => check(AUTH_USERS, key, value, true),
        TAG_AUTH_ROLES => check(AUTH_ROLES, key, value, true),
        other => Err(MvccError::Snapshot(format!("unknown table tag {other}"))),
    }
}

/// Checks the whole snapshot file at `path`: its framing, every record, the count and the
/// checksum. Returns its header.
fn verify_snapshot(path: &Path) -> Result<SnapshotHeader, MvccError> {
    let mut decoder = open_file(path)?;
    let header = decoder.header()?;
    let mut records = 0;
    loop {
        match decoder.next()? {
            Item::Record { tag, key, value } => check_record(tag, &key, &value)?,
            Item::End => break,
        }
        records += 1;
    }
    decoder.finish(records)?;
    Ok(header)
}

fn insert<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, V>,
    key: &[u8],
    value: &[u8],
) -> Result<(), MvccError> {
    let mut table = txn.open_table(definition)?;
    table.insert(K::from_bytes(key), V::from_bytes(value))?;
    Ok(())
}

fn clear<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<(), MvccError> {
    txn.delete_table(definition)
        .map_err(|error| MvccError::Backend(error.into()))?;
    txn.open_table(definition)?;
    Ok(())
}

impl Store {
    /// A consistent view of the whole store as of now.
    pub fn snapshot(&self) -> Result<StoreSnapshot, MvccError> {
        // Under the state's read lock no write is half done, so the redb view and the
        // in-memory numbers agree.
        let state = self.read_state();
        if !state.unflushed.is_empty() {
            // A snapshot reads redb alone.
            self.write_unflushed(&state, Durability::None)?;
        }
        let read = self.db.begin_read()?;
        Ok(StoreSnapshot {
            read,
            header: SnapshotHeader {
                consistent_index: state.consistent_index,
                current_revision: state.current_revision,
                compact_revision: state.compact_revision,
            },
        })
    }

    /// Replaces the whole store with the snapshot file at `path`, durably. The file is checked
    /// whole first; on any error the store is unchanged.
    pub fn install(&self, path: &Path) -> Result<SnapshotHeader, MvccError> {
        let header = verify_snapshot(path)?;
        let mut state = self.write_state();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        clear(&txn, KV)?;
        clear(&txn, META)?;
        clear(&txn, LEASES)?;
        clear(&txn, MEMBERS)?;
        clear(&txn, MEMBERS_RAFT)?;
        clear(&txn, MEMBERS_REMOVED)?;
        clear(&txn, AUTH_USERS)?;
        clear(&txn, AUTH_ROLES)?;
        let mut decoder = open_file(path)?;
        decoder.header()?;
        {
            let mut kv = txn.open_table(KV)?;
            while let Item::Record { tag, key, value } = decoder.next()? {
                match tag {
                    // Most of a snapshot: keep the table open.
                    TAG_KV => {
                        kv.insert(<(i64, i64)>::from_bytes(&key), <&[u8]>::from_bytes(&value))?;
                    }
                    TAG_META => insert(&txn, META, &key, &value)?,
                    TAG_LEASES => insert(&txn, LEASES, &key, &value)?,
                    TAG_MEMBERS => insert(&txn, MEMBERS, &key, &value)?,
                    TAG_MEMBERS_RAFT => insert(&txn, MEMBERS_RAFT, &key, &value)?,
                    TAG_MEMBERS_REMOVED => insert(&txn, MEMBERS_REMOVED, &key, &value)?,
                    TAG_AUTH_USERS => insert(&txn, AUTH_USERS, &key, &value)?,
                    TAG_AUTH_ROLES => insert(&txn, AUTH_ROLES, &key, &value)?,
                    other => return Err(MvccError::Snapshot(format!("unknown table tag {other}"))),
                }
            }
        }
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(backend::META_CONSISTENT_INDEX, header.consistent_index)?;
            meta.insert(
                backend::META_CURRENT_REVISION,
                header.current_revision as u64,
            )?;
            meta.insert(
                backend::META_COMPACT_REVISION,
                header.compact_revision as u64,
            )?;
            meta.insert(backend::META_SCHEMA_VERSION, backend::SCHEMA_VERSION)?;
        }
        txn.commit()?;
        // Readers of the auth state must read it again.
        *state = load_state(&self.db, state.auth_version + 1)?;
        self.auth_version
            .store(state.auth_version, std::sync::atomic::Ordering::Release);
        tracing::info!(
            consistent_index = header.consistent_index,
            revision = state.current_revision,
            keys = state.index.len(),
            "installed a store snapshot"
        );
        Ok(header)
    }
}
