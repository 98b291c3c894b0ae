//! The peer transport: Raft messages between members over gRPC (`keelraftpb.Raft/Send`).
//!
//! Each peer has a sender task with a bounded queue; the Raft thread hands it messages without
//! waiting, and a full queue (a slow or unreachable peer) drops them, which Raft tolerates (it
//! retries by protocol) and is told about through `report_unreachable`. The receiving side
//! refuses batches from another cluster, so members of two clusters can't be mixed up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use keel_api::keelraftpb::raft_client::RaftClient;
use keel_api::keelraftpb::raft_server::Raft;
use keel_api::keelraftpb::{
    self as pb, ClusterInfoRequest, ClusterInfoResponse, Envelope, SendResponse, SnapshotChunk,
    SnapshotResponse,
};
use keel_raft::{ConfState, Entry, EntryKind, Message, MessageKind, Snapshot, SnapshotMetadata};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use std::sync::{Arc, Weak};

use keel_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use keel_storage::mvcc::{Store, StoreSnapshot};

use crate::lease::{time_to_live, Lessor};
use crate::replica::{Input, Shared};
use crate::snapshot_transfer::{receive_snapshot, send_snapshot};
use crate::Node;

/// Messages queued for one peer before new ones are dropped.
const MESSAGES_QUEUED_PER_PEER_MAX: usize = 4096;
/// Messages sent in one envelope at most.
const MESSAGES_PER_ENVELOPE_MAX: usize = 256;
/// The status message a member answers a removed member's messages with.
const REMOVED_STATUS_MESSAGE: &str = "keel: the sending member has been removed from the cluster";
/// Wait before reconnecting to a peer that failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

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
        }
    }

    /// Refuses a peer of another cluster, or one that was removed from this one.
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            tracing::warn!(
                from = format!("{from:x}"),
                their_cluster = format!("{cluster_id:x}"),
                our_cluster = format!("{:x}", self.cluster_id),
                "refused Raft messages from a member of another cluster"
            );
            return Err(EtcdErrorStatus::cluster_mismatch());
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
            return Err(Status::failed_precondition(REMOVED_STATUS_MESSAGE));
        }
        Ok(())
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
    async fn send(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<SendResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(envelope) = stream.message().await? {
            self.check_sender(envelope.cluster_id, envelope.from)?;
            for message in envelope.messages.into_iter().filter_map(message_from_wire) {
                // A snapshot with data comes only through InstallSnapshot, with its file.
                if message
                    .snapshot
                    .as_ref()
                    .is_some_and(|snapshot| snapshot.metadata.index > 1)
                {
                    tracing::warn!(
                        from = format!("{:x}", message.from),
                        "dropped a snapshot message sent without its data"
                    );
                    continue;
                }
                // A full inbox drops the message: Raft retries by protocol.
                if let Err(std::sync::mpsc::TrySendError::Disconnected(_)) =
                    self.inbox.try_send(Input::Step(message))
                {
                    return Err(Status::unavailable("etcdserver: server stopped"));
                }
            }
        }
        Ok(Response::new(SendResponse {}))
    }

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

struct EtcdErrorStatus;

impl EtcdErrorStatus {
    fn cluster_mismatch() -> Status {
        keel_api::EtcdError::ClusterIdMismatch.into()
    }
}

/// The sending side: one task and queue per peer. Peers come and go as membership changes
/// apply ([`Transport::set_peers`]).
#[derive(Debug)]
pub struct Transport {
    runtime: tokio::runtime::Handle,
    cluster_id: u64,
    own_id: u64,
    inbox: SyncSender<Input>,
    peers: HashMap<u64, Peer>,
}

#[derive(Debug)]
struct Peer {
    urls: Vec<String>,
    /// Dropping it ends the peer's sender task.
    queue: mpsc::Sender<Message>,
}

impl Transport {
    /// Starts a sender task for every peer (`id`, peer URLs). Needs a tokio runtime.
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
        };
        transport.set_peers(peers);
        transport
    }

    /// Makes the peers exactly `peers`: starts tasks for new ones, ends those of peers that
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
            let (sender, receiver) = mpsc::channel(MESSAGES_QUEUED_PER_PEER_MAX);
            tracing::info!(peer = format!("{id:x}"), ?urls, "sending to a peer");
            self.runtime.spawn(run_peer(
                self.cluster_id,
                self.own_id,
                id,
                urls.clone(),
                receiver,
                self.inbox.clone(),
            ));
            self.peers.insert(
                id,
                Peer {
                    urls,
                    queue: sender,
                },
            );
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

    /// Queues `message` for its peer; false when it was dropped (queue full or peer unknown).
    pub fn send(&self, message: Message) -> bool {
        match self.peers.get(&message.to) {
            Some(peer) => peer.queue.try_send(message).is_ok(),
            None => false,
        }
    }
}

async fn run_peer(
    cluster_id: u64,
    own_id: u64,
    peer_id: u64,
    urls: Vec<String>,
    mut queue: mpsc::Receiver<Message>,
    inbox: SyncSender<Input>,
) {
    let mut url_index = 0;
    loop {
        let url = urls[url_index % urls.len()].clone();
        url_index += 1;
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.clone()) else {
            tracing::error!(%url, "invalid peer URL");
            return;
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let mut client = RaftClient::new(channel).max_encoding_message_size(usize::MAX);
        let (stream_sender, stream_receiver) = mpsc::channel::<Envelope>(16);
        let call =
            tokio::spawn(async move { client.send(ReceiverStream::new(stream_receiver)).await });
        // Forward queued messages in envelopes until the stream breaks.
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut messages = vec![message_to_wire(&first)];
            while messages.len() < MESSAGES_PER_ENVELOPE_MAX {
                match queue.try_recv() {
                    Ok(message) => messages.push(message_to_wire(&message)),
                    Err(_) => break,
                }
            }
            let envelope = Envelope {
                cluster_id,
                from: own_id,
                messages,
            };
            if stream_sender.send(envelope).await.is_err() {
                break;
            }
        }
        if let Ok(Err(status)) = call.await {
            if status.message() == REMOVED_STATUS_MESSAGE {
                // The peer has applied this member's removal; so will this member never (it
                // no longer hears from the leader), so it stops now, as etcd's does.
                let _ = inbox.try_send(Input::Removed);
                return;
            }
        }
        let _ = inbox.try_send(Input::Unreachable(peer_id));
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
