//! gridmesh's sidecar proxy.
#![forbid(unsafe_code)]
