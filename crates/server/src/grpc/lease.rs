//! The Lease service. Grant and Revoke go through the log; KeepAlive, TimeToLive and Leases are
//! answered by the member that keeps lease deadlines.

use std::sync::Arc;

use futures::StreamExt;
use keel_api::etcdserverpb::lease_server::Lease;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::EtcdError;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::Response as Applied;
use crate::auth::Auth;
use crate::lease::LEASE_TTL_SECS_MAX;
use crate::request::Request as Proposal;
use crate::Node;

/// Keep-alive answers queued for a client before the stream waits for it to read.
const KEEP_ALIVES_QUEUED_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct LeaseService {
    node: Arc<Node>,
    auth: Arc<Auth>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>, auth: Arc<Auth>) -> LeaseService {
        LeaseService { node, auth }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.auth.check_lease(&request, None)?;
        let mut request = request.into_inner();
        if request.ttl > LEASE_TTL_SECS_MAX {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        if request.id == 0 {
            request.id = self.node.next_lease_id();
        }
        let applied = self.node.propose(Proposal::LeaseGrant(request)).await?;
        let Applied::LeaseGrant(mut response) = applied else {
            unreachable!("a grant is answered with a grant response")
        };
        response.header = Some(self.node.header(0));
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // etcd answers an unknown lease before proposing anything.
        if !self.node.lessor().exists(request.get_ref().id) {
            return Err(EtcdError::LeaseNotFound.into());
        }
        self.auth
            .check_lease(&request, Some(request.get_ref().id))?;
        let request = request.into_inner();
        let applied = self.node.propose(Proposal::LeaseRevoke(request)).await?;
        let Applied::LeaseRevoke(mut response) = applied else {
            unreachable!("a revoke is answered with a revoke response")
        };
        let revision = response.header.map_or(0, |header| header.revision);
        response.header = Some(self.node.header(revision));
        Ok(Response::new(response))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (sender, receiver) = mpsc::channel(KEEP_ALIVES_QUEUED_MAX);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                // An unknown or expired lease is answered with TTL 0, as etcd does.
                let ttl = match node.lease_renew(request.id).await {
                    Ok(ttl) => ttl,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let response = LeaseKeepAliveResponse {
                    header: Some(node.header(0)),
                    id: request.id,
                    ttl,
                };
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.auth.check_lease(&request, None)?;
        let metadata =
            tonic::Request::from_parts(request.metadata().clone(), Default::default(), ());
        let request = request.into_inner();
        let mut response = self.node.lease_time_to_live(request).await?;
        if response.ttl != -1 && request.keys {
            // Listing the keys reads them (etcd 3.5).
            self.auth.check_read_keys(&metadata, &response.keys)?;
        }
        response.header = Some(self.node.header(0));
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .node
            .lessor()
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(0)),
            leases,
        }))
    }
}
