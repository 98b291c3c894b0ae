//! The Watch service: each stream is served by its own task (see `crate::watch`).
//!
//! The service is written out here rather than generated: tonic's generated `WatchServer`
//! encodes and frames every response on its own, while watch streams hand over their responses
//! already encoded and framed ([`crate::watch::Frames`]: one encoding shared by every watcher
//! sent the same events), a batch at a time, and the response body writes those bytes as they
//! are. Requests are decoded by tonic with prost as usual. Against tonic's encoder fed the
//! shared parts response by response (BENCHMARKS.md, sixth session; 20 streams × 50 watchers,
//! 400 puts at 50/s, 8 rounds): server CPU −5 %, event p99 3.11 → 2.79 ms (medians; within
//! the noise in shorter runs).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use keel_api::etcdserverpb::WatchRequest;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstDecoder;

use crate::auth::Auth;
use crate::watch::{serve_stream, ResponseBatch, WatchConfig, BATCHES_QUEUED_MAX};
use crate::Node;

/// The one method's path, as the generated server matches it.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";
/// The request header naming a compression (none is supported, as with tonic's defaults).
const GRPC_ENCODING: &str = "grpc-encoding";

#[derive(Debug, Clone)]
pub struct WatchService {
    node: Arc<Node>,
    config: WatchConfig,
    auth: Arc<Auth>,
}

impl WatchService {
    pub fn new(node: Arc<Node>, config: WatchConfig, auth: Arc<Auth>) -> WatchService {
        WatchService { node, config, auth }
    }

    fn watch(&self, request: Request<Streaming<WatchRequest>>) -> ResponseBody {
        let (sender, receiver) = mpsc::channel(BATCHES_QUEUED_MAX);
        // Each watcher's range is checked when it is created, with the stream's token.
        let permit = self.auth.watch_permit(request.metadata().clone());
        tokio::spawn(serve_stream(
            Arc::clone(&self.node),
            self.config.clone(),
            request.into_inner(),
            sender,
            permit,
        ));
        ResponseBody {
            batches: receiver,
            ended: false,
        }
    }
}

/// A stream's response body: its batches of framed responses as they come, then the status in
/// the trailers (OK when the stream ended without an error), as tonic's servers end streams.
pub struct ResponseBody {
    batches: mpsc::Receiver<ResponseBatch>,
    ended: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.batches.poll_recv(context)) {
            Some(Ok(batch)) => return Poll::Ready(Some(Ok(Frame::data(batch)))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// The `etcdserverpb.Watch` service, in place of the generated `WatchServer`.
#[derive(Debug, Clone)]
pub struct WatchServer {
    service: Arc<WatchService>,
    max_decoding_message_size: Option<usize>,
}

impl WatchServer {
    pub fn new(service: WatchService) -> WatchServer {
        WatchServer {
            service: Arc::new(service),
            max_decoding_message_size: None,
        }
    }

    /// Limits the size of a decoded request (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> WatchServer {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

impl<B> tower_service::Service<http::Request<B>> for WatchServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            // As the generated servers answer a method they do not have.
            return Box::pin(async move { Ok(Status::unimplemented("").into_http()) });
        }
        // tonic refuses a compressed request it cannot decode; so does this service.
        if let Some(encoding) = request.headers().get(GRPC_ENCODING) {
            if encoding.as_bytes() != b"identity" {
                let status = Status::unimplemented(format!(
                    "Content is compressed with `{}` which isn't supported",
                    String::from_utf8_lossy(encoding.as_bytes())
                ));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        let (parts, body) = request.into_parts();
        let requests = Streaming::new_request(
            ProstDecoder::<WatchRequest>::default(),
            body,
            None,
            self.max_decoding_message_size,
        );
        let request = Request::from_http(http::Request::from_parts(parts, requests));
        let body = self.service.watch(request);
        let mut response = http::Response::new(Body::new(body));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
        Box::pin(async move { Ok(response) })
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    async fn next_frame(body: &mut ResponseBody) -> Option<Result<Frame<Bytes>, Status>> {
        std::future::poll_fn(|context| Pin::new(&mut *body).poll_frame(context)).await
    }

    /// The body carries the batches as they are, then the status in the trailers, as tonic's
    /// servers end a stream: OK when the stream task ends, its error when it fails.
    #[tokio::test]
    async fn the_body_writes_batches_as_they_are_then_the_status() {
        for (end, code) in [(None, "0"), (Some(Status::unavailable("stopped")), "14")] {
            let (sender, batches) = mpsc::channel(BATCHES_QUEUED_MAX);
            let mut body = ResponseBody {
                batches,
                ended: false,
            };
            sender
                .send(Ok(Bytes::from_static(b"framed")))
                .await
                .unwrap();
            match end {
                Some(status) => sender.send(Err(status)).await.unwrap(),
                None => drop(sender),
            }
            let data = next_frame(&mut body).await.unwrap().unwrap();
            assert_eq!(data.into_data().unwrap(), Bytes::from_static(b"framed"));
            assert!(!body.is_end_stream());
            let trailers = next_frame(&mut body).await.unwrap().unwrap();
            let trailers = trailers.into_trailers().unwrap();
            assert_eq!(trailers.get("grpc-status").unwrap(), code);
            assert!(body.is_end_stream());
            assert!(next_frame(&mut body).await.is_none());
        }
    }
}
