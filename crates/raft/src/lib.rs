//! keel-raft is Keel's Raft consensus core: a deterministic state machine with no I/O, no
//! clock, no threads and no dependencies.
//!
//! Messages, ticks and proposals go in; a [`Ready`] comes out, listing what to persist, what
//! to send and what to apply. The runtime (in `keel-server`) owns the WAL, the transport and
//! the state machine, and implements [`Storage`] over its WAL.
//!
//! ```text
//!     runtime                                    keel-raft (RawNode)
//!     -------                                    -------------------
//!     timer ----------------- tick() ---------->+
//!     peers ----------------- step(msg) ------->|  roles, terms, votes,
//!     clients --------------- propose(data) --->|  log = Storage + unstable tail,
//!                             read_index(ctx) ->|  progress, commit, reads
//!                             transfer_leader ->|
//!                                               |
//!           <---------------- ready() ----------+
//!     Ready { hard_state, entries, snapshot,    |
//!             messages, committed_entries,      |
//!             read_states, soft_state }         |
//!       1. WAL: snapshot, entries, hard_state   |
//!          fsync                                |       Storage (trait)
//!       2. transport: send messages   <- only after 1 (they may vote for or
//!                                        acknowledge what 1 persisted)
//!       3. state machine: apply committed_entries,
//!          apply_conf_change(...) for ConfChange entries ---->|
//!       4. serve read_states once applied >= index            |
//!       5. advance() -------------------------------------->+ unstable tail -> stable,
//!                                                              applied index moves
//! ```
//!
//! A restart rebuilds the node from its [`Storage`] alone (hard state, snapshot, entries):
//! whatever was in a Ready that was not persisted is lost, exactly as after a power cut, and
//! the protocol tolerates it because nothing was sent that depended on it.
//!
//! The core trusts its Storage: an unexpected storage error while running is fatal (panic),
//! and so is a broken invariant (a committed entry overwritten, the commit index beyond the
//! log). Everything a caller can act on is an [`Error`].
//!
//! See `docs/design/raft.md` for the message types, the Ready/advance contract, the
//! invariants and what is deliberately absent. `tests/simulation.rs` checks the safety
//! properties under a lossy, partitioned, crashing simulated network.

#![deny(clippy::all, clippy::pedantic)]
#![allow(
    // Raft's vocabulary (RaftLog, RaftState) repeats the crate name on purpose.
    clippy::module_name_repetitions,
    // Indexes are u64 on the wire and in storage; lengths are usize. Conversions are checked
    // where they could overflow.
    clippy::cast_possible_truncation
)]

mod config;
mod error;
mod log;
mod message;
mod progress;
mod raft;
mod raw_node;
mod read_only;
mod rng;
mod storage;
mod tracker;

pub use config::Config;
pub use error::{Error, StorageError};
pub use message::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, Message, MessageKind,
    NodeId, ReadState, Role, Snapshot, SnapshotMetadata, SoftState, TRANSFER_CONTEXT,
};
pub use progress::ProgressState;
pub use raw_node::{ProgressStatus, RawNode, Ready, SnapshotStatus, Status};
pub use rng::SplitMix64;
pub use storage::{MemStorage, RaftState, Storage};
