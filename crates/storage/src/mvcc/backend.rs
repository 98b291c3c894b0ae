//! The MVCC state on disk, in redb. Every table and meta key is declared here, in one place.
//!
//! `kv`: `(main, sub)` revision → one byte kind (`KIND_PUT` or `KIND_TOMBSTONE`) followed by the
//! protobuf encoding of `mvccpb.KeyValue` (for a tombstone, only the key is set).
//! `meta`: name → u64 (signed values stored as their two's-complement bits).
//! `leases`: lease id → granted TTL in seconds.
//! `auth_users`: user name → protobuf encoding of `authpb.User` (the password as a bcrypt hash).
//! `auth_roles`: role name → protobuf encoding of `authpb.Role`.
//! The auth store's switch and revision are `meta` keys (`auth_enabled`, `auth_revision`).

use keel_api::mvccpb::KeyValue;
use prost::Message;
use redb::TableDefinition;

use super::MvccError;

pub const KV: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("kv");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Granted leases: id → TTL in seconds (as granted, after the minimum is applied). Which keys a
/// lease holds is not stored: each key's record names its lease.
pub const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// Members' published attributes: member id → `etcdserverpb.Member`, encoded by the server.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// Membership changes since the founding members (etcd's raft attributes): member id →
/// `etcdserverpb.Member` with `id`, `peer_ur_ls` and `is_learner` set, encoded by the server.
/// A founding member appears here only once its peer URLs change or it is removed; a member
/// added later, from the entry that added it.
pub const MEMBERS_RAFT: TableDefinition<u64, &[u8]> = TableDefinition::new("members_raft");
/// Members removed from the cluster: member id → index of the log entry that removed it.
pub const MEMBERS_REMOVED: TableDefinition<u64, u64> = TableDefinition::new("members_removed");

/// Users of the auth store: name → `authpb.User`, encoded by the server (the store keeps bytes).
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Roles of the auth store: name → `authpb.Role`, encoded by the server.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

/// Format of the tables above; bumped on any incompatible change. Version 2 added the auth
/// tables, version 3 the membership tables (`members_raft`, `members_removed`); older stores are
/// upgraded in place (they have no auth state and no membership change, which is what empty
/// tables mean).
pub const SCHEMA_VERSION: u64 = 3;
/// The oldest format this build opens (and upgrades).
pub const SCHEMA_VERSION_UPGRADABLE: u64 = 1;
pub const META_SCHEMA_VERSION: &str = "schema_version";
/// Index of the last log entry whose effects are in this database (etcd's consistent index).
pub const META_CONSISTENT_INDEX: &str = "consistent_index";
/// The revision history was compacted at (reads before it fail).
pub const META_COMPACT_REVISION: &str = "compact_revision";
/// The newest revision, kept so that compaction of every record can't make it go backwards.
pub const META_CURRENT_REVISION: &str = "current_revision";
/// 1 while authentication is enabled (missing: disabled).
pub const META_AUTH_ENABLED: &str = "auth_enabled";
/// The auth store's revision: it moves on every change of users, roles or permissions (missing:
/// never changed).
pub const META_AUTH_REVISION: &str = "auth_revision";

const KIND_PUT: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// A decoded `kv` record.
pub enum Record {
    Put(KeyValue),
    Tombstone(Vec<u8>),
}

pub fn encode_put(kv: &KeyValue) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + kv.encoded_len());
    bytes.push(KIND_PUT);
    kv.encode(&mut bytes).expect("a Vec grows as needed");
    bytes
}

pub fn encode_tombstone(key: &[u8]) -> Vec<u8> {
    let kv = KeyValue {
        key: key.to_vec(),
        ..KeyValue::default()
    };
    let mut bytes = Vec::with_capacity(1 + kv.encoded_len());
    bytes.push(KIND_TOMBSTONE);
    kv.encode(&mut bytes).expect("a Vec grows as needed");
    bytes
}

/// What rebuilding the key index needs of a record: `mvccpb.KeyValue` without the value (prost
/// skips the fields not declared, so the value is neither copied nor allocated).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordKey {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
}

/// Decodes a record's kind and key fields only; `Ok((true, key))` for a put.
pub fn decode_key(revision: (i64, i64), bytes: &[u8]) -> Result<(bool, RecordKey), MvccError> {
    let corrupt =
        |why: String| MvccError::Corrupt(format!("record at revision {revision:?}: {why}"));
    let (&kind, body) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
    let key = RecordKey::decode(body).map_err(|error| corrupt(error.to_string()))?;
    match kind {
        KIND_PUT => Ok((true, key)),
        KIND_TOMBSTONE => Ok((false, key)),
        other => Err(corrupt(format!("unknown kind {other}"))),
    }
}

pub fn decode(revision: (i64, i64), bytes: &[u8]) -> Result<Record, MvccError> {
    let corrupt =
        |why: String| MvccError::Corrupt(format!("record at revision {revision:?}: {why}"));
    let (&kind, body) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
    let kv = KeyValue::decode(body).map_err(|error| corrupt(error.to_string()))?;
    match kind {
        KIND_PUT => Ok(Record::Put(kv)),
        KIND_TOMBSTONE => Ok(Record::Tombstone(kv.key)),
        other => Err(corrupt(format!("unknown kind {other}"))),
    }
}
