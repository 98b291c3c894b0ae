//! The peer transport: Raft messages between members, and the gRPC calls members make of each
//! other (`keelraftpb.Raft`: snapshot transfer, forwarded lease and membership calls, cluster
//! information).
//!
//! Raft messages travel over [`crate::peer_stream`]'s plain TCP streams, one per peer, written
//! from the replica thread; a full or broken stream drops them, which Raft tolerates (it retries
//! by protocol) and is told about through `report_unreachable`. The receiving side refuses
//! messages from another cluster, so members of two clusters can't be mixed up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Weak};

use keel_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use keel_api::keelraftpb::raft_server::Raft;
use keel_api::keelraftpb::{
    self as pb, ClusterInfoRequest, ClusterInfoResponse, Envelope, SnapshotChunk, SnapshotResponse,
};
use keel_raft::{ConfState, Entry, EntryKind, Message, MessageKind, Snapshot, SnapshotMetadata};
use keel_storage::mvcc::{Store, StoreSnapshot};
use tonic::{Request, Response, Status, Streaming};

use crate::lease::{time_to_live, Lessor};
use crate::peer_stream::{self, Answer, Gate, Link, LinkConfig};
use crate::replica::{Input, Shared};
use crate::snapshot_transfer::{receive_snapshot, send_snapshot};
use crate::Node;

/// A batch's frame buffer is kept for the next batch up to this size.
const FRAMES_BUFFER_KEPT_BYTES: usize = 1024 * 1024;

/// The status message a member answers a removed member's calls with.
const REMOVED_STATUS_MESSAGE: &str = "keel: the sending member has been removed from the cluster";
/// Raft streams received at once; more are refused (a member has one per peer).
const RECEIVING_STREAMS_MAX: usize = 64;

const KINDS: [MessageKind; 14] = [
    MessageKind::Propose,
    MessageKind::Append,
    MessageKind::AppendResponse,
    MessageKind::RequestVote,
    MessageKind::RequestVoteResponse,
    MessageKind::RequestPreVote,
    MessageKind::RequestPreVoteResponse,
    MessageKind::Snapshot,
    MessageKind::Heartbeat,
    MessageKind::HeartbeatResponse,
    MessageKind::TransferLeader,
    MessageKind::TimeoutNow,
    MessageKind::ReadIndex,
    MessageKind::ReadIndexResponse,
];

fn entry_to_wire(entry: &Entry) -> pb::Entry {
    pb::Entry {
        term: entry.term,
        index: entry.index,
        kind: u32::from(entry.kind == EntryKind::ConfChange),
        data: entry.data.clone(),
    }
}

fn entry_from_wire(entry: pb::Entry) -> Entry {
    Entry {
        term: entry.term,
        index: entry.index,
        kind: if entry.kind == 1 {
            EntryKind::ConfChange
        } else {
            EntryKind::Normal
        },
        data: entry.data,
    }
}

pub fn message_to_wire(message: &Message) -> pb::Message {
    let kind = KINDS
        .iter()
        .position(|kind| *kind == message.kind)
        .expect("every kind is listed") as u32;
    pb::Message {
        kind,
        from: message.from,
        to: message.to,
        term: message.term,
        log_term: message.log_term,
        index: message.index,
        entries: message.entries.iter().map(entry_to_wire).collect(),
        commit: message.commit,
        snapshot: message.snapshot.as_ref().map(|snapshot| pb::Snapshot {
            metadata: Some(pb::SnapshotMetadata {
                index: snapshot.metadata.index,
                term: snapshot.metadata.term,
                conf_state: Some(pb::ConfState {
                    voters: snapshot.metadata.conf_state.voters.clone(),
                    learners: snapshot.metadata.conf_state.learners.clone(),
                }),
            }),
            data: snapshot.data.clone(),
        }),
        reject: message.reject,
        reject_hint: message.reject_hint,
        context: message.context.clone(),
    }
}

/// Reads a message off the wire; None when its kind is unknown (a newer peer).
pub fn message_from_wire(message: pb::Message) -> Option<Message> {
    let kind = *KINDS.get(message.kind as usize)?;
    Some(Message {
        kind,
        from: message.from,
        to: message.to,
        term: message.term,
        log_term: message.log_term,
        index: message.index,
        entries: message.entries.into_iter().map(entry_from_wire).collect(),
        commit: message.commit,
        snapshot: message.snapshot.map(|snapshot| {
            let metadata = snapshot.metadata.unwrap_or_default();
            let conf_state = metadata.conf_state.unwrap_or_default();
            Snapshot {
                metadata: SnapshotMetadata {
                    index: metadata.index,
                    term: metadata.term,
                    conf_state: ConfState {
                        voters: conf_state.voters,
                        learners: conf_state.learners,
                    },
                },
                data: snapshot.data,
            }
        }),
        reject: message.reject,
        reject_hint: message.reject_hint,
        context: message.context,
    })
}

/// The receiving side: hands every message of this cluster to the Raft thread, and answers the
/// lease calls followers forward to the leader.
#[derive(Debug, Clone)]
pub struct PeerService {
    cluster_id: u64,
    member_id: u64,
    inbox: SyncSender<Input>,
    shared: Arc<Shared>,
    lessor: Arc<Lessor>,
    store: Arc<Store>,
    /// Where snapshots from the leader are received.
    snap_dir: PathBuf,
    /// For the calls a node answers (cluster information, membership changes).
    node: Weak<Node>,
    /// Raft streams being received (each has a thread).
    receiving: Arc<AtomicUsize>,
}

impl PeerService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        inbox: SyncSender<Input>,
        shared: Arc<Shared>,
        lessor: Arc<Lessor>,
        store: Arc<Store>,
        snap_dir: PathBuf,
        node: Weak<Node>,
    ) -> PeerService {
        PeerService {
            cluster_id,
            member_id,
            inbox,
            shared,
            lessor,
            store,
            snap_dir,
            node,
            receiving: Arc::default(),
        }
    }

    /// Refuses a peer of another cluster, or one that was removed from this one.
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        match self.admit(cluster_id, from) {
            Answer::Accepted => Ok(()),
            Answer::OtherCluster => Err(keel_api::EtcdError::ClusterIdMismatch.into()),
            Answer::Removed => Err(Status::failed_precondition(REMOVED_STATUS_MESSAGE)),
        }
    }

    /// Receives a Raft stream (its first bytes were [`crate::peer_stream::MAGIC`]) on a thread
    /// of its own.
    pub fn receive_raft_stream(&self, socket: std::net::TcpStream) {
        if self.receiving.fetch_add(1, Ordering::Relaxed) >= RECEIVING_STREAMS_MAX {
            self.receiving.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(peer = ?socket.peer_addr().ok(), "refused a Raft stream: too many open");
            return;
        }
        let gate: Arc<dyn Gate> = Arc::new(self.clone());
        let inbox = self.inbox.clone();
        let receiving = Arc::clone(&self.receiving);
        let load = Arc::clone(&self.shared.load);
        let spawned = std::thread::Builder::new()
            .name("keel-peer-in".into())
            .spawn(move || {
                peer_stream::receive(socket, gate, inbox, load);
                receiving.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(error) = spawned {
            self.receiving.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%error, "cannot start a thread for a peer's Raft stream");
        }
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .upgrade()
            .ok_or_else(|| keel_api::EtcdError::Stopped.into())
    }

    /// Membership changes are forwarded to the leader; a member that is no longer leading
    /// says so (the follower then reports "leader changed").
    fn leader_node(&self) -> Result<Arc<Node>, Status> {
        self.leading()?;
        self.node()
    }

    fn leading(&self) -> Result<(), Status> {
        if self
            .shared
            .leader
            .load(std::sync::atomic::Ordering::Relaxed)
            == self.member_id
        {
            Ok(())
        } else {
            Err(keel_api::EtcdError::NotLeader.into())
        }
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let message = receive_snapshot(request.into_inner(), &self.snap_dir, |cluster, from| {
            self.check_sender(cluster, from)
        })
        .await?;
        // Waits for room: dropping it would waste the transfer.
        let inbox = self.inbox.clone();
        let delivered =
            tokio::task::spawn_blocking(move || inbox.send(Input::Step(message)).is_ok())
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
        if !delivered {
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
        Ok(Response::new(SnapshotResponse {}))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.leading()?;
        let id = request.into_inner().id;
        // An unknown or expired lease is answered with TTL 0, as etcd does.
        let ttl = self.lessor.renew(id).unwrap_or(0);
        Ok(Response::new(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.leading()?;
        let request = request.into_inner();
        let response = time_to_live(&self.lessor, &self.store, &request);
        Ok(Response::new(response))
    }

    async fn cluster_info(
        &self,
        _: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        Ok(Response::new(self.node()?.cluster_info()))
    }

    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let node = self.leader_node()?;
        Ok(Response::new(node.member_add(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let node = self.leader_node()?;
        Ok(Response::new(
            node.member_remove(request.into_inner()).await?,
        ))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let node = self.node()?;
        Ok(Response::new(
            node.member_update(request.into_inner()).await?,
        ))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let node = self.leader_node()?;
        Ok(Response::new(
            node.member_promote(request.into_inner()).await?,
        ))
    }
}

impl Gate for PeerService {
    fn admit(&self, cluster_id: u64, from: u64) -> Answer {
        if cluster_id != self.cluster_id {
            tracing::warn!(
                from = format!("{from:x}"),
                their_cluster = format!("{cluster_id:x}"),
                our_cluster = format!("{:x}", self.cluster_id),
                "refused Raft messages from a member of another cluster"
            );
            return Answer::OtherCluster;
        }
        if self
            .shared
            .removed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&from)
        {
            tracing::info!(
                from = format!("{from:x}"),
                "refused Raft messages from a removed member"
            );
            return Answer::Removed;
        }
        Answer::Accepted
    }
}

/// The sending side: one [`Link`] per peer. Peers come and go as membership changes apply
/// ([`Transport::set_peers`]).
#[derive(Debug)]
pub struct Transport {
    runtime: tokio::runtime::Handle,
    cluster_id: u64,
    own_id: u64,
    inbox: SyncSender<Input>,
    peers: HashMap<u64, Peer>,
    /// Reused for every batch's frames.
    frames: Vec<u8>,
}

#[derive(Debug)]
struct Peer {
    urls: Vec<String>,
    /// None when its writer thread could not be started (the peer counts as unreachable).
    link: Option<Link>,
}

impl Transport {
    /// Starts a link to every peer (`id`, peer URLs). The runtime is for snapshot transfers.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        cluster_id: u64,
        own_id: u64,
        peers: Vec<(u64, Vec<String>)>,
        inbox: SyncSender<Input>,
    ) -> Transport {
        let mut transport = Transport {
            runtime: runtime.clone(),
            cluster_id,
            own_id,
            inbox,
            peers: HashMap::new(),
            frames: Vec::new(),
        };
        transport.set_peers(peers);
        transport
    }

    /// Makes the peers exactly `peers`: starts links to new ones, closes those of peers that
    /// left, and restarts those whose URLs changed (MemberUpdate).
    pub fn set_peers(&mut self, peers: Vec<(u64, Vec<String>)>) {
        let own_id = self.own_id;
        let peers: Vec<(u64, Vec<String>)> = peers
            .into_iter()
            .filter(|(id, urls)| *id != own_id && !urls.is_empty())
            .collect();
        self.peers.retain(|id, peer| {
            let keep = peers
                .iter()
                .any(|(other, urls)| other == id && *urls == peer.urls);
            if !keep {
                tracing::info!(peer = format!("{id:x}"), "stopped sending to a peer");
            }
            keep
        });
        for (id, urls) in peers {
            if self.peers.contains_key(&id) {
                continue;
            }
            tracing::info!(peer = format!("{id:x}"), ?urls, "sending to a peer");
            let config = LinkConfig {
                cluster_id: self.cluster_id,
                own_id,
                peer_id: id,
                urls: urls.clone(),
            };
            let link = match Link::start(config, self.inbox.clone()) {
                Ok(link) => Some(link),
                Err(error) => {
                    tracing::error!(peer = format!("{id:x}"), %error, "cannot start a thread for a peer");
                    None
                }
            };
            self.peers.insert(id, Peer { urls, link });
        }
    }

    /// Streams `snapshot` with its Raft `message` to the message's peer on a task of its own;
    /// the replica thread hears how it went (`Input::SnapshotStatus`). False when the peer is
    /// unknown.
    pub fn send_snapshot(&self, message: Message, snapshot: StoreSnapshot) -> bool {
        let Some(url) = self
            .peers
            .get(&message.to)
            .and_then(|peer| peer.urls.first().cloned())
        else {
            return false;
        };
        self.runtime.spawn(send_snapshot(
            self.cluster_id,
            self.own_id,
            url,
            message,
            snapshot,
            self.inbox.clone(),
        ));
        true
    }

    /// Sends `messages`, one envelope per peer in their order; returns the peers whose
    /// messages were dropped (stream full or broken, or peer unknown).
    pub fn send(&mut self, mut messages: Vec<Message>) -> Vec<u64> {
        let mut dropped = Vec::new();
        // Usually one or two messages per peer: group them without reordering any peer's.
        messages.sort_by_key(|message| message.to);
        for group in messages.chunk_by(|a, b| a.to == b.to) {
            let to = group[0].to;
            let Some(link) = self.peers.get(&to).and_then(|peer| peer.link.as_ref()) else {
                dropped.push(to);
                continue;
            };
            let envelope = Envelope {
                cluster_id: self.cluster_id,
                from: self.own_id,
                messages: group.iter().map(message_to_wire).collect(),
            };
            self.frames.clear();
            peer_stream::encode_frame(&envelope, &mut self.frames);
            if !link.send(&self.frames) {
                dropped.push(to);
            }
        }
        // A catch-up batch can be large; don't keep its buffer for heartbeats.
        if self.frames.capacity() > FRAMES_BUFFER_KEPT_BYTES {
            self.frames = Vec::new();
        }
        dropped
    }
}
