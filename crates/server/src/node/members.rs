//! Membership changes (the Cluster service's MemberAdd / Remove / Update / Promote) and
//! joining a running cluster.
//!
//! Add, Remove and Promote are Raft membership changes. They are decided by the leader: a
//! follower forwards them over the peer service, so the checks that need the leader's view
//! (a learner in sync, enough started and connected members) see it, and a change Raft
//! refuses is reported instead of being lost on the way. Update is an ordinary entry. Every
//! change is checked again when applied (`membership.rs`), where the outcome is decided.

use std::time::{Duration, Instant};

use keel_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use keel_api::keelraftpb::raft_client::RaftClient;
use keel_api::keelraftpb::{ClusterInfoRequest, ClusterInfoResponse};
use keel_api::EtcdError;
use keel_raft::{ConfChange, ConfChangeKind};
use tokio::sync::oneshot;

use super::{Node, NodeConfig, StartError};
use crate::data_dir::{stable_id, Identity, MemberInfo};
use crate::membership::{self, MemberRecord, Membership, LEARNER_READY_PERCENT};
use crate::replica::Input;
use crate::request::Request;
use crate::ServerError;

/// How long a joining member keeps asking the members it was given for the cluster's members.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A member's id: from its sorted peer URLs and the cluster token, so the member added with
/// MemberAdd and the process that then joins with those URLs derive the same one.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    stable_id(&urls)
}

/// Checks peer URLs as etcd's `types.NewURLs` does (scheme http or https, a host and a port,
/// no path) and sorts them.
pub fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    let mut sorted = Vec::with_capacity(urls.len());
    for url in urls {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or(EtcdError::MemberBadUrls)?;
        let (host, port) = rest.rsplit_once(':').ok_or(EtcdError::MemberBadUrls)?;
        if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
            return Err(EtcdError::MemberBadUrls);
        }
        sorted.push(url.clone());
    }
    sorted.sort();
    Ok(sorted)
}

fn forwarded(status: &tonic::Status) -> ServerError {
    // The leader answered with one of etcd's errors, or could not be reached.
    EtcdError::from_status(status)
        .unwrap_or(EtcdError::LeaderChanged)
        .into()
}

impl Node {
    /// Members that have started (published their name), as etcd's `IsStarted` counts them.
    fn started_members(&self) -> Result<Vec<u64>, ServerError> {
        Ok(self
            .store
            .member_attributes()?
            .into_iter()
            .filter_map(|(id, bytes)| {
                let member: Member = prost::Message::decode(bytes.as_slice()).ok()?;
                (!member.name.is_empty()).then_some(id)
            })
            .collect())
    }

    /// Raft's view from the replica thread (replication progress on the leader).
    async fn raft_status(&self) -> Result<keel_raft::Status, ServerError> {
        let (responder, status) = oneshot::channel();
        self.submit(Input::RaftStatus(responder))?;
        status.await.map_err(|_| ServerError::Stopped)
    }

    /// Proposes a Raft membership change; answers once it is applied here.
    async fn propose_conf_change(
        &self,
        kind: ConfChangeKind,
        node_id: u64,
        member: Option<&MemberRecord>,
    ) -> Result<(), ServerError> {
        let id = self.next_request_id();
        let change = ConfChange {
            kind,
            node_id,
            context: membership::encode_context(id, member),
        };
        let (responder, response) = oneshot::channel();
        self.submit(Input::ProposeConfChange {
            id,
            change,
            responder,
        })?;
        match tokio::time::timeout(self.request_timeout, response).await {
            Ok(Ok(result)) => result.map(|_| ()),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    /// After the leader applied a change for us, waits until this member has too (`applied`
    /// says when), so what the client reads here next (`member list`) shows it. Not a ReadIndex
    /// round: the change may have removed the leader. The change is made either way, so this
    /// never fails; at worst the list answered is a moment old.
    async fn caught_up(&self, applied: impl Fn(&Membership) -> bool) {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        while tokio::time::Instant::now() < deadline {
            if self
                .membership()
                .is_ok_and(|membership| applied(&membership))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn member_add(
        &self,
        request: MemberAddRequest,
    ) -> Result<MemberAddResponse, ServerError> {
        if !self.is_leader() {
            let response = self
                .leader_client()?
                .member_add(request)
                .await
                .map_err(|status| forwarded(&status))?
                .into_inner();
            let added = response.member.as_ref().map_or(0, |member| member.id);
            self.caught_up(|membership| membership.get(added).is_some())
                .await;
            return Ok(MemberAddResponse {
                members: self.members(),
                ..response
            });
        }
        let peer_urls = parse_peer_urls(&request.peer_ur_ls)?;
        let id = member_id(&peer_urls, &self.initial_cluster_token);
        let record = MemberRecord {
            id,
            peer_urls: peer_urls.clone(),
            is_learner: request.is_learner,
        };
        let kind = if request.is_learner {
            ConfChangeKind::AddLearner
        } else {
            ConfChangeKind::AddVoter
        };
        let current = self.membership()?;
        let change = ConfChange {
            kind,
            node_id: id,
            context: Vec::new(),
        };
        membership::check_conf_change(&current, &change, Some(&record))?;
        if !request.is_learner
            && !membership::ready_to_add_voter(&current, &self.started_members()?)
        {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
        self.propose_conf_change(kind, id, Some(&record)).await?;
        Ok(MemberAddResponse {
            header: None,
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner: request.is_learner,
            }),
            members: self.members(),
        })
    }

    pub async fn member_remove(
        &self,
        request: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, ServerError> {
        if !self.is_leader() {
            let id = request.id;
            self.leader_client()?
                .member_remove(request)
                .await
                .map_err(|status| forwarded(&status))?;
            self.caught_up(|membership| membership.get(id).is_none())
                .await;
            return Ok(MemberRemoveResponse {
                header: None,
                members: self.members(),
            });
        }
        let id = request.id;
        let current = self.membership()?;
        let member = current.get(id).ok_or(EtcdError::MemberNotFound)?;
        if !member.is_learner {
            // etcd's mayRemoveMember: keep a quorum of started voters, and of connected ones.
            if !membership::ready_to_remove_voter(&current, &self.started_members()?, id) {
                return Err(EtcdError::MemberNotEnoughStarted.into());
            }
            let status = self.raft_status().await?;
            let active = |voter: u64| {
                voter == self.identity.member_id
                    || status
                        .progress
                        .get(&voter)
                        .is_some_and(|progress| progress.recent_active)
            };
            // A member that is down is safe to remove: it is not part of the active quorum.
            if id == self.identity.member_id || active(id) {
                let voters: Vec<u64> = current.voters().map(|voter| voter.id).collect();
                let active_count = voters.iter().filter(|voter| active(**voter)).count();
                if active_count.saturating_sub(1) < 1 + (voters.len() - 1) / 2 {
                    return Err(EtcdError::Unhealthy.into());
                }
            }
        }
        let change = ConfChange {
            kind: ConfChangeKind::RemoveNode,
            node_id: id,
            context: Vec::new(),
        };
        membership::check_conf_change(&current, &change, None)?;
        self.propose_conf_change(ConfChangeKind::RemoveNode, id, None)
            .await?;
        Ok(MemberRemoveResponse {
            header: None,
            members: self.members(),
        })
    }

    pub async fn member_promote(
        &self,
        request: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, ServerError> {
        if !self.is_leader() {
            let id = request.id;
            self.leader_client()?
                .member_promote(request)
                .await
                .map_err(|status| forwarded(&status))?;
            self.caught_up(|membership| {
                membership.get(id).is_some_and(|member| !member.is_learner)
            })
            .await;
            return Ok(MemberPromoteResponse {
                header: None,
                members: self.members(),
            });
        }
        let id = request.id;
        // etcd's isLearnerReady: the learner's log holds 90% of the leader's.
        let status = self.raft_status().await?;
        if let (Some(learner), Some(leader)) = (
            status.progress.get(&id),
            status.progress.get(&self.identity.member_id),
        ) {
            if learner.matched * 100 < leader.matched * LEARNER_READY_PERCENT {
                return Err(EtcdError::LearnerNotReady.into());
            }
        }
        let current = self.membership()?;
        let change = ConfChange {
            kind: ConfChangeKind::PromoteLearner,
            node_id: id,
            context: Vec::new(),
        };
        membership::check_conf_change(&current, &change, None)?;
        if !membership::ready_to_promote(&current, &self.started_members()?, id) {
            return Err(EtcdError::MemberNotEnoughStarted.into());
        }
        self.propose_conf_change(ConfChangeKind::PromoteLearner, id, None)
            .await?;
        Ok(MemberPromoteResponse {
            header: None,
            members: self.members(),
        })
    }

    /// MemberUpdate: new peer URLs for a member; an ordinary entry, proposed from any member.
    pub async fn member_update(
        &self,
        request: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, ServerError> {
        let peer_urls = parse_peer_urls(&request.peer_ur_ls)?;
        membership::check_update(&self.membership()?, request.id, &peer_urls)?;
        self.propose(Request::MemberUpdate(Member {
            id: request.id,
            peer_ur_ls: peer_urls,
            ..Member::default()
        }))
        .await?;
        Ok(MemberUpdateResponse {
            header: None,
            members: self.members(),
        })
    }

    /// What a joining member asks for (`keelraftpb.Raft/ClusterInfo`).
    pub fn cluster_info(&self) -> ClusterInfoResponse {
        ClusterInfoResponse {
            cluster_id: self.identity.cluster_id,
            founding_members: self
                .identity
                .initial_members
                .iter()
                .map(|member| Member {
                    id: member.id,
                    name: member.name.clone(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: Vec::new(),
                    is_learner: false,
                })
                .collect(),
            members: self.members(),
        }
    }
}

/// The identity of a member joining a running cluster (`--initial-cluster-state existing`):
/// its own id, and the cluster's id and founding members, learnt from a member named in
/// `--initial-cluster`. Also returns the current members, to reach them before the log has
/// been replayed.
pub(super) fn join_identity(
    config: &NodeConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<(Identity, Vec<Member>), StartError> {
    let own_urls = config
        .initial_cluster
        .iter()
        .find(|(name, _)| *name == config.name)
        .map_or_else(
            || config.initial_advertise_peer_urls.clone(),
            |(_, urls)| urls.clone(),
        );
    let member_id = member_id(&own_urls, &config.initial_cluster_token);
    let asked: Vec<String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != config.name)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect();
    if asked.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster names no running member to join through".into(),
        ));
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let info = 'found: loop {
        let mut last_error = String::new();
        for url in &asked {
            match runtime.block_on(fetch_cluster_info(url)) {
                Ok(info) => break 'found info,
                Err(error) => last_error = format!("{url}: {error}"),
            }
        }
        if Instant::now() > deadline {
            return Err(StartError::Join(format!(
                "could not get the cluster's members from any of {asked:?} ({last_error})"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !info.members.iter().any(|member| member.id == member_id) {
        return Err(StartError::Join(format!(
            "this member (id {member_id:x}, peer URLs {own_urls:?}) is not a member of the \
             cluster; add it first (etcdctl member add {} --peer-urls={})",
            config.name,
            own_urls.join(",")
        )));
    }
    let mut initial_members: Vec<MemberInfo> = info
        .founding_members
        .iter()
        .map(|member| MemberInfo {
            id: member.id,
            name: member.name.clone(),
            peer_urls: member.peer_ur_ls.clone(),
        })
        .collect();
    initial_members.sort_by_key(|member| member.id);
    tracing::info!(
        member_id = format!("{member_id:x}"),
        cluster_id = format!("{:x}", info.cluster_id),
        members = info.members.len(),
        "joining a running cluster"
    );
    Ok((
        Identity {
            name: config.name.clone(),
            member_id,
            cluster_id: info.cluster_id,
            initial_members,
        },
        info.members,
    ))
}

async fn fetch_cluster_info(url: &str) -> Result<ClusterInfoResponse, String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    RaftClient::new(channel)
        .cluster_info(ClusterInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_and_sorted_like_etcds() {
        assert_eq!(
            parse_peer_urls(&["http://b:2".into(), "https://a:1".into()]),
            Ok(vec!["http://b:2".to_string(), "https://a:1".to_string()])
        );
        for bad in [
            "a:1",
            "http://a",
            "http://a:x",
            "http://a:1/path",
            "ftp://a:1",
        ] {
            assert_eq!(
                parse_peer_urls(&[bad.to_string()]),
                Err(EtcdError::MemberBadUrls),
                "{bad}"
            );
        }
        assert_eq!(parse_peer_urls(&[]), Err(EtcdError::MemberBadUrls));
    }

    #[test]
    fn a_member_id_does_not_depend_on_the_order_of_its_urls() {
        let one = member_id(&["http://a:1".into(), "http://b:1".into()], "t");
        let other = member_id(&["http://b:1".into(), "http://a:1".into()], "t");
        assert_eq!(one, other);
        assert_ne!(
            one,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u")
        );
    }
}
