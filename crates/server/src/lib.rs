//! keel-server (skeleton).
