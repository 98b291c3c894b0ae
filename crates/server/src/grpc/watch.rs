//! The Watch service: each stream is served by its own task (see `crate::watch`).

use std::sync::Arc;

use keel_api::etcdserverpb::watch_server::Watch;
use keel_api::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Auth;
use crate::watch::{serve_stream, WatchConfig, RESPONSES_QUEUED_MAX};
use crate::Node;

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
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (sender, receiver) = mpsc::channel(RESPONSES_QUEUED_MAX);
        // Each watcher's range is checked when it is created, with the stream's token.
        let permit = self.auth.watch_permit(request.metadata().clone());
        tokio::spawn(serve_stream(
            Arc::clone(&self.node),
            self.config.clone(),
            request.into_inner(),
            sender,
            permit,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
