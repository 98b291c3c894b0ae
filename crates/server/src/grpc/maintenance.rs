//! The Maintenance service: Status and Alarm on one member; the rest follows with Raft (issue 3).

use std::sync::Arc;

use keel_api::etcdserverpb::maintenance_server::Maintenance;
use keel_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::unimplemented::{not_yet, BoxStream};
use crate::auth::Auth;
use crate::{Node, ServerError};

/// The etcd version Keel reports, so tools that check the server's version accept it.
pub const ETCD_COMPATIBLE_VERSION: &str = "3.5.17";

#[derive(Debug, Clone)]
pub struct MaintenanceService {
    node: Arc<Node>,
    /// Status and Alarm are open to everyone, as in etcd 3.4; the rest needs a root user.
    auth: Arc<Auth>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>, auth: Arc<Auth>) -> MaintenanceService {
        MaintenanceService { node, auth }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        use alarm_request::AlarmAction;
        let request = request.into_inner();
        let member_id = self.node.identity().member_id;
        let quota = self.node.quota();
        let concerns_us = request.member_id == 0 || request.member_id == member_id;
        let alarm = AlarmType::try_from(request.alarm).unwrap_or(AlarmType::None);
        let was_raised = quota.no_space();
        // The alarms the answer lists: the active ones (Get), or the ones the call changed.
        let listed = match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Get) => was_raised,
            Ok(AlarmAction::Activate) if concerns_us && alarm == AlarmType::Nospace => {
                quota.set_no_space(true);
                true
            }
            Ok(AlarmAction::Deactivate)
                if concerns_us && matches!(alarm, AlarmType::Nospace | AlarmType::None) =>
            {
                quota.set_no_space(false);
                was_raised
            }
            _ => false,
        };
        let alarms = if listed {
            vec![AlarmMember {
                member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.header(0)),
            alarms,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let db_size = self.node.quota().db_size_bytes() as i64;
        let errors = if self.node.quota().no_space() {
            vec![format!(
                "memberID:{} alarm:NOSPACE ",
                self.node.identity().member_id
            )]
        } else {
            Vec::new()
        };
        let store = self.node.store();
        let index = store.consistent_index();
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(0)),
            version: ETCD_COMPATIBLE_VERSION.to_string(),
            db_size,
            leader: self.node.leader(),
            raft_index: self.node.last_index(),
            raft_term: self.node.term(),
            raft_applied_index: index,
            errors,
            db_size_in_use: db_size,
            is_learner: false,
            ..StatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.auth.check_admin(&request)?;
        Err(not_yet("Maintenance.Defragment", 3))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let hashed = self.node.store().hash_kv(0).map_err(ServerError::from)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(0)),
            hash: hashed.hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let hashed = self
            .node
            .store()
            .hash_kv(revision)
            .map_err(ServerError::from)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(0)),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.auth.check_admin(&request)?;
        Err(not_yet("Maintenance.Snapshot", 3))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node
            .move_leader(request.into_inner().target_id)
            .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.node.header(0)),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.auth.check_admin(&request)?;
        Err(not_yet("Maintenance.Downgrade", 3))
    }
}
