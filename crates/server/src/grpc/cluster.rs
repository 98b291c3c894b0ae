//! The Cluster service: the member list and membership changes (see `node/members.rs`).

use std::sync::Arc;

use keel_api::etcdserverpb::cluster_server::Cluster;
use keel_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::Node;

#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService { node }
    }

    /// etcd's Cluster service leaves the revision out of its headers.
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: 0,
            ..self.node.header(0)
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let response = self.node.member_add(request.into_inner()).await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.header()),
            ..response
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let response = self.node.member_remove(request.into_inner()).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.header()),
            ..response
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let response = self.node.member_update(request.into_inner()).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.header()),
            ..response
        }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.node.members();
        Ok(Response::new(MemberListResponse {
            header: Some(self.header()),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let response = self.node.member_promote(request.into_inner()).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.header()),
            ..response
        }))
    }
}
