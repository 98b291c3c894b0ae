//! Keel's durable state: the write-ahead log that is a member's Raft log, and the MVCC key-value
//! store the log's entries are applied to.
//!
//! This crate does disk I/O and nothing else: it knows no gRPC, no Raft rules and no clocks.
//! Byte formats and invariants are drawn in `docs/design/wal.md` and `docs/design/mvcc.md`.

pub mod mvcc;
pub mod wal;
