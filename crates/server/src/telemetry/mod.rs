//! Distributed tracing inside a member: which spans Keel makes and how a trace crosses process
//! boundaries. The exporter (OTLP, sampling, the bounded span queue) lives in the `keel`
//! binary; this module only makes spans and moves trace contexts.
//!
//! ```text
//!  client ──traceparent / uber-trace-id──▶ grpc span (server.rs)  etcdserverpb.KV/Put
//!                                            └─ raft.propose (node.rs) ── context in the entry ─┐
//!  every member the entry reaches (raft_spans.rs, replica thread):                             │
//!      raft.append (WAL append + fsync) · raft.replicate (leader) / raft.commit · raft.apply ◀─┘
//!  reads: raft.read_index · raft.wait_apply · range      leases: lease.expire   watch: watch.notify
//! ```
//!
//! Everything here first checks [`enabled`], one relaxed atomic load: with tracing off (the
//! default) no OpenTelemetry layer is installed, no context is extracted or stored in entries,
//! and the replica thread does no per-entry work.

mod entry;
mod jaeger;
mod raft_spans;
mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use entry::EntryTrace;
pub use jaeger::JaegerPropagator;
pub use raft_spans::RaftSpans;
pub use server::GrpcTraceLayer;

/// Name of the instrumentation scope of every span Keel makes itself.
pub const TRACER_NAME: &str = "keel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span making on; the binary calls it once it has installed the OpenTelemetry layer.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether distributed tracing is on (`--enable-distributed-tracing`).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The propagators a request's context is read with: W3C `traceparent` / `tracestate`, W3C
/// `baggage`, then Jaeger's `uber-trace-id` / `uberctx-*` (OpenTracing clients). A later
/// propagator's span context wins when a request carries several.
pub fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(JaegerPropagator),
            Box::new(BaggagePropagator::new()),
            Box::new(TraceContextPropagator::new()),
        ])
    })
}

/// The trace context a request's metadata carries (empty when it carries none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HeaderExtractor(headers))
}

/// The current `tracing` span's context as it goes into a log entry: only when tracing is on
/// and the span is sampled (an unsampled trace adds no bytes to the log).
pub fn current_entry_trace() -> Option<EntryTrace> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| EntryTrace::from_span_context(span_context))
}

/// Records an attribute on the current span when tracing is on (no-op otherwise).
pub fn record(key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        tracing::Span::current().set_attribute(key, value);
    }
}

/// Reads gRPC metadata (HTTP/2 headers) for the propagators.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
