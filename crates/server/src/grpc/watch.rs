//! The Watch service: each stream is served by its own task (see `crate::watch`).
//!
//! The service is written out here rather than generated: tonic's generated `WatchServer`
//! encodes every response with prost, and watch streams hand over responses already encoded
//! ([`EncodedResponse`], one encoding shared by every watcher sent the same events). Requests
//! are decoded with prost as usual; the path, status handling and size limits are tonic's.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use keel_api::etcdserverpb::WatchRequest;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstDecoder;

use crate::auth::Auth;
use crate::watch::{serve_stream, EncodedResponse, ResponseBatch, WatchConfig, BATCHES_QUEUED_MAX};
use crate::Node;

/// The one method's path, as the generated server matches it.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

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

    fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Response<Responses> {
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
        Response::new(Responses {
            batches: receiver,
            batch: Vec::new().into_iter(),
        })
    }
}

/// A stream's responses, one at a time out of the batches it hands over. Every response of a
/// batch is ready at once, so tonic's encoder writes the whole batch into one buffer.
pub struct Responses {
    batches: mpsc::Receiver<ResponseBatch>,
    batch: std::vec::IntoIter<EncodedResponse>,
}

impl Stream for Responses {
    type Item = Result<EncodedResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(response) = self.batch.next() {
                return Poll::Ready(Some(Ok(response)));
            }
            match self.batches.poll_recv(context) {
                Poll::Ready(Some(Ok(batch))) => self.batch = batch.into_iter(),
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Writes encoded responses as they are; reads requests with prost.
#[derive(Debug, Clone, Copy, Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = EncodedResponse;
    type Decode = WatchRequest;
    type Encoder = ResponseEncoder;
    type Decoder = ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<WatchRequest> {
        ProstDecoder::default()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = EncodedResponse;
    type Error = Status;

    fn encode(&mut self, item: EncodedResponse, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.reserve(item.encoded_len());
        item.encode(buffer);
        Ok(())
    }
}

/// The method as tonic's server calls it.
struct WatchMethod(Arc<WatchService>);

impl StreamingService<WatchRequest> for WatchMethod {
    type Response = EncodedResponse;
    type ResponseStream = Responses;
    type Future = BoxFuture<Response<Responses>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let response = self.0.watch(request);
        Box::pin(async move { Ok(response) })
    }
}

/// The `etcdserverpb.Watch` service, in place of the generated `WatchServer`.
#[derive(Debug, Clone)]
pub struct WatchServer {
    service: Arc<WatchService>,
    max_decoding_message_size: Option<usize>,
    max_encoding_message_size: Option<usize>,
}

impl WatchServer {
    pub fn new(service: WatchService) -> WatchServer {
        WatchServer {
            service: Arc::new(service),
            max_decoding_message_size: None,
            max_encoding_message_size: None,
        }
    }

    /// Limits the size of a decoded request (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> WatchServer {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// Limits the size of an encoded response (tonic's default: none).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> WatchServer {
        self.max_encoding_message_size = Some(limit);
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
        let method = WatchMethod(Arc::clone(&self.service));
        let mut grpc = Grpc::new(WatchCodec).apply_max_message_size_config(
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        Box::pin(async move { Ok(grpc.streaming(method, request).await) })
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}
