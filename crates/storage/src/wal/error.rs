//! The WAL's one error type.

use std::io;
use std::path::PathBuf;

/// Everything a WAL operation can fail with.
///
/// `InvalidAppend` and `InvalidOptions` are caller mistakes: nothing was written and the `Wal`
/// remains usable. Every other variant is fatal to the node: it must stop, and on `Corrupt`,
/// `NotAWal` or `UnsupportedVersion` an operator must look at the files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An operating-system call failed. When it comes from `sync`, an append that synced, or
    /// `release_before`, the `Wal` is poisoned from then on.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file named like a segment doesn't start with the segment magic bytes: the directory
    /// holds something else. Nothing was modified.
    #[error(
        "{path} is not a Keel WAL segment: it does not start with the magic bytes \"KEELWAL\\0\""
    )]
    NotAWal { path: PathBuf },

    /// The segment was written by a newer (or unknown) format version. Nothing was modified.
    #[error("{path} has WAL format version {version}; this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },

    /// A record or header failed verification somewhere a torn write can't explain (an older
    /// segment, or the last segment with valid records after the damage), or segments are
    /// missing, reordered or mixed. Nothing was modified on disk.
    #[error("WAL corrupt in {segment} at byte offset {offset}: {reason}")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },

    /// `open` found no segment files in the directory.
    #[error("no WAL segments in {dir}")]
    NotFound { dir: PathBuf },

    /// `create` found segment files in the directory.
    #[error("{dir} already holds WAL segments")]
    AlreadyExists { dir: PathBuf },

    /// An earlier I/O failure left the durable state unknown. The process must restart and
    /// replay; see the "fail-stop" invariant in the module documentation.
    #[error("WAL is poisoned by an earlier I/O failure; restart and replay from disk")]
    Poisoned,

    /// The append would break an invariant (an index gap, an entry the snapshot covers, a
    /// record above the size limit). Nothing was buffered.
    #[error("invalid WAL append: {reason}")]
    InvalidAppend { reason: String },

    /// `WalOptions` out of range.
    #[error("invalid WAL options: {reason}")]
    InvalidOptions { reason: String },
}

impl WalError {
    pub(super) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> WalError {
        let path = path.into();
        move |source| WalError::Io { path, source }
    }
}
