//! The control plane end to end: a real server on loopback, a real config
//! directory, real gRPC streams driven by scripted xDS clients.

mod ca;
mod cli;
mod config;
mod delta;
mod fixtures;
mod harness;
mod protocol_rules;
mod sockets;
mod sotw;
