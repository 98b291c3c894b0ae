//! Keel's benchmark: a load generator for the etcd v3 API, in the style of etcd's `benchmark`
//! tool, so it drives Keel and etcd alike; and `compare`, which runs the same workloads on a
//! three-member etcd and a three-member Keel in turn and prints medians and ratios.
//!
//! - `config`: the flags every workload shares (connections, clients, total or duration, keys).
//! - `workload`: put, range, txn-put, lease-keepalive, watch-latency, mixed.
//! - `report`: histograms, percentiles, text and JSON.
//! - `cluster`: starting and measuring local etcd and Keel clusters (RSS, CPU time).
//! - `compare`: the side-by-side comparison and its table.

pub mod cluster;
pub mod compare;
pub mod config;
pub mod report;
pub mod workload;

pub use config::{Config, Consistency};
pub use report::{median, Latencies, LatencySummary, Report};
pub use workload::{run, run_put, Workload};

/// Why a run could not be made (failed requests are counted in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or a combination of flags is wrong.
    #[error("{0}")]
    Config(String),
    /// Could not open a connection.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// A request needed before measuring (a lease grant, a watch) failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// Starting or stopping a server, or reading its /proc files, failed.
    #[error("{0}")]
    Cluster(String),
}
