//! Keel's client API: etcd v3's protobuf messages and gRPC services, and the
//! table of etcd error codes.
//!
//! The `.proto` files in `proto/` mirror etcd 3.5's API (plus the fields etcd
//! 3.6 added) name for name and number for number, so that etcd's own
//! clients — `etcdctl`, Go `clientv3`, and the clients in other languages —
//! talk to Keel unchanged. `build.rs` compiles them into the modules below.
//!
//! Each module is one protobuf package and they sit side by side at the crate
//! root, because the generated code refers across packages with paths such as
//! `super::mvccpb::KeyValue`.
//!
//! This crate is data and generated code only: it does no I/O and knows
//! nothing of how Keel serves the API.

#![deny(clippy::all, clippy::pedantic)]

pub mod error;

pub use error::EtcdError;

/// MVCC record types: [`mvccpb::KeyValue`] and watch [`mvccpb::Event`]s.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Auth store records: users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The v3 client API: services KV, Watch, Lease, Cluster, Maintenance and
/// Auth, with their request and response messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The Election service (`etcdctl elect`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// The Lock service (`etcdctl lock`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// Keel's own peer protocol: Raft messages between members (not part of etcd's API).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod keelraftpb {
    tonic::include_proto!("keelraftpb");
}
