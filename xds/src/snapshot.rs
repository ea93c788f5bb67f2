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
    /// The xxHash64 of `any.value`, never [`UNKNOWN_VERSION`]; sent as 16
    /// hex digits ([`version_text`]).
    pub version: u64,
    pub any: Any,
}

/// No served resource has this version: it stands for a version a client
/// reports that this control plane cannot have sent (not 16 hex digits).
pub const UNKNOWN_VERSION: u64 = 0;

/// A resource version as sent on the wire.
pub fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

/// A version a client reports (`initial_resource_versions`), as a number.
pub fn parse_version(text: &str) -> u64 {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return UNKNOWN_VERSION;
    }
    u64::from_str_radix(text, 16).unwrap_or(UNKNOWN_VERSION)
}

/// The version of an encoded resource.
fn version_of_bytes(bytes: &[u8]) -> u64 {
    // 0 is reserved for UNKNOWN_VERSION.
    XxHash64::oneshot(0, bytes).max(1)
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
    kinds: [Resources; Kind::PUSH_ORDER.len()],
}

impl Snapshot {
    pub fn new(set: &Bootstrap, files: Vec<String>) -> Snapshot {
        let kinds = Kind::PUSH_ORDER.map(|kind| {
            let entries: BTreeMap<Arc<str>, Entry> = kind
                .pack(set)
                .into_iter()
                .map(|(name, any)| {
                    let version = version_of_bytes(&any.value);
                    (Arc::from(name), Entry { version, any })
                })
                .collect();
            Resources {
                version_info: version_of(entries.iter().map(|(n, e)| (&**n, e.version))),
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
pub fn version_of<'a>(pairs: impl Iterator<Item = (&'a str, u64)>) -> Arc<str> {
    let mut hasher = XxHash64::with_seed(0);
    for (name, version) in pairs {
        hasher.write(name.as_bytes());
        hasher.write_u8(0);
        hasher.write_u64(version);
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

    #[test]
    fn versions_round_trip_as_text() {
        let a = Snapshot::new(&set(&["a"]), vec![]);
        let v = a.resources(Kind::Cluster).entries["a"].version;
        assert_ne!(v, UNKNOWN_VERSION);
        assert_eq!(version_text(v).len(), 16);
        assert_eq!(parse_version(&version_text(v)), v);
        for foreign in [
            "",
            "1",
            "v1",
            "zzzzzzzzzzzzzzzz",
            "+000000000000001",
            "00000000000000001",
        ] {
            assert_eq!(parse_version(foreign), UNKNOWN_VERSION, "{foreign}");
        }
    }
}
