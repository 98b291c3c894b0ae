//! The Cluster service: the member list of a one-member cluster; changes come with Raft (issue 3).

use std::sync::Arc;

use keel_api::etcdserverpb::cluster_server::Cluster;
use keel_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::unimplemented::not_yet;
use crate::Node;

#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("Cluster.MemberAdd", 3))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("Cluster.MemberRemove", 3))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("Cluster.MemberUpdate", 3))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = self.node.members();
        Ok(Response::new(MemberListResponse {
            // etcd's Cluster service leaves the revision out of its headers.
            header: Some(ResponseHeader {
                revision: 0,
                ..self.node.header(0)
            }),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("Cluster.MemberPromote", 3))
    }
}
