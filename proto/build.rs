//! Compiles the `.proto` files with `protox` (pure Rust, so no system `protoc`)
//! and generates prost messages, tonic services (the test Echo service and
//! the xDS aggregated discovery service, the block server's KServe v2
//! inference service) and, for the configuration
//! messages, serde impls that follow the proto3 JSON mapping (bootstrap YAML).

use std::path::PathBuf;

/// The existing network's protocol, which has no package: compiled on its
/// own, as pbjson (JSON mapping of gridmesh's config) needs a package in
/// every file it reads.
const NO_PACKAGE: &str = "proto/inference_proxy.proto";

const PROTOS: &[&str] = &[
    "proto/gridmesh/v1/config.proto",
    "proto/gridmesh/v1/ca.proto",
    "proto/gridmesh/vdag/v1/hop.proto",
    "proto/gridmesh/testing/v1/echo.proto",
    "proto/envoy/service/discovery/v3/ads.proto",
    "proto/inference/grpc_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS.iter().chain([&NO_PACKAGE]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("descriptors.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    // Services only with the `grpc` feature: messages alone need no runtime.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        // Well-known types come from pbjson-types so they carry JSON-mapping serde impls.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // Tensors and packets as `Bytes`: decoding slices the received
        // buffer instead of copying every tensor, and a node's outputs
        // become the next node's inputs without a copy.
        .bytes(".inference")
        .bytes(".gridmesh.vdag")
        .compile_protos(PROTOS, &["proto"])?;

    let no_package = out_dir.join("no_package_descriptors.bin");
    let descriptors = protox::compile([NO_PACKAGE], ["proto"])?;
    std::fs::write(&no_package, prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .file_descriptor_set_path(&no_package)
        .skip_protoc_run()
        .bytes(".")
        .compile_protos(&[NO_PACKAGE], &["proto"])?;

    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".gridmesh.v1"])?;
    Ok(())
}
