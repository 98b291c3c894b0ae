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
    /// A request's auth token was refused. Clients see etcd's `invalid auth token`; the cause
    /// travels in the `keel-auth-failure` trailer.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken(crate::auth::TokenFailure),
    /// Authenticate on a member that has only the JWT public key (etcd's `ErrVerifyOnly`).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
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
            ServerError::InvalidAuthToken(failure) => {
                let mut status = tonic::Status::from(EtcdError::InvalidAuthToken);
                status.metadata_mut().insert(
                    crate::auth::FAILURE_TRAILER,
                    tonic::metadata::MetadataValue::from_static(failure.name()),
                );
                status
            }
            // etcd has no code for it and sends Unknown with its own text.
            ServerError::VerifyOnly => {
                tonic::Status::unknown("auth: token signing attempted with verify-only key")
            }
            // etcd answers a stopping member's requests with ErrGRPCStopped.
            ServerError::Stopped | ServerError::Fatal(_) => EtcdError::Stopped.into(),
        }
    }
}
