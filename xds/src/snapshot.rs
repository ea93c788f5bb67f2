//! What the control plane serves: every resource encoded once, with a
//! version derived from its bytes. Streams share a snapshot through an
//! `Arc` and its encoded resources through `Bytes`, so a thousand sidecars
//! cost one encoding, not a thousand.
//!
//! Versions are content hashes, not counters, so they survive a restart of
//! the control plane: a reconnecting sidecar that reports what it holds
//! (`initial_resource_versions`) is sent only what really changed.

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::sync::Arc;
use std::time::SystemTime;

use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::resource::Kind;
use pbjson_types::Any;
use twox_hash::XxHash64;

/// One encoded resource.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: Arc<str>,
    pub any: Any,
}

/// The resources of one kind, by name.
#[derive(Debug, Default)]
pub struct Resources {
    /// A hash over every (name, version): the SotW `version_info` of a
    /// wildcard subscription.
    pub version_info: Arc<str>,
    pub entries: BTreeMap<Arc<str>, Entry>,
}

#[derive(Debug)]
pub struct Snapshot {
    /// A hash over the four kinds' versions: names the whole config.
    pub version: String,
    pub loaded_at: SystemTime,
    /// The files it was read from.
    pub files: Vec<String>,
    /// In `Kind::PUSH_ORDER` order.
    kinds: [Resources; 4],
}

impl Snapshot {
    pub fn new(set: &Bootstrap, files: Vec<String>) -> Snapshot {
        let kinds = Kind::PUSH_ORDER.map(|kind| {
            let entries: BTreeMap<Arc<str>, Entry> = kind
                .pack(set)
                .into_iter()
                .map(|(name, any)| {
                    let version = hex(XxHash64::oneshot(0, &any.value));
                    (Arc::from(name), Entry { version, any })
                })
                .collect();
            Resources {
                version_info: version_of(entries.iter().map(|(n, e)| (&**n, &*e.version))),
                entries,
            }
        });
        let mut hasher = XxHash64::with_seed(0);
        for (kind, resources) in Kind::PUSH_ORDER.iter().zip(&kinds) {
            hasher.write(kind.type_url().as_bytes());
            hasher.write(resources.version_info.as_bytes());
        }
        Snapshot {
            version: hex(hasher.finish()).to_string(),
            loaded_at: SystemTime::now(),
            files,
            kinds,
        }
    }

    pub fn resources(&self, kind: Kind) -> &Resources {
        let slot = Kind::PUSH_ORDER
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        &self.kinds[slot]
    }
}

/// The version of a set of (name, version) pairs, given in name order.
pub fn version_of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Arc<str> {
    let mut hasher = XxHash64::with_seed(0);
    for (name, version) in pairs {
        hasher.write(name.as_bytes());
        hasher.write_u8(0);
        hasher.write(version.as_bytes());
        hasher.write_u8(0);
    }
    hex(hasher.finish())
}

fn hex(hash: u64) -> Arc<str> {
    Arc::from(format!("{hash:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_proto::config::Cluster;

    fn set(names: &[&str]) -> Bootstrap {
        Bootstrap {
            clusters: names
                .iter()
                .map(|n| Cluster {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_depend_on_content_only() {
        let a = Snapshot::new(&set(&["a", "b"]), vec![]);
        let b = Snapshot::new(&set(&["b", "a"]), vec!["x.yaml".into()]);
        assert_eq!(a.version, b.version);
        let c = Snapshot::new(&set(&["a"]), vec![]);
        assert_ne!(a.version, c.version);
        let (a, c) = (a.resources(Kind::Cluster), c.resources(Kind::Cluster));
        assert_eq!(a.entries["a"].version, c.entries["a"].version);
        assert_ne!(a.version_info, c.version_info);
    }
}
