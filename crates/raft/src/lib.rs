//! keel-raft (skeleton).
