//! Cluster membership: who the members are, as of the store's consistent index, and etcd's
//! rules for changing it one member at a time.
//!
//! The founding members come from the data directory's `KEEL` marker; every change since is in
//! the store (`members_raft`: added, promoted or updated members; `members_removed`), written in
//! the same transaction as the consistent index of the entry that made it. So the membership
//! read from the store at start is exactly the configuration as of the index Raft resumes
//! applying from, and Raft's `ConfState` is built from it.
//!
//! The checks here run twice: on the leader before proposing (to answer at once), and when the
//! entry is applied, on every member alike (the outcome then decides; it depends only on the
//! store, so every member reaches the same one). Raft's core ignores a change it finds invalid;
//! these checks refuse everything it would refuse, so the core and the store never disagree.

use keel_api::etcdserverpb::Member;
use keel_api::EtcdError;
use keel_raft::{ConfChange, ConfChangeKind, ConfState};
use keel_storage::mvcc::{MvccError, Store};
use prost::Message;

use crate::data_dir::MemberInfo;

/// etcd allows one learner at a time (`maxLearners`).
pub const LEARNERS_MAX: usize = 1;

/// etcd's `readyPercent`: a learner may be promoted once its log holds 90% of the leader's.
pub const LEARNER_READY_PERCENT: u64 = 90;

/// What etcd says to a member that applies its own removal.
pub const REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// One member's place in the configuration (etcd's raft attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberRecord {
    /// The store's encoding: an `etcdserverpb.Member` with id, peer URLs and learner flag.
    pub fn encode(&self) -> Vec<u8> {
        Member {
            id: self.id,
            name: String::new(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: self.is_learner,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<MemberRecord, MvccError> {
        let member = Member::decode(bytes)
            .map_err(|error| MvccError::Corrupt(format!("member record: {error}")))?;
        Ok(MemberRecord {
            id: member.id,
            peer_urls: member.peer_ur_ls,
            is_learner: member.is_learner,
        })
    }
}

/// The members as of the store's consistent index, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<MemberRecord>,
    /// Ids removed from the cluster (they may not come back under the same id, except by a
    /// new MemberAdd).
    pub removed: Vec<u64>,
}

impl Membership {
    /// The founding members, overlaid with the changes recorded in the store.
    pub fn load(founding: &[MemberInfo], store: &Store) -> Result<Membership, MvccError> {
        let changes = store.membership_changes()?;
        let mut members: Vec<MemberRecord> = founding
            .iter()
            .map(|member| MemberRecord {
                id: member.id,
                peer_urls: member.peer_urls.clone(),
                is_learner: false,
            })
            .collect();
        for (id, bytes) in &changes.members {
            let record = MemberRecord::decode(bytes)?;
            debug_assert_eq!(record.id, *id);
            members.retain(|member| member.id != *id);
            members.push(record);
        }
        members.retain(|member| !changes.removed.contains(&member.id));
        members.sort_by_key(|member| member.id);
        Ok(Membership {
            members,
            removed: changes.removed,
        })
    }

    pub fn get(&self, id: u64) -> Option<&MemberRecord> {
        self.members.iter().find(|member| member.id == id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn voters(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.iter().filter(|member| !member.is_learner)
    }

    pub fn learner_count(&self) -> usize {
        self.members
            .iter()
            .filter(|member| member.is_learner)
            .count()
    }

    /// Raft's configuration for these members.
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters().map(|member| member.id).collect(),
            learners: self
                .members
                .iter()
                .filter(|member| member.is_learner)
                .map(|member| member.id)
                .collect(),
        }
    }

    /// Whether another member than `except` uses one of `urls` (etcd compares them as
    /// written, after sorting).
    pub fn peer_urls_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .iter()
            .filter(|member| member.id != except)
            .any(|member| member.peer_urls.iter().any(|url| urls.contains(url)))
    }
}

/// A membership change entry's context: the proposer's request id (so it can be answered
/// once the entry applies, wherever it lands in the log), then the member as an encoded
/// `etcdserverpb.Member` (id, peer URLs, learner flag; empty for a removal or a promotion).
pub fn encode_context(request_id: u64, member: Option<&MemberRecord>) -> Vec<u8> {
    let mut bytes = request_id.to_le_bytes().to_vec();
    if let Some(member) = member {
        bytes.extend_from_slice(&member.encode());
    }
    bytes
}

/// Reads back what [`encode_context`] wrote; None when it doesn't decode (no proposer to
/// answer, and an add without its member is refused).
pub fn decode_context(bytes: &[u8]) -> Option<(u64, Option<MemberRecord>)> {
    let (id, rest) = bytes.split_first_chunk::<8>()?;
    let member = if rest.is_empty() {
        None
    } else {
        Some(MemberRecord::decode(rest).ok()?)
    };
    Some((u64::from_le_bytes(*id), member))
}

/// etcd's `ValidateConfigurationChange` for a Raft membership change, against the membership
/// before it. Refuses everything Raft's core would ignore.
pub fn check_conf_change(
    membership: &Membership,
    change: &ConfChange,
    member: Option<&MemberRecord>,
) -> Result<(), EtcdError> {
    let id = change.node_id;
    match change.kind {
        ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
            let member = member.ok_or(EtcdError::MemberBadUrls)?;
            // Ids derive from peer URLs, so the same URLs again mean the same id: report the
            // URLs first, as etcd (whose ids are random) does for that case.
            if membership.peer_urls_taken(&member.peer_urls, 0) {
                return Err(EtcdError::PeerUrlExists);
            }
            if id == 0 || member.id != id || membership.get(id).is_some() {
                return Err(EtcdError::MemberExists);
            }
            if change.kind == ConfChangeKind::AddLearner
                && membership.learner_count() >= LEARNERS_MAX
            {
                return Err(EtcdError::TooManyLearners);
            }
            Ok(())
        }
        ConfChangeKind::PromoteLearner => match membership.get(id) {
            None => Err(EtcdError::MemberNotFound),
            Some(member) if !member.is_learner => Err(EtcdError::MemberNotLearner),
            Some(_) => Ok(()),
        },
        ConfChangeKind::RemoveNode => match membership.get(id) {
            None => Err(EtcdError::MemberNotFound),
            // The last voter can't go: nobody would be left to commit anything.
            Some(member) if !member.is_learner && membership.voters().count() == 1 => {
                Err(EtcdError::MemberNotEnoughStarted)
            }
            Some(_) => Ok(()),
        },
    }
}

/// etcd's check for MemberUpdate (a change of peer URLs).
pub fn check_update(
    membership: &Membership,
    id: u64,
    peer_urls: &[String],
) -> Result<(), EtcdError> {
    if membership.get(id).is_none() {
        return Err(EtcdError::MemberNotFound);
    }
    if membership.peer_urls_taken(peer_urls, id) {
        return Err(EtcdError::PeerUrlExists);
    }
    Ok(())
}

/// A majority of `members`.
fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// etcd's `IsReadyToAddVotingMember`: after adding a voter, a quorum of voters must have
/// started (published their attributes), so the cluster can still commit while the new one
/// catches up.
pub fn ready_to_add_voter(membership: &Membership, started: &[u64]) -> bool {
    let mut members = 1;
    let mut started_count = 0;
    for voter in membership.voters() {
        members += 1;
        if started.contains(&voter.id) {
            started_count += 1;
        }
    }
    if started_count == 1 && members == 2 {
        // Adding a second member to a one-member cluster.
        return true;
    }
    started_count >= quorum(members)
}

/// etcd's `IsReadyToRemoveVotingMember` (also `IsReadyToPromoteMember`, with `+ 1` voters).
pub fn ready_to_remove_voter(membership: &Membership, started: &[u64], id: u64) -> bool {
    let mut members = 0;
    let mut started_count = 0;
    for voter in membership.voters().filter(|voter| voter.id != id) {
        members += 1;
        if started.contains(&voter.id) {
            started_count += 1;
        }
    }
    started_count >= quorum(members)
}

/// etcd's `IsReadyToPromoteMember`: with the learner counted as a voter, a quorum has started.
pub fn ready_to_promote(membership: &Membership, started: &[u64], id: u64) -> bool {
    let mut members = 1;
    let mut started_count = 0;
    for voter in membership.voters() {
        members += 1;
        if started.contains(&voter.id) {
            started_count += 1;
        }
    }
    if started.contains(&id) {
        started_count += 1;
    }
    started_count >= quorum(members)
}

/// The member change a `ConfChangeKind` makes, for logs.
pub fn describe(kind: ConfChangeKind) -> &'static str {
    match kind {
        ConfChangeKind::AddVoter => "added a voting member",
        ConfChangeKind::AddLearner => "added a learner",
        ConfChangeKind::PromoteLearner => "promoted a learner",
        ConfChangeKind::RemoveNode => "removed a member",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, url: &str, is_learner: bool) -> MemberRecord {
        MemberRecord {
            id,
            peer_urls: vec![url.to_string()],
            is_learner,
        }
    }

    fn membership() -> Membership {
        Membership {
            members: vec![
                member(1, "http://a:1", false),
                member(2, "http://b:1", false),
                member(3, "http://c:1", true),
            ],
            removed: vec![9],
        }
    }

    fn change(kind: ConfChangeKind, node_id: u64) -> ConfChange {
        ConfChange {
            kind,
            node_id,
            context: Vec::new(),
        }
    }

    #[test]
    fn changes_are_checked_with_etcds_errors() {
        let members = membership();
        let check = |kind, id, member: Option<MemberRecord>| {
            check_conf_change(&members, &change(kind, id), member.as_ref())
        };
        use ConfChangeKind::*;
        assert_eq!(
            check(AddVoter, 2, Some(member(2, "http://x:1", false))),
            Err(EtcdError::MemberExists)
        );
        assert_eq!(
            check(AddVoter, 4, Some(member(4, "http://b:1", false))),
            Err(EtcdError::PeerUrlExists)
        );
        assert_eq!(
            check(AddLearner, 4, Some(member(4, "http://d:1", true))),
            Err(EtcdError::TooManyLearners)
        );
        assert_eq!(
            check(AddVoter, 4, Some(member(4, "http://d:1", false))),
            Ok(())
        );
        assert_eq!(
            check(PromoteLearner, 1, None),
            Err(EtcdError::MemberNotLearner)
        );
        assert_eq!(
            check(PromoteLearner, 7, None),
            Err(EtcdError::MemberNotFound)
        );
        assert_eq!(check(PromoteLearner, 3, None), Ok(()));
        assert_eq!(check(RemoveNode, 7, None), Err(EtcdError::MemberNotFound));
        assert_eq!(check(RemoveNode, 3, None), Ok(()));
        assert_eq!(
            check_update(&members, 1, &["http://b:1".to_string()]),
            Err(EtcdError::PeerUrlExists)
        );
        assert_eq!(
            check_update(&members, 1, &["http://a:1".to_string()]),
            Ok(())
        );
    }

    #[test]
    fn the_context_carries_the_request_id_and_the_member() {
        let added = member(4, "http://d:1", true);
        let bytes = encode_context(77, Some(&added));
        assert_eq!(decode_context(&bytes), Some((77, Some(added))));
        assert_eq!(decode_context(&encode_context(5, None)), Some((5, None)));
        assert_eq!(decode_context(b"short"), None);
    }

    #[test]
    fn etcds_started_member_rules() {
        let members = membership();
        assert!(ready_to_add_voter(&members, &[1, 2]));
        assert!(!ready_to_add_voter(&members, &[1]));
        assert!(ready_to_remove_voter(&members, &[1], 2));
        assert!(!ready_to_remove_voter(&members, &[], 2));
        assert!(ready_to_promote(&members, &[1, 2], 3));
        assert!(!ready_to_promote(&members, &[1], 3));
    }
}
