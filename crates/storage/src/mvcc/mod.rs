//! Multi-version concurrency control: etcd's revision model over a redb backend.
//!
//! Every change gets a revision `(main, sub)`: `main` is the store-wide revision, raised by one
//! per write transaction (one log entry); `sub` orders changes within it. Each key records its
//! `create_revision`, `mod_revision` and `version` (puts since creation). A delete writes a
//! tombstone that closes the key's generation. History is readable at any revision until it is
//! compacted.
//!
//! Invariants:
//! - the current revision never decreases, and a transaction with no change does not raise it;
//! - the index names only revisions stored in the backend, and only puts as live keys;
//! - compaction at `c` keeps every read at a revision `>= c` unchanged;
//! - the stored consistent index names the last log entry whose effects the backend holds, so
//!   replaying later entries (which is deterministic) rebuilds the rest after a crash.

mod auth_tables;
mod backend;
mod error;
mod key_index;
mod revision;
mod snapshot;
mod store;
mod unflushed;

pub use auth_tables::{AuthTable, StoredAuth};
pub use error::MvccError;
pub use key_index::{KeyAt, KeyIndex, RangeEnd, TreeIndex};
pub use revision::Revision;
pub use snapshot::{SnapshotHeader, StoreSnapshot};
pub use store::{
    Change, ChangeKind, Changes, KvHash, LeaseKeys, MembershipChanges, RangeOptions, RangeResult,
    ReadTxn, ReadView, Store, StoredLease, WriteTxn, NEVER_COMPACTED,
};

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
