//! keel-storage (skeleton).
