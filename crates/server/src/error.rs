//! Server errors, and the one table that turns them into etcd's gRPC statuses.

use keel_api::EtcdError;
use keel_storage::mvcc::MvccError;
use thiserror::Error;

/// Why a request failed. Client errors map to etcd's status for the same failure; `Fatal` means
/// this member stopped (its storage failed) and answers nothing more.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A request error etcd defines, reported as etcd reports it.
    #[error("{}", .0.message())]
    Etcd(EtcdError),
    /// The member is shutting down or has stopped after a fatal error.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// Storage failed; the member stops (fail-stop) rather than serve data it can't trust.
    #[error("storage failed: {0}")]
    Fatal(String),
}

impl From<EtcdError> for ServerError {
    fn from(error: EtcdError) -> ServerError {
        ServerError::Etcd(error)
    }
}

impl From<MvccError> for ServerError {
    fn from(error: MvccError) -> ServerError {
        match error {
            MvccError::Compacted => ServerError::Etcd(EtcdError::Compacted),
            MvccError::FutureRevision => ServerError::Etcd(EtcdError::FutureRevision),
            other => ServerError::Fatal(other.to_string()),
        }
    }
}

impl From<ServerError> for tonic::Status {
    fn from(error: ServerError) -> tonic::Status {
        match error {
            ServerError::Etcd(error) => error.into(),
            // etcd answers a stopping member's requests with ErrGRPCStopped.
            ServerError::Stopped | ServerError::Fatal(_) => EtcdError::Stopped.into(),
        }
    }
}
