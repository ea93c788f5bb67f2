//! gridmesh's protobuf messages and gRPC services.
//!
//! `gridmesh::v1` holds the configuration resources; they implement serde with
//! the proto3 JSON mapping, so a bootstrap YAML file and the control plane's
//! xDS stream describe configuration in the same language.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod gridmesh {
    pub mod v1 {
        tonic::include_proto!("gridmesh.v1");
        include!(concat!(env!("OUT_DIR"), "/gridmesh.v1.serde.rs"));
    }
    pub mod testing {
        pub mod v1 {
            tonic::include_proto!("gridmesh.testing.v1");
        }
    }
}

/// The xDS transport, wire-compatible with Envoy's (trimmed copy).
pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

/// The block server's protocol: KServe Open Inference Protocol v2 plus
/// Triton's model configuration and statistics (wire-compatible trimmed copy).
pub mod inference {
    tonic::include_proto!("inference");
}

/// Every message above as a serialized `FileDescriptorSet`, for reflection:
/// the block server parses Triton's `config.pbtxt` (protobuf text format) with it.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod resource;

pub use envoy::service::discovery::v3 as discovery;
pub use gridmesh::testing::v1 as testing;
pub use gridmesh::v1 as config;
