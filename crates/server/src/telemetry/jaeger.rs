//! Jaeger's propagation format, so services instrumented with OpenTracing / jaeger-client join
//! the same trace: `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}` (hex; the
//! trace id 64 or 128 bits; the value may arrive URL-encoded, `%3A` for `:`) and one
//! `uberctx-{key}` header per baggage item.
//!
//! Written here because `opentelemetry-jaeger-propagator` lags the `opentelemetry` version
//! Keel uses.

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::propagation::{text_map_propagator::FieldIter, Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};

const TRACE_HEADER: &str = "uber-trace-id";
const BAGGAGE_PREFIX: &str = "uberctx-";
/// Jaeger's flag bits: sampled, and debug (which implies sampled).
const FLAG_SAMPLED: u8 = 0x01;
const FLAG_DEBUG: u8 = 0x02;
/// A header value longer than this is not a trace id (bounds the work per request).
const HEADER_BYTES_MAX: usize = 256;
/// Baggage items taken from one request.
const BAGGAGE_ITEMS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
pub struct JaegerPropagator;

impl JaegerPropagator {
    /// Parses an `uber-trace-id` value; None when it is malformed or all zeros.
    pub fn parse(value: &str) -> Option<SpanContext> {
        if value.len() > HEADER_BYTES_MAX {
            return None;
        }
        let decoded = percent_decode(value)?;
        let mut parts = decoded.split(':');
        let (trace, span, _parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || trace.is_empty() || trace.len() > 32 || span.len() > 16 {
            return None;
        }
        let trace_id = TraceId::from_bytes(u128::from_str_radix(trace, 16).ok()?.to_be_bytes());
        let span_id = SpanId::from_bytes(u64::from_str_radix(span, 16).ok()?.to_be_bytes());
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let sampled = flags & (FLAG_SAMPLED | FLAG_DEBUG) != 0;
        Some(SpanContext::new(
            trace_id,
            span_id,
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        ))
    }
}

impl TextMapPropagator for JaegerPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if context.is_valid() {
            let flags = if context.is_sampled() {
                FLAG_SAMPLED
            } else {
                0
            };
            injector.set(
                TRACE_HEADER,
                format!("{}:{}:0:{flags:x}", context.trace_id(), context.span_id()),
            );
        }
        for (key, (value, _)) in cx.baggage() {
            injector.set(&format!("{BAGGAGE_PREFIX}{key}"), value.to_string());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let mut cx = cx.clone();
        if let Some(context) = extractor
            .get(TRACE_HEADER)
            .and_then(JaegerPropagator::parse)
        {
            cx = cx.with_remote_span_context(context);
        }
        let baggage: Vec<KeyValue> = extractor
            .keys()
            .into_iter()
            .filter_map(|key| {
                let name = key.strip_prefix(BAGGAGE_PREFIX)?;
                let value = percent_decode(extractor.get(key)?)?;
                Some(KeyValue::new(name.to_string(), value))
            })
            .take(BAGGAGE_ITEMS_MAX)
            .collect();
        if baggage.is_empty() {
            cx
        } else {
            cx.with_baggage(baggage)
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: std::sync::OnceLock<[String; 1]> = std::sync::OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [TRACE_HEADER.to_string()]))
    }
}

/// Decodes `%XX` escapes (Jaeger clients URL-encode header values); None if one is malformed
/// or the result is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_string());
    }
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut position = 0;
    while position < bytes.len() {
        if bytes[position] == b'%' {
            let hex = std::str::from_utf8(bytes.get(position + 1..position + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            position += 3;
        } else {
            decoded.push(bytes[position]);
            position += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn extract(headers: &[(&str, &str)]) -> Context {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        JaegerPropagator.extract(&map)
    }

    #[test]
    fn reads_128_and_64_bit_trace_ids_plain_and_url_encoded() {
        for (value, trace) in [
            (
                "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
                "4bf92f3577b34da6a3ce929d0e0e4736",
            ),
            (
                "a3ce929d0e0e4736%3A00f067aa0ba902b7%3A0%3A1",
                "0000000000000000a3ce929d0e0e4736",
            ),
            (
                "a3ce929d0e0e4736:f067aa0ba902b7:53995c3f42cd8ad8:3",
                "0000000000000000a3ce929d0e0e4736",
            ),
        ] {
            let cx = extract(&[("uber-trace-id", value)]);
            let span = cx.span();
            let context = span.span_context();
            assert_eq!(context.trace_id().to_string(), trace, "{value}");
            assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7", "{value}");
            assert!(context.is_sampled() && context.is_remote(), "{value}");
        }
    }

    #[test]
    fn malformed_or_zero_ids_are_ignored() {
        for value in [
            "",
            "abc",
            "1:2:3",
            "1:2:3:4:5",
            "0:00f067aa0ba902b7:0:1",
            "a3ce929d0e0e4736:0:0:1",
            "xyz:00f067aa0ba902b7:0:1",
            "a3ce929d0e0e4736%3:00f067aa0ba902b7:0:1",
        ] {
            let cx = extract(&[("uber-trace-id", value)]);
            assert!(!cx.span().span_context().is_valid(), "{value:?}");
        }
    }

    #[test]
    fn unsampled_flags_and_baggage() {
        let cx = extract(&[
            ("uber-trace-id", "a3ce929d0e0e4736:00f067aa0ba902b7:0:0"),
            ("uberctx-tenant", "blue%20team"),
        ]);
        assert!(!cx.span().span_context().is_sampled());
        assert_eq!(
            cx.baggage().get("tenant").map(|value| value.to_string()),
            Some("blue team".to_string())
        );
    }

    #[test]
    fn injects_what_it_extracts() {
        let cx = extract(&[(
            "uber-trace-id",
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
        )]);
        let mut carrier = HashMap::new();
        JaegerPropagator.inject_context(&cx, &mut carrier);
        assert_eq!(
            carrier.get("uber-trace-id").map(String::as_str),
            Some("4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1")
        );
    }
}
