use keel_api::EtcdError;
use thiserror::Error;

/// A failed call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint could not be reached or the address is invalid.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// The server answered with one of etcd's errors.
    #[error("{}", .0.message())]
    Etcd(EtcdError),
    /// The server answered with another gRPC status.
    #[error("{0}")]
    Status(tonic::Status),
}

impl Error {
    /// etcd's error, when the server sent one.
    pub fn etcd(&self) -> Option<EtcdError> {
        match self {
            Error::Etcd(error) => Some(*error),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        match EtcdError::from_status(&status) {
            Some(error) => Error::Etcd(error),
            None => Error::Status(status),
        }
    }
}
