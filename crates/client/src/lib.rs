//! keel-client (skeleton).
