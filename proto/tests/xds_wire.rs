//! The vendored xDS transport must be wire-compatible with Envoy's: these
//! tests pin every field's number (and so its tag on the wire) by comparing
//! encodings with bytes written out by hand from Envoy's field numbers.

use gridmesh_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use gridmesh_proto::envoy::config::core::v3::{ControlPlane, Node};
use gridmesh_proto::google::rpc::Status;
use prost::Message;

/// A length-delimited field: tag (field << 3 | 2), length, bytes.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn discovery_request_fields_match_envoy() {
    let request = DiscoveryRequest {
        version_info: "1".into(),
        node: Some(Node {
            id: "n".into(),
            ..Default::default()
        }),
        resource_names: vec!["r".into()],
        type_url: "t".into(),
        response_nonce: "x".into(),
        error_detail: Some(Status {
            code: 3,
            message: "m".into(),
            details: vec![],
        }),
    };
    let status = concat(&[vec![0x08, 0x03], field(2, b"m")]);
    let expected = concat(&[
        field(1, b"1"),
        field(2, &field(1, b"n")),
        field(3, b"r"),
        field(4, b"t"),
        field(5, b"x"),
        field(6, &status),
    ]);
    assert_eq!(request.encode_to_vec(), expected);
    assert_eq!(
        DiscoveryRequest::decode(expected.as_slice()).unwrap(),
        request
    );
}

#[test]
fn discovery_response_fields_match_envoy() {
    let response = DiscoveryResponse {
        version_info: "1".into(),
        resources: vec![pbjson_types::Any {
            type_url: "u".into(),
            value: vec![1].into(),
        }],
        type_url: "t".into(),
        nonce: "n".into(),
        control_plane: Some(ControlPlane {
            identifier: "c".into(),
        }),
    };
    let expected = concat(&[
        field(1, b"1"),
        field(2, &concat(&[field(1, b"u"), field(2, &[1])])),
        field(4, b"t"),
        field(5, b"n"),
        field(6, &field(1, b"c")),
    ]);
    assert_eq!(response.encode_to_vec(), expected);
}

#[test]
fn delta_messages_match_envoy() {
    let request = DeltaDiscoveryRequest {
        type_url: "t".into(),
        resource_names_subscribe: vec!["a".into()],
        resource_names_unsubscribe: vec!["b".into()],
        initial_resource_versions: [("k".to_string(), "v".to_string())].into(),
        response_nonce: "n".into(),
        ..Default::default()
    };
    let expected = concat(&[
        field(2, b"t"),
        field(3, b"a"),
        field(4, b"b"),
        field(5, &concat(&[field(1, b"k"), field(2, b"v")])),
        field(6, b"n"),
    ]);
    assert_eq!(request.encode_to_vec(), expected);

    let response = DeltaDiscoveryResponse {
        system_version_info: "s".into(),
        resources: vec![Resource {
            version: "v".into(),
            name: "a".into(),
            ..Default::default()
        }],
        type_url: "t".into(),
        nonce: "n".into(),
        removed_resources: vec!["d".into()],
        control_plane: None,
    };
    let expected = concat(&[
        field(1, b"s"),
        field(2, &concat(&[field(1, b"v"), field(3, b"a")])),
        field(4, b"t"),
        field(5, b"n"),
        field(6, b"d"),
    ]);
    assert_eq!(response.encode_to_vec(), expected);
}
