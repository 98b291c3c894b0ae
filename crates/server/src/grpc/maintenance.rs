//! The Maintenance service: Status and Alarm on one member; the rest follows with Raft (issue 3).

use std::sync::Arc;

use keel_api::etcdserverpb::maintenance_server::Maintenance;
use keel_api::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::unimplemented::{not_yet, BoxStream};
use crate::Node;

/// The etcd version Keel reports, so tools that check the server's version accept it.
pub const ETCD_COMPATIBLE_VERSION: &str = "3.5.17";

#[derive(Debug, Clone)]
pub struct MaintenanceService {
    node: Arc<Node>,
    db_path: std::path::PathBuf,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>, db_path: std::path::PathBuf) -> MaintenanceService {
        MaintenanceService { node, db_path }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm is ever raised yet (the space quota is checked per request).
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.header(0)),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let db_size = std::fs::metadata(&self.db_path).map_or(0, |metadata| metadata.len() as i64);
        let store = self.node.store();
        let index = store.consistent_index();
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(0)),
            version: ETCD_COMPATIBLE_VERSION.to_string(),
            db_size,
            leader: self.node.identity().member_id,
            raft_index: index,
            raft_term: self.node.term(),
            raft_applied_index: index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
            ..StatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Maintenance.Defragment", 3))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Maintenance.Hash", 3))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("Maintenance.HashKV", 3))
    }

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Maintenance.Snapshot", 3))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_yet("Maintenance.MoveLeader", 3))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Maintenance.Downgrade", 3))
    }
}
