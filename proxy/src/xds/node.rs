//! Who this sidecar is, as the control plane sees it: the xDS `Node`, from
//! the environment the injector sets (pod name and namespace from the
//! downward API, the block's id and instance id).

use std::collections::BTreeMap;

use gridmesh_proto::envoy::config::core::v3::{Node, node::UserAgentVersionType};
use pbjson_types::{Struct, Value, value::Kind as ValueKind};

/// Environment variables read, and the metadata keys they become.
const METADATA_ENV: [(&str, &str); 4] = [
    ("POD_NAME", "pod"),
    ("POD_NAMESPACE", "namespace"),
    ("GRIDMESH_BLOCK_ID", "block_id"),
    ("GRIDMESH_INSTANCE_ID", "instance_id"),
];

/// Builds the node from `env` (`std::env::var` in production).
pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Node {
    let metadata: BTreeMap<String, String> = METADATA_ENV
        .iter()
        .filter_map(|(var, key)| Some((key.to_string(), env(var).filter(|v| !v.is_empty())?)))
        .collect();
    // Explicit id first; else "<pod>.<namespace>" as the mesh knows pods;
    // else the host name, which is the pod name inside Kubernetes.
    let id = env("GRIDMESH_NODE_ID")
        .filter(|v| !v.is_empty())
        .or_else(|| match (metadata.get("pod"), metadata.get("namespace")) {
            (Some(pod), Some(ns)) => Some(format!("{pod}.{ns}")),
            (Some(pod), None) => Some(pod.clone()),
            _ => None,
        })
        .or_else(|| env("HOSTNAME").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("gridmesh-proxy-{}", std::process::id()));
    Node {
        id,
        cluster: metadata.get("block_id").cloned().unwrap_or_default(),
        metadata: Some(Struct {
            fields: metadata
                .into_iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(ValueKind::StringValue(v)),
                    };
                    (k, value)
                })
                .collect(),
        }),
        user_agent_name: "gridmesh-proxy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// A string value of the node's metadata (`pod`, `namespace`, `block_id`).
pub fn metadata(node: &Node, key: &str) -> Option<String> {
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        ValueKind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn pod_namespace_block_and_instance_identify_the_node() {
        let node = from_env(env(&[
            ("POD_NAME", "detector-7f9c"),
            ("POD_NAMESPACE", "blocks"),
            ("GRIDMESH_BLOCK_ID", "detector"),
            ("GRIDMESH_INSTANCE_ID", "i-3"),
            ("HOSTNAME", "ignored"),
        ]));
        assert_eq!(node.id, "detector-7f9c.blocks");
        assert_eq!(node.cluster, "detector");
        let fields = node.metadata.unwrap().fields;
        let value = |k: &str| match &fields[k].kind {
            Some(ValueKind::StringValue(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(value("instance_id"), "i-3");
        assert_eq!(value("namespace"), "blocks");
        assert_eq!(node.user_agent_name, "gridmesh-proxy");
    }

    #[test]
    fn explicit_id_wins_and_hostname_is_the_fallback() {
        let node = from_env(env(&[("GRIDMESH_NODE_ID", "n1"), ("POD_NAME", "p")]));
        assert_eq!(node.id, "n1");
        assert_eq!(from_env(env(&[("HOSTNAME", "box")])).id, "box");
    }
}
