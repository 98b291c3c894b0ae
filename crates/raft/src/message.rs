//! The data that crosses the core's boundary: log entries, persistent state, snapshots and
//! messages between peers.
//!
//! Everything here is plain data with public fields, so the runtime can encode it however it
//! likes (the WAL and the transport each pick their own format). The one exception is
//! [`ConfChange`], which the core itself must read back out of a log entry, so it carries an
//! explicit little-endian byte format (`encode` / `decode`).

use crate::error::Error;

/// Identifies one member of the cluster. Zero is never a valid id.
pub type NodeId = u64;

/// What an entry's `data` means to the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Opaque application data (empty for the no-op entry a new leader appends).
    #[default]
    Normal,
    /// An encoded [`ConfChange`]; the runtime hands it back through `apply_conf_change` when
    /// the entry is applied.
    ConfChange,
}

/// One slot of the replicated log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub kind: EntryKind,
    pub data: Vec<u8>,
}

impl Entry {
    /// The fixed per-entry cost (term, index, kind) counted by every size limit, so that a
    /// flood of empty entries is bounded too.
    pub const OVERHEAD_BYTES: u64 = 24;

    /// The size this entry counts for in message, Ready and uncommitted-log limits.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        Self::OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// The state that must survive a crash, persisted together with the entries of the same
/// [`Ready`](crate::Ready).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: u64,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known to be committed. Never decreases.
    pub commit: u64,
}

/// A membership configuration: who votes and who only replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Sorted, no duplicates, disjoint from `learners`.
    pub voters: Vec<NodeId>,
    /// Sorted, no duplicates, disjoint from `voters`.
    pub learners: Vec<NodeId>,
}

/// Where a snapshot sits in the log and which configuration it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMetadata {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The configuration in force once every entry up to `index` is applied.
    pub conf_state: ConfState,
}

/// A state-machine image that replaces a log prefix. `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub metadata: SnapshotMetadata,
    pub data: Vec<u8>,
}

/// The kinds of messages peers exchange. The doc of each variant says which [`Message`]
/// fields it uses; unused fields are zero / empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Follower → leader: forwarded client proposal. `entries`. Carries term 0: it is not
    /// scoped to a term, the leader that receives it decides.
    #[default]
    Propose,
    /// Leader → follower: `index`/`log_term` identify the entry preceding `entries`;
    /// `commit` is the leader's commit index.
    Append,
    /// Follower → leader. Accepted: `index` is the follower's last index matching the leader.
    /// Rejected (`reject`): `index` is the rejected `Append.index`, `reject_hint` and
    /// `log_term` are the follower's best guess of where the logs agree (fast back-off).
    AppendResponse,
    /// Candidate → voter: `index`/`log_term` describe the candidate's last entry; `context`
    /// is [`TRANSFER_CONTEXT`] when the election follows a leadership transfer.
    RequestVote,
    /// Voter → candidate: `reject` says whether the vote was refused.
    RequestVoteResponse,
    /// Like `RequestVote`, but for the pre-vote round; `term` is the term the sender would
    /// campaign in, and the receiver's term never changes because of it.
    RequestPreVote,
    /// Like `RequestVoteResponse` for the pre-vote round.
    RequestPreVoteResponse,
    /// Leader → follower that is behind the compacted log: `snapshot`.
    Snapshot,
    /// Leader → follower: `commit` (capped at the follower's match) and `context` (the
    /// newest pending ReadIndex context, echoed back to confirm leadership).
    Heartbeat,
    /// Follower → leader: `context` echoed from the heartbeat.
    HeartbeatResponse,
    /// Any → leader: start a leadership transfer to the node whose id is in `index`.
    TransferLeader,
    /// Leader → transfer target: campaign now, skipping pre-vote and the vote lease.
    TimeoutNow,
    /// Follower → leader: forwarded ReadIndex request; `context` identifies it. Term 0 like
    /// `Propose`.
    ReadIndex,
    /// Leader → follower: `index` is the read index for the request named by `context`.
    ReadIndexResponse,
}

/// The `context` of a vote request that follows a leadership transfer. Voters grant such a
/// vote even while they still consider the old leader alive.
pub const TRANSFER_CONTEXT: &[u8] = b"keel-raft/transfer";

/// One message between two peers. See [`MessageKind`] for which fields each kind uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Message {
    pub kind: MessageKind,
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<Entry>,
    pub commit: u64,
    pub snapshot: Option<Snapshot>,
    pub reject: bool,
    pub reject_hint: u64,
    pub context: Vec<u8>,
}

impl Message {
    pub(crate) fn new(kind: MessageKind, to: NodeId) -> Self {
        Self {
            kind,
            to,
            ..Self::default()
        }
    }
}

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    #[default]
    Follower,
    /// Polling peers (pre-vote) before disturbing anyone with a real election.
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the runtime may want to observe (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}

/// The answer to a ReadIndex request: once the local state machine has applied `index`, a
/// read of it is linearizable as of the moment the request was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReadState {
    pub index: u64,
    pub context: Vec<u8>,
}

/// The single-step membership changes the core supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeKind {
    /// A node that is not yet a member becomes a voter.
    AddVoter,
    /// A node that is not yet a member becomes a learner: it replicates but neither votes nor
    /// counts for quorum.
    AddLearner,
    /// A learner becomes a voter.
    PromoteLearner,
    /// A voter or learner leaves. A leader that removes itself steps down once the change is
    /// applied.
    RemoveNode,
}

/// A membership change, carried in an [`EntryKind::ConfChange`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node_id: NodeId,
    /// Opaque to the core (etcd puts the member's URLs here).
    pub context: Vec<u8>,
}

impl ConfChange {
    /// Byte format: `kind: u8` (0 add voter, 1 add learner, 2 promote, 3 remove),
    /// `node_id: u64 little-endian`, then `context` to the end.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let kind: u8 = match self.kind {
            ConfChangeKind::AddVoter => 0,
            ConfChangeKind::AddLearner => 1,
            ConfChangeKind::PromoteLearner => 2,
            ConfChangeKind::RemoveNode => 3,
        };
        let mut bytes = Vec::with_capacity(9 + self.context.len());
        bytes.push(kind);
        bytes.extend_from_slice(&self.node_id.to_le_bytes());
        bytes.extend_from_slice(&self.context);
        bytes
    }

    /// Reads back what [`ConfChange::encode`] wrote.
    ///
    /// # Errors
    /// [`Error::MalformedConfChange`] if the bytes are too short or the kind is unknown.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let (&kind, rest) = bytes.split_first().ok_or(Error::MalformedConfChange)?;
        let kind = match kind {
            0 => ConfChangeKind::AddVoter,
            1 => ConfChangeKind::AddLearner,
            2 => ConfChangeKind::PromoteLearner,
            3 => ConfChangeKind::RemoveNode,
            _ => return Err(Error::MalformedConfChange),
        };
        let id_bytes: [u8; 8] = rest
            .get(..8)
            .and_then(|slice| slice.try_into().ok())
            .ok_or(Error::MalformedConfChange)?;
        Ok(Self {
            kind,
            node_id: u64::from_le_bytes(id_bytes),
            context: rest[8..].to_vec(),
        })
    }

    /// Wraps this change in an entry ready to propose.
    #[must_use]
    pub fn to_entry(&self) -> Entry {
        Entry {
            kind: EntryKind::ConfChange,
            data: self.encode(),
            ..Entry::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_through_bytes() {
        for kind in [
            ConfChangeKind::AddVoter,
            ConfChangeKind::AddLearner,
            ConfChangeKind::PromoteLearner,
            ConfChangeKind::RemoveNode,
        ] {
            let change = ConfChange {
                kind,
                node_id: 0x0102_0304_0506_0708,
                context: b"peer-url".to_vec(),
            };
            assert_eq!(ConfChange::decode(&change.encode()), Ok(change));
        }
        assert_eq!(ConfChange::decode(&[]), Err(Error::MalformedConfChange));
        assert_eq!(ConfChange::decode(&[9; 9]), Err(Error::MalformedConfChange));
        assert_eq!(ConfChange::decode(&[0; 5]), Err(Error::MalformedConfChange));
    }
}
