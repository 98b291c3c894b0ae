//! The server span of every gRPC request: a tower layer on the client API's tonic server. It
//! reads the caller's trace context from the request's metadata, names the span after the RPC
//! (`etcdserverpb.KV/Put`) as OpenTelemetry's RPC conventions ask, and records the gRPC status.
//! Handlers add what only they know (keys, revision, counts) with [`super::record`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::enabled;

/// Wraps the client API's services; does nothing but one flag check while tracing is off.
#[derive(Debug, Clone)]
pub struct GrpcTraceLayer {
    /// The member id in hex, as etcd prints member ids (formatted once, not per request).
    member_id: Arc<str>,
}

impl GrpcTraceLayer {
    pub fn new(member_id: u64) -> GrpcTraceLayer {
        GrpcTraceLayer {
            member_id: format!("{member_id:x}").into(),
        }
    }
}

impl<S> tower_layer::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> GrpcTrace<S> {
        GrpcTrace {
            inner,
            member_id: Arc::clone(&self.member_id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
    member_id: Arc<str>,
}

type Traced<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Traced<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Either::Left(self.inner.call(request));
        }
        let name = request.uri().path().trim_start_matches('/');
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let span = tracing::info_span!(
            target: "keel::grpc",
            "grpc.server",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            keel.member_id = &*self.member_id,
        );
        // Before the span is first entered: the parent can't change after that.
        let _ = span.set_parent(super::extract(request.headers()));
        let future = span.in_scope(|| self.inner.call(request));
        Either::Right(Box::pin(
            async move {
                let result = future.await;
                let span = tracing::Span::current();
                match &result {
                    Ok(response) => {
                        // An error is a trailers-only response: the status is in the headers.
                        // A success's status comes in the trailers, after this span ends.
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|value| value.parse::<i64>().ok())
                            .unwrap_or(0);
                        span.record("rpc.grpc.status_code", code);
                        if code == 0 {
                            span.record("otel.status_code", "OK");
                        } else {
                            span.record("otel.status_code", "ERROR");
                            if let Some(message) = response
                                .headers()
                                .get("grpc-message")
                                .and_then(|value| value.to_str().ok())
                            {
                                span.record("otel.status_description", message);
                            }
                        }
                    }
                    Err(_) => {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span),
        ))
    }
}
