//! A typed, async Rust client for Keel (and etcd) over the etcd v3 gRPC API.
//!
//! ```no_run
//! # async fn example() -> Result<(), keel_client::Error> {
//! use keel_client::{Client, GetOptions, PutOptions};
//! let mut client = Client::connect("http://127.0.0.1:2379").await?;
//! client.put("services/api/10.0.0.1:80", "up", PutOptions::new()).await?;
//! let found = client.get("services/api/", GetOptions::new().with_prefix()).await?;
//! assert_eq!(found.count, 1);
//! # Ok(()) }
//! ```
//!
//! Every request carries the caller's trace context (W3C `traceparent`) when it runs inside a
//! sampled OpenTelemetry span (feature `otel`, on by default).

mod client;
mod error;
mod options;
mod trace_context;

pub use client::{Client, LeaseKeeper, WatchStream};
pub use error::Error;
pub use keel_api::etcdserverpb as proto;
pub use options::{prefix_end, DeleteOptions, GetOptions, PutOptions};
pub use trace_context::TraceContextInterceptor;
