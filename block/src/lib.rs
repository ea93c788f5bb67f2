//! gridmesh's block server: TorchScript models from a Triton-style model
//! repository, served over KServe v2 gRPC with Triton's extensions, batched
//! dynamically, and reporting load to the sidecar in front of it.
//!
//! A request goes: [`service`] (checked against the model's configuration,
//! decoded by [`tensor`]) -> the model version's queue in [`batcher`] -> a
//! batch on one instance thread -> its rows back to the caller; [`observe`]
//! and [`load`] watch every step. [`repository`] finds and loads the models
//! that [`model_config`] describes; [`server`] wires it all to sockets.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod batcher;
pub mod http;
pub mod load;
pub mod model_config;
pub mod observe;
pub mod repository;
pub mod server;
pub mod service;
pub mod tensor;
pub mod trace;
