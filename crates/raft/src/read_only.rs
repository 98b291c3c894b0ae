//! The leader's queue of ReadIndex requests waiting for a heartbeat quorum to confirm that
//! it was still the leader when they arrived.

use std::collections::{BTreeSet, VecDeque};

use crate::error::Error;
use crate::message::NodeId;

#[derive(Debug)]
pub(crate) struct ReadRequest {
    /// The leader's commit index when the request arrived: the answer.
    pub index: u64,
    /// Who asked: this node (a local read) or a follower that forwarded it.
    pub from: NodeId,
    pub context: Vec<u8>,
    acks: BTreeSet<NodeId>,
}

/// Requests in arrival order; an acknowledgement of a later request's heartbeat round also
/// confirms every earlier one (leadership was held at a later moment).
#[derive(Debug)]
pub(crate) struct ReadOnly {
    queue: VecDeque<ReadRequest>,
    capacity: usize,
}

impl ReadOnly {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity,
        }
    }

    pub fn add(&mut self, index: u64, from: NodeId, context: Vec<u8>) -> Result<(), Error> {
        if self.queue.iter().any(|r| r.context == context) {
            return Ok(());
        }
        if self.queue.len() >= self.capacity {
            return Err(Error::ReadIndexQueueFull);
        }
        self.queue.push_back(ReadRequest {
            index,
            from,
            context,
            acks: BTreeSet::new(),
        });
        Ok(())
    }

    /// Records that `from` answered the heartbeat round of `context`; returns who has.
    pub fn ack(&mut self, from: NodeId, context: &[u8]) -> Option<&BTreeSet<NodeId>> {
        let request = self.queue.iter_mut().find(|r| r.context == context)?;
        request.acks.insert(from);
        Some(&request.acks)
    }

    /// Removes and returns every request up to and including `context`.
    pub fn release_through(&mut self, context: &[u8]) -> Vec<ReadRequest> {
        let Some(position) = self.queue.iter().position(|r| r.context == context) else {
            return Vec::new();
        };
        self.queue.drain(..=position).collect()
    }

    pub fn last_context(&self) -> Option<&[u8]> {
        self.queue.back().map(|r| r.context.as_slice())
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::ReadOnly;
    use crate::error::Error;

    #[test]
    fn later_confirmation_releases_earlier_requests() {
        let mut reads = ReadOnly::new(3);
        reads.add(5, 1, b"a".to_vec()).unwrap();
        reads.add(6, 2, b"b".to_vec()).unwrap();
        reads.add(7, 1, b"c".to_vec()).unwrap();
        assert_eq!(
            reads.add(8, 1, b"d".to_vec()),
            Err(Error::ReadIndexQueueFull)
        );
        assert_eq!(
            reads.ack(3, b"b").map(std::collections::BTreeSet::len),
            Some(1)
        );
        let released = reads.release_through(b"b");
        assert_eq!(released.iter().map(|r| r.index).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(reads.last_context(), Some(&b"c"[..]));
        assert_eq!(reads.len(), 1);
    }
}
