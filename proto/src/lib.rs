//! gridmesh's protobuf messages and gRPC services.
//!
//! The services (tonic clients and servers) come with the `grpc` feature, on
//! by default; without it the crate is messages only, with no runtime, for
//! crates such as gridmesh-config that must not pull one in.
//!
//! `gridmesh::v1` holds the configuration resources; they implement serde with
//! the proto3 JSON mapping, so a bootstrap YAML file and the control plane's
//! xDS stream describe configuration in the same language.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod gridmesh {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/gridmesh.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/gridmesh.v1.serde.rs"));
    }
    /// How sidecars carry vDAG requests between them (internal).
    pub mod vdag {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridmesh.vdag.v1.rs"));
        }
    }
    pub mod testing {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridmesh.testing.v1.rs"));
        }
    }
}

/// The xDS transport, wire-compatible with Envoy's (trimmed copy).
pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// The block server's protocol: KServe Open Inference Protocol v2 plus
/// Triton's model configuration and statistics (wire-compatible trimmed copy).
pub mod inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// The existing AI network's block protocol (`InferenceProxy`, no package
/// on the wire), which sidecars speak for its blocks.
pub mod inference_proxy {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Every message above as a serialized `FileDescriptorSet`, for reflection:
/// the block server parses Triton's `config.pbtxt` (protobuf text format) with it.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

pub mod resource;

pub use envoy::service::discovery::v3 as discovery;
pub use gridmesh::testing::v1 as testing;
pub use gridmesh::v1 as config;
pub use gridmesh::vdag::v1 as hop;
