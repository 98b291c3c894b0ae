//! keel-api (skeleton).
