//! The gRPC layer: thin handlers that check a request, call the node, map errors through the
//! one table (`ServerError` → `EtcdError` → status) and fill the response header.

mod auth;
mod cluster;
mod kv;
mod lease;
mod maintenance;
mod unimplemented;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use keel_api::etcdserverpb::auth_server::AuthServer;
use keel_api::etcdserverpb::cluster_server::ClusterServer;
use keel_api::etcdserverpb::kv_server::KvServer;
use keel_api::etcdserverpb::lease_server::LeaseServer;
use keel_api::etcdserverpb::maintenance_server::MaintenanceServer;
use keel_api::v3electionpb::election_server::ElectionServer;
use keel_api::v3lockpb::lock_server::LockServer;
use tonic::transport::server::TcpIncoming;

pub use auth::AuthService;
pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::{MaintenanceService, ETCD_COMPATIBLE_VERSION};
pub use unimplemented::{not_yet, NotYet};
pub use watch::WatchService;
use watch::WatchServer;

use crate::auth::Auth;
use crate::telemetry::GrpcTraceLayer;
use crate::watch::WatchConfig;
use crate::Node;

/// gRPC adds this much to `--max-request-bytes` for its own receive limit, as etcd does, so a
/// request just over the limit gets etcd's "request is too large" instead of a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How the client API is served.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub watch: WatchConfig,
    /// The member's authentication (shared by every listener: simple tokens live in it).
    pub auth: Arc<Auth>,
}

/// Serves every etcd v3 service on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    config: &GrpcConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let receive_limit = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    // Replies can hold many keys; etcd does not bound them either.
    let send_limit = usize::MAX;
    macro_rules! limits {
        ($server:expr) => {
            $server
                .max_decoding_message_size(receive_limit)
                .max_encoding_message_size(send_limit)
        };
    }
    tonic::transport::Server::builder()
        .layer(GrpcTraceLayer::new(node.identity().member_id))
        .add_service(limits!(KvServer::new(KvService::new(
            Arc::clone(&node),
            config.max_txn_ops,
            Arc::clone(&config.auth)
        ))))
        .add_service(limits!(MaintenanceServer::new(MaintenanceService::new(
            Arc::clone(&node),
            Arc::clone(&config.auth)
        ))))
        .add_service(limits!(ClusterServer::new(ClusterService::new(
            Arc::clone(&node)
        ))))
        .add_service(limits!(WatchServer::new(WatchService::new(
            Arc::clone(&node),
            config.watch.clone(),
            Arc::clone(&config.auth)
        ))))
        .add_service(limits!(LeaseServer::new(LeaseService::new(
            Arc::clone(&node),
            Arc::clone(&config.auth)
        ))))
        .add_service(limits!(AuthServer::new(AuthService::new(
            Arc::clone(&node),
            Arc::clone(&config.auth)
        ))))
        .add_service(limits!(ElectionServer::new(NotYet)))
        .add_service(limits!(LockServer::new(NotYet)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off: without it a small response waits for the
/// client's delayed ACK (~40 ms on Linux) before its last segment goes out.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds `address` for [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves the peer transport (Raft messages from the other members) until `shutdown`.
pub async fn serve_peers(
    service: crate::transport::PeerService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(
            keel_api::keelraftpb::raft_server::RaftServer::new(service)
                .max_decoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}
