//! Sends the caller's trace context with every request, so a traced application's spans and
//! the server's join one trace: W3C `traceparent` (and `tracestate`) from the current
//! `tracing` span's OpenTelemetry context, or else from OpenTelemetry's current context.
//! Without the `otel` feature, or outside any sampled span, nothing is added.

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The interceptor every call of [`crate::Client`] goes through.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        #[cfg(feature = "otel")]
        inject(request.metadata_mut());
        #[cfg(not(feature = "otel"))]
        let _ = request.metadata_mut();
        Ok(request)
    }
}

#[cfg(feature = "otel")]
fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let span = tracing::Span::current();
    // The cheap check: no current span and no OpenTelemetry context means nothing to send.
    let context = if span.is_none() {
        opentelemetry::Context::current()
    } else {
        span.context()
    };
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    if !span_context.is_valid() {
        return;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    );
    if let Ok(value) = traceparent.parse() {
        metadata.insert("traceparent", value);
    }
    let tracestate = span_context.trace_state().header();
    if !tracestate.is_empty() {
        if let Ok(value) = tracestate.parse() {
            metadata.insert("tracestate", value);
        }
    }
}
