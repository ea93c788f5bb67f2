//! gridmesh's protobuf messages and gRPC services.
//!
//! `gridmesh::v1` holds the configuration resources; they implement serde with
//! the proto3 JSON mapping, so a bootstrap YAML file and the control plane's
//! xDS stream describe configuration in the same language.
#![forbid(unsafe_code)]

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

pub use gridmesh::testing::v1 as testing;
pub use gridmesh::v1 as config;
