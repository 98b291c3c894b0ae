//! The gRPC layer: thin handlers that check a request, call the node, map errors through the
//! one table (`ServerError` → `EtcdError` → status) and fill the response header.

mod auth;
mod cluster;
mod coalesce;
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

use coalesce::CoalescedIo;

pub use auth::AuthService;
pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::{MaintenanceService, ETCD_COMPATIBLE_VERSION};
pub use unimplemented::{not_yet, NotYet};
use watch::WatchServer;
pub use watch::WatchService;

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
        // Watch responses are framed by their streams (`crate::watch::Frames`), unbounded as
        // the other replies are.
        .add_service(
            WatchServer::new(WatchService::new(
                Arc::clone(&node),
                config.watch.clone(),
                Arc::clone(&config.auth),
            ))
            .max_decoding_message_size(receive_limit),
        )
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

/// Accepted connections with Nagle's algorithm off (without it a small response waits for the
/// client's delayed ACK, ~40 ms on Linux, before its last segment goes out) and their writes
/// coalesced ([`coalesce`]).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CoalescedIo>> {
    use tokio_stream::StreamExt;
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(CoalescedIo::new))
}

/// Binds `address` for [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// Serves the peer port until `shutdown`: Raft streams ([`crate::peer_stream`]) each on a
/// thread of their own, every other connection to the `keelraftpb.Raft` gRPC service.
pub async fn serve_peers(
    service: crate::transport::PeerService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (grpc_connections, incoming) = tokio::sync::mpsc::channel(PEER_CONNECTIONS_QUEUED_MAX);
    let sorter = tokio::spawn(sort_peer_connections(
        listener,
        service.clone(),
        grpc_connections,
    ));
    let served = tonic::transport::Server::builder()
        .add_service(
            keel_api::keelraftpb::raft_server::RaftServer::new(service)
                .max_decoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            shutdown,
        )
        .await;
    sorter.abort();
    served
}

/// Accepted peer connections waiting for the gRPC server.
const PEER_CONNECTIONS_QUEUED_MAX: usize = 64;
/// A connection that has not said what it is after this long is closed.
const PEER_SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts peer connections and tells Raft streams from gRPC by their first bytes.
async fn sort_peer_connections(
    listener: tokio::net::TcpListener,
    service: crate::transport::PeerService,
    grpc_connections: tokio::sync::mpsc::Sender<std::io::Result<tokio::net::TcpStream>>,
) {
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, "cannot accept a peer connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Nagle's algorithm off, as for clients (see `incoming`).
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        let grpc_connections = grpc_connections.clone();
        tokio::spawn(async move {
            let sniffed = tokio::time::timeout(
                PEER_SNIFF_TIMEOUT,
                crate::peer_stream::is_raft_stream(&socket),
            )
            .await;
            match sniffed {
                Ok(Ok(true)) => match socket.into_std() {
                    Ok(socket) => {
                        if socket.set_nonblocking(false).is_ok() {
                            service.receive_raft_stream(socket);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot take over a peer's Raft stream"),
                },
                Ok(Ok(false)) => {
                    let _ = grpc_connections.send(Ok(socket)).await;
                }
                Ok(Err(_)) | Err(_) => {}
            }
        });
    }
}
