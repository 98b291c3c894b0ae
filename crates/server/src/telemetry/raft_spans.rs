//! Spans of the replica thread, which has no async runtime and no `tracing` span of the
//! request: each is made with the OpenTelemetry API, an explicit parent (the proposer's span,
//! carried in the log entry) and explicit start and end times.
//!
//! Per traced entry, on every member it reaches:
//! - `raft.append`: the WAL append and the one fsync of the batch it came in;
//! - `raft.replicate` on the leader (fsynced here → committed, i.e. waiting for a quorum's
//!   acknowledgements), `raft.commit` on a follower (fsynced here → the leader's commit index
//!   reached it);
//! - `raft.apply`: applying it to the store.
//!
//! Per traced linearizable read, on the member serving it: `raft.read_index` (from joining a
//! batch of reads to knowing the read index from the leader: reads that arrive together share
//! one ReadIndex round) and `raft.wait_apply` (until this member has applied that index).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use keel_raft::{Entry, EntryKind};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
use opentelemetry::KeyValue;

use super::{EntryTrace, TRACER_NAME};
use crate::request::Request;

/// Traced entries remembered between append and apply; past it new ones go untraced (entries
/// that never commit, overwritten by a new leader, are dropped when a later index applies).
const TRACKED_ENTRIES_MAX: usize = 65_536;
/// Traced reads remembered between request and answer (over all rounds).
const TRACKED_READS_MAX: usize = 16_384;

struct Appended {
    trace: EntryTrace,
    at: SystemTime,
}

struct Read {
    trace: EntryTrace,
    requested_at: SystemTime,
    indexed: Option<(u64, SystemTime)>,
}

/// An entry being applied: the parent and start of its `raft.apply` span.
pub struct Applying {
    trace: EntryTrace,
    index: u64,
    started: SystemTime,
}

/// The replica thread's span maker; exists only while tracing is on.
pub struct RaftSpans {
    tracer: BoxedTracer,
    member_id: String,
    appended: BTreeMap<u64, Appended>,
    /// Entries applied in a batch whose transaction has not committed yet.
    batched: Vec<(Applying, bool)>,
    /// Traced reads by the id of the ReadIndex round (batch) they are in.
    reads: HashMap<u64, Vec<Read>>,
    reads_tracked: usize,
}

impl RaftSpans {
    /// None while tracing is off: the replica then does no per-entry tracing work at all.
    pub fn new(member_id: u64) -> Option<RaftSpans> {
        super::enabled().then(|| RaftSpans {
            tracer: opentelemetry::global::tracer(TRACER_NAME),
            member_id: format!("{member_id:x}"),
            appended: BTreeMap::new(),
            batched: Vec::new(),
            reads: HashMap::new(),
            reads_tracked: 0,
        })
    }

    fn emit(
        &self,
        name: &'static str,
        trace: &EntryTrace,
        start: SystemTime,
        end: SystemTime,
        mut attributes: Vec<KeyValue>,
    ) {
        attributes.push(KeyValue::new("keel.member_id", self.member_id.clone()));
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &trace.parent_context());
        span.end_with_timestamp(end);
    }

    /// The batch `entries` was appended to the WAL and fsynced, from `started` until now.
    pub fn appended(&mut self, entries: &[Entry], started: SystemTime, term: u64) {
        let now = SystemTime::now();
        for entry in entries {
            if entry.kind != EntryKind::Normal {
                continue;
            }
            let Some(trace) = Request::entry_trace(&entry.data) else {
                continue;
            };
            self.emit(
                "raft.append",
                &trace,
                started,
                now,
                vec![
                    KeyValue::new("raft.index", entry.index as i64),
                    KeyValue::new("raft.term", term as i64),
                    KeyValue::new("raft.batch_entries", entries.len() as i64),
                    KeyValue::new("raft.entry_bytes", entry.data.len() as i64),
                ],
            );
            if self.appended.len() < TRACKED_ENTRIES_MAX {
                self.appended
                    .insert(entry.index, Appended { trace, at: now });
            }
        }
    }

    /// Entry `index` is committed and about to be applied. Emits its replicate / commit span
    /// and returns what times its apply span, if the entry is traced.
    pub fn committed(&mut self, index: u64, leader: bool) -> Option<Applying> {
        // Everything before `index` is applied or was overwritten: forget it.
        let later = self.appended.split_off(&index);
        self.appended = later;
        let appended = self.appended.remove(&index)?;
        let now = SystemTime::now();
        let name = if leader {
            "raft.replicate"
        } else {
            "raft.commit"
        };
        self.emit(
            name,
            &appended.trace,
            appended.at,
            now,
            vec![KeyValue::new("raft.index", index as i64)],
        );
        Some(Applying {
            trace: appended.trace,
            index,
            started: now,
        })
    }

    /// The entry `applying` describes was applied (`ok`: without a request error).
    pub fn applied(&self, applying: Applying, ok: bool, revision: i64) {
        let mut attributes = vec![
            KeyValue::new("raft.index", applying.index as i64),
            KeyValue::new("etcd.revision", revision),
        ];
        if !ok {
            attributes.push(KeyValue::new("etcd.request_failed", true));
        }
        self.emit(
            "raft.apply",
            &applying.trace,
            applying.started,
            SystemTime::now(),
            attributes,
        );
    }

    /// Like [`RaftSpans::applied`] for an entry applied in a batch: its span ends when the
    /// batch's transaction commits ([`RaftSpans::batches_committed`]).
    pub fn applied_in_batch(&mut self, applying: Applying, ok: bool) {
        if self.batched.len() < TRACKED_ENTRIES_MAX {
            self.batched.push((applying, ok));
        }
    }

    /// The batches applied from one Ready are committed (the store is at `revision`).
    pub fn batches_committed(&mut self, revision: i64) {
        for (applying, ok) in std::mem::take(&mut self.batched) {
            self.applied(applying, ok, revision);
        }
    }

    /// A traced linearizable read joined the ReadIndex round `round`.
    pub fn read_requested(&mut self, round: u64, trace: EntryTrace) {
        if self.reads_tracked >= TRACKED_READS_MAX {
            // Reads that were never answered (the member lost its leader and they timed out):
            // forget them rather than grow.
            self.reads.clear();
            self.reads_tracked = 0;
        }
        self.reads_tracked += 1;
        self.reads.entry(round).or_default().push(Read {
            trace,
            requested_at: SystemTime::now(),
            indexed: None,
        });
    }

    /// Round `round` learned its read index.
    pub fn read_indexed(&mut self, round: u64, index: u64) {
        let Some(reads) = self.reads.get_mut(&round) else {
            return;
        };
        let now = SystemTime::now();
        let mut started = Vec::with_capacity(reads.len());
        for read in reads.iter_mut() {
            read.indexed = Some((index, now));
            started.push((read.trace, read.requested_at));
        }
        for (trace, requested_at) in started {
            self.emit(
                "raft.read_index",
                &trace,
                requested_at,
                now,
                vec![KeyValue::new("raft.read_index", index as i64)],
            );
        }
    }

    /// Round `round`'s reads were answered (`None`: the round failed).
    pub fn read_answered(&mut self, round: u64, applied: Option<u64>) {
        let Some(reads) = self.reads.remove(&round) else {
            return;
        };
        self.reads_tracked = self.reads_tracked.saturating_sub(reads.len());
        for read in reads {
            let Some((index, indexed_at)) = read.indexed else {
                continue;
            };
            let mut span = self
                .tracer
                .span_builder("raft.wait_apply")
                .with_kind(SpanKind::Internal)
                .with_start_time(indexed_at)
                .with_attributes(vec![
                    KeyValue::new("raft.read_index", index as i64),
                    KeyValue::new("raft.applied_index", applied.unwrap_or(0) as i64),
                    KeyValue::new("keel.member_id", self.member_id.clone()),
                ])
                .start_with_context(&self.tracer, &read.trace.parent_context());
            if applied.is_none() {
                span.set_status(Status::error("read failed"));
            }
            span.end();
        }
    }
}
