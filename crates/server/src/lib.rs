//! Keel's server: a member's runtime (the node), the apply path from log entries to the MVCC
//! store, and the etcd v3 gRPC services.
//!
//! Flow of a write: `grpc` checks it (`validate`), the `node` appends it to the WAL and applies it
//! (`apply`), and `grpc` fills the response header. Reads go from `grpc` to `range` over the
//! store. Errors reach clients through one table: [`ServerError`] → `keel_api::EtcdError` →
//! `tonic::Status`.

pub mod apply;
pub mod auth;
pub mod busy_poll;
pub mod data_dir;
mod error;
pub mod grpc;
pub mod lease;
pub mod membership;
pub mod node;
pub mod peer_stream;
pub mod quota;
pub mod raft_log;
pub mod range;
pub mod replica;
pub mod request;
pub mod snapshot_transfer;
pub mod store_sync;
pub mod telemetry;
pub mod transport;
pub mod validate;
pub mod watch;

pub use error::ServerError;
pub use node::{Node, NodeConfig, StartError};
