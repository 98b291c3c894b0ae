use thiserror::Error;

/// Errors of the MVCC store. The first two are the caller's to handle (etcd's `ErrCompacted` and
/// `ErrFutureRev`); the rest mean the store can't go on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MvccError {
    /// The revision asked for is older than the compacted one.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is newer than the current one.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The backend failed (I/O or redb).
    #[error("mvcc backend: {0}")]
    Backend(#[from] redb::Error),
    /// The stored data does not decode, or breaks an invariant.
    #[error("mvcc data is corrupt: {0}")]
    Corrupt(String),
    /// A store snapshot can't be read or written, or is corrupt (`mvcc::snapshot`).
    #[error("store snapshot: {0}")]
    Snapshot(String),
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for MvccError {
            fn from(error: $error) -> MvccError {
                MvccError::Backend(error.into())
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
