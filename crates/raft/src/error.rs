//! Errors: [`Error`] is what a caller of the core can handle (retry elsewhere, later, or fix
//! the request); [`StorageError`] is what a [`Storage`](crate::Storage) reports.
//!
//! A storage failure other than the expected `Compacted` / `Unavailable` /
//! `SnapshotTemporarilyUnavailable` means the node can no longer read its own log; the core
//! treats that as fatal and panics, as etcd/raft does.

use std::fmt;

/// Why the core refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The proposal or read was dropped because this node knows of no leader. Retry later or
    /// on another node.
    NoLeader,
    /// The leader is handing leadership over; proposals are refused until that ends (at most
    /// one election timeout).
    LeaderTransferInProgress,
    /// This node is not a member of the configuration it knows (it was removed).
    NotAMember,
    /// The leader's uncommitted tail exceeds `max_uncommitted_entries_bytes`; retry once
    /// followers catch up.
    UncommittedLogFull,
    /// A single proposal batch has more than `max_proposal_entries` entries.
    ProposalBatchTooLarge,
    /// Another membership change has not been applied yet; only one may be in flight.
    ConfChangePending,
    /// The membership change makes no sense for the current configuration.
    InvalidConfChange(&'static str),
    /// An entry of kind `ConfChange` did not decode.
    MalformedConfChange,
    /// The pending ReadIndex queue holds `max_pending_read_index` requests already.
    ReadIndexQueueFull,
    /// ReadIndex contexts must be non-empty (they identify the request).
    EmptyReadContext,
    /// The configuration is unusable; the text says which field.
    InvalidConfig(&'static str),
    /// A message was addressed to another node or is malformed for its kind.
    InvalidMessage(&'static str),
    /// Storage failed while the node was being constructed.
    Storage(StorageError),
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLeader => write!(formatter, "proposal dropped: no leader known"),
            Self::LeaderTransferInProgress => {
                write!(
                    formatter,
                    "proposal dropped: leadership transfer in progress"
                )
            }
            Self::NotAMember => write!(formatter, "this node is not a member of the cluster"),
            Self::UncommittedLogFull => {
                write!(
                    formatter,
                    "proposal dropped: uncommitted log size limit reached"
                )
            }
            Self::ProposalBatchTooLarge => write!(formatter, "proposal batch has too many entries"),
            Self::ConfChangePending => {
                write!(formatter, "another membership change is still pending")
            }
            Self::InvalidConfChange(why) => write!(formatter, "invalid membership change: {why}"),
            Self::MalformedConfChange => write!(formatter, "malformed membership change entry"),
            Self::ReadIndexQueueFull => write!(formatter, "read index queue is full"),
            Self::EmptyReadContext => write!(formatter, "read index context must not be empty"),
            Self::InvalidConfig(why) => write!(formatter, "invalid raft config: {why}"),
            Self::InvalidMessage(why) => write!(formatter, "invalid message: {why}"),
            Self::Storage(error) => write!(formatter, "storage: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Storage(error) => Some(error),
            _ => None,
        }
    }
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Self {
        Self::Storage(error)
    }
}

/// What a [`Storage`](crate::Storage) may answer instead of data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is below the first index: it was compacted into the snapshot.
    Compacted,
    /// The requested index is above the last index.
    Unavailable,
    /// The snapshot is being built; the leader retries on a later heartbeat.
    SnapshotTemporarilyUnavailable,
    /// Anything else (I/O, corruption). Fatal to the node once it is running.
    Other(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compacted => write!(formatter, "requested index is compacted"),
            Self::Unavailable => write!(formatter, "requested index is beyond the last index"),
            Self::SnapshotTemporarilyUnavailable => {
                write!(formatter, "snapshot is temporarily unavailable")
            }
            Self::Other(what) => write!(formatter, "{what}"),
        }
    }
}

impl std::error::Error for StorageError {}
