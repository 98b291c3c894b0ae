//! Static settings of one node.

use crate::error::Error;
use crate::message::NodeId;

/// Everything a node needs to know before it starts. Times are in ticks: the runtime decides
/// how long a tick is (etcd uses 100 ms) and calls `tick` that often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; never zero.
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a random number of ticks in
    /// `election_ticks..2 * election_ticks` starts an election. A leader with `check_quorum`
    /// steps down if it has not heard from a quorum within `election_ticks`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`; must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Seeds the election-timeout randomness. Mixed with `id`, so every node of a cluster may
    /// share one seed and still get different timeouts.
    pub random_seed: u64,
    /// Run a pre-vote round before a real election, so a partitioned node that rejoins does
    /// not force the healthy leader to step down.
    pub pre_vote: bool,
    /// A leader steps down if a quorum has been silent for an election timeout, and a node
    /// that heard from a leader within the election timeout ignores vote requests (the vote
    /// lease).
    pub check_quorum: bool,
    /// The largest total entry size in one `Append` (at least one entry is always sent).
    pub max_size_per_message_bytes: u64,
    /// How many `Append` messages may be unacknowledged per follower in the replicate state.
    pub max_inflight_messages: usize,
    /// The leader refuses proposals while its uncommitted tail is larger than this.
    pub max_uncommitted_entries_bytes: u64,
    /// A follower drops an `Append` that would make its unpersisted tail larger than this
    /// (the leader retries); bounds memory when the runtime falls behind on `advance`.
    pub max_unstable_entries_bytes: u64,
    /// The largest total size of committed entries handed out in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// The most entries one proposal batch may carry.
    pub max_proposal_entries: usize,
    /// The most ReadIndex requests a leader holds (waiting for a heartbeat quorum or for its
    /// first commit in the term).
    pub max_pending_read_index: usize,
    /// The last index the runtime's state machine has durably applied (0: the snapshot's
    /// index). On restart the core hands out committed entries after it.
    pub applied: u64,
}

impl Config {
    /// Defaults close to etcd's: 10 election ticks, 1 heartbeat tick, pre-vote and
    /// check-quorum on.
    #[must_use]
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            random_seed: 0,
            pre_vote: true,
            check_quorum: true,
            max_size_per_message_bytes: 1024 * 1024,
            max_inflight_messages: 256,
            max_uncommitted_entries_bytes: 64 * 1024 * 1024,
            max_unstable_entries_bytes: 64 * 1024 * 1024,
            max_committed_bytes_per_ready: 16 * 1024 * 1024,
            max_proposal_entries: 1024,
            max_pending_read_index: 4096,
            applied: 0,
        }
    }

    /// # Errors
    /// [`Error::InvalidConfig`] naming the first unusable field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::InvalidConfig("id must not be zero"));
        }
        if self.heartbeat_ticks == 0 {
            return Err(Error::InvalidConfig("heartbeat_ticks must be positive"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::InvalidConfig(
                "election_ticks must exceed heartbeat_ticks",
            ));
        }
        if self.max_inflight_messages == 0 {
            return Err(Error::InvalidConfig(
                "max_inflight_messages must be positive",
            ));
        }
        if self.max_proposal_entries == 0 {
            return Err(Error::InvalidConfig(
                "max_proposal_entries must be positive",
            ));
        }
        if self.max_pending_read_index == 0 {
            return Err(Error::InvalidConfig(
                "max_pending_read_index must be positive",
            ));
        }
        if self.max_uncommitted_entries_bytes == 0
            || self.max_unstable_entries_bytes == 0
            || self.max_committed_bytes_per_ready == 0
            || self.max_size_per_message_bytes == 0
        {
            return Err(Error::InvalidConfig("byte limits must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use crate::error::Error;

    #[test]
    fn validate_names_the_bad_field() {
        type Case = (fn(&mut Config), Option<&'static str>);
        let cases: [Case; 5] = [
            (|_| {}, None),
            (|c| c.id = 0, Some("id must not be zero")),
            (
                |c| c.heartbeat_ticks = 0,
                Some("heartbeat_ticks must be positive"),
            ),
            (
                |c| c.election_ticks = 1,
                Some("election_ticks must exceed heartbeat_ticks"),
            ),
            (
                |c| c.max_inflight_messages = 0,
                Some("max_inflight_messages must be positive"),
            ),
        ];
        for (mutate, expected) in cases {
            let mut config = Config::new(1);
            mutate(&mut config);
            assert_eq!(
                config.validate(),
                expected.map_or(Ok(()), |why| Err(Error::InvalidConfig(why)))
            );
        }
    }
}
