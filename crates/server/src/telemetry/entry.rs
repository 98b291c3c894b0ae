//! The trace context a log entry carries, so that every member the entry reaches (the leader
//! above all, for a write sent to a follower) puts its spans in the proposer's trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

/// A sampled span's identity in 25 bytes: trace id (16), span id (8), W3C trace flags (1).
/// Trace state and baggage stay with the proposer; they don't go into the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryTrace {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl EntryTrace {
    pub const ENCODED_BYTES: usize = 25;

    pub fn from_span_context(context: &SpanContext) -> EntryTrace {
        EntryTrace {
            trace_id: context.trace_id().to_bytes(),
            span_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        }
    }

    pub fn encode(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.trace_id);
        bytes.extend_from_slice(&self.span_id);
        bytes.push(self.flags);
    }

    /// None when `bytes` is too short.
    pub fn decode(bytes: &[u8]) -> Option<EntryTrace> {
        let bytes = bytes.get(..Self::ENCODED_BYTES)?;
        Some(EntryTrace {
            trace_id: bytes[..16].try_into().expect("16 bytes"),
            span_id: bytes[16..24].try_into().expect("8 bytes"),
            flags: bytes[24],
        })
    }

    /// A context whose (remote) parent is this span, for spans made on another thread or
    /// member.
    pub fn parent_context(&self) -> Context {
        use opentelemetry::trace::TraceContextExt;
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_bytes_and_span_context() {
        let trace = EntryTrace {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: 1,
        };
        let mut bytes = Vec::new();
        trace.encode(&mut bytes);
        assert_eq!(bytes.len(), EntryTrace::ENCODED_BYTES);
        assert_eq!(EntryTrace::decode(&bytes), Some(trace));
        assert_eq!(EntryTrace::decode(&bytes[..24]), None);
        use opentelemetry::trace::TraceContextExt;
        let context = trace.parent_context();
        assert_eq!(
            EntryTrace::from_span_context(context.span().span_context()),
            trace
        );
    }
}
