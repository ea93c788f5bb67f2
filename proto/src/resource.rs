//! gridmesh resources as xDS carries them: the resource kinds, their type
//! URLs and names, the order a control plane pushes them in, and packing
//! into and out of `google.protobuf.Any`.
//!
//! A [`Bootstrap`] is the container for a set of resources on both sides:
//! the control plane reads its YAML files into one, the sidecar assembles
//! its static and received resources into one and validates it whole.

use pbjson_types::Any;
use prost::Message;

use crate::config::Bootstrap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoints,
    AuthorizationPolicy,
    VDag,
    Listener,
    RouteTable,
}

impl Kind {
    /// The order resources are pushed in (the xDS ordering rule): what is
    /// referred to arrives before what refers to it, so a client never sees
    /// a route to a cluster it does not know yet. Authorization policies
    /// come before the listeners they select, so that a new listener never
    /// serves a request its policies would have denied. vDAGs name clusters
    /// and routes name vDAGs. Removals go in reverse.
    pub const PUSH_ORDER: [Kind; 6] = [
        Kind::Cluster,
        Kind::Endpoints,
        Kind::AuthorizationPolicy,
        Kind::VDag,
        Kind::Listener,
        Kind::RouteTable,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/gridmesh.v1.Cluster",
            Kind::Endpoints => "type.googleapis.com/gridmesh.v1.Endpoints",
            Kind::AuthorizationPolicy => "type.googleapis.com/gridmesh.v1.AuthorizationPolicy",
            Kind::VDag => "type.googleapis.com/gridmesh.v1.VDag",
            Kind::Listener => "type.googleapis.com/gridmesh.v1.Listener",
            Kind::RouteTable => "type.googleapis.com/gridmesh.v1.RouteTable",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::PUSH_ORDER.into_iter().find(|k| k.type_url() == url)
    }

    /// The resource kind as the YAML schema and error messages name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoints => "endpoints",
            Kind::AuthorizationPolicy => "authorizationPolicy",
            Kind::VDag => "vdag",
            Kind::Listener => "listener",
            Kind::RouteTable => "routeTable",
        }
    }

    /// The names of this kind's resources in `set`, in order. An
    /// `Endpoints` resource is named after its cluster (as Envoy's
    /// ClusterLoadAssignment is).
    pub fn names(self, set: &Bootstrap) -> Vec<&str> {
        match self {
            Kind::Cluster => set.clusters.iter().map(|r| r.name.as_str()).collect(),
            Kind::Endpoints => set.endpoints.iter().map(|r| r.cluster.as_str()).collect(),
            Kind::AuthorizationPolicy => (set.authorization_policies.iter())
                .map(|r| r.name.as_str())
                .collect(),
            Kind::VDag => set.vdags.iter().map(|r| r.name.as_str()).collect(),
            Kind::Listener => set.listeners.iter().map(|r| r.name.as_str()).collect(),
            Kind::RouteTable => set.route_tables.iter().map(|r| r.name.as_str()).collect(),
        }
    }

    /// Every resource of this kind in `set`, in order, as (name, Any).
    pub fn pack(self, set: &Bootstrap) -> Vec<(String, Any)> {
        fn packed<M: Message>(url: &str, name: &str, m: &M) -> (String, Any) {
            let any = Any {
                type_url: url.to_string(),
                value: m.encode_to_vec().into(),
            };
            (name.to_string(), any)
        }
        let url = self.type_url();
        match self {
            Kind::Cluster => set
                .clusters
                .iter()
                .map(|r| packed(url, &r.name, r))
                .collect(),
            Kind::Endpoints => set
                .endpoints
                .iter()
                .map(|r| packed(url, &r.cluster, r))
                .collect(),
            Kind::AuthorizationPolicy => set
                .authorization_policies
                .iter()
                .map(|r| packed(url, &r.name, r))
                .collect(),
            Kind::VDag => set.vdags.iter().map(|r| packed(url, &r.name, r)).collect(),
            Kind::Listener => set
                .listeners
                .iter()
                .map(|r| packed(url, &r.name, r))
                .collect(),
            Kind::RouteTable => set
                .route_tables
                .iter()
                .map(|r| packed(url, &r.name, r))
                .collect(),
        }
    }

    /// Decodes `any` as a resource of this kind and appends it to `set`;
    /// returns its name.
    pub fn unpack_into(self, any: &Any, set: &mut Bootstrap) -> Result<String, UnpackError> {
        if any.type_url != self.type_url() {
            return Err(UnpackError::TypeUrl {
                expected: self.type_url(),
                found: any.type_url.clone(),
            });
        }
        let bytes = any.value.as_ref();
        Ok(match self {
            Kind::Cluster => {
                let r = Message::decode(bytes)?;
                set.clusters.push(r);
                set.clusters.last().map(|r| r.name.clone())
            }
            Kind::Endpoints => {
                let r = Message::decode(bytes)?;
                set.endpoints.push(r);
                set.endpoints.last().map(|r| r.cluster.clone())
            }
            Kind::AuthorizationPolicy => {
                let r = Message::decode(bytes)?;
                set.authorization_policies.push(r);
                set.authorization_policies.last().map(|r| r.name.clone())
            }
            Kind::VDag => {
                let r = Message::decode(bytes)?;
                set.vdags.push(r);
                set.vdags.last().map(|r| r.name.clone())
            }
            Kind::Listener => {
                let r = Message::decode(bytes)?;
                set.listeners.push(r);
                set.listeners.last().map(|r| r.name.clone())
            }
            Kind::RouteTable => {
                let r = Message::decode(bytes)?;
                set.route_tables.push(r);
                set.route_tables.last().map(|r| r.name.clone())
            }
        }
        .unwrap_or_default())
    }

    /// How many resources of this kind `set` holds.
    pub fn count(self, set: &Bootstrap) -> usize {
        match self {
            Kind::Cluster => set.clusters.len(),
            Kind::Endpoints => set.endpoints.len(),
            Kind::AuthorizationPolicy => set.authorization_policies.len(),
            Kind::VDag => set.vdags.len(),
            Kind::Listener => set.listeners.len(),
            Kind::RouteTable => set.route_tables.len(),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("type URL {found:?} in a response for {expected}")]
    TypeUrl {
        expected: &'static str,
        found: String,
    },
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorizationPolicy, Cluster, Endpoints, VDag};

    #[test]
    fn packs_and_unpacks_every_kind_by_name() {
        let set = Bootstrap {
            clusters: vec![Cluster {
                name: "a".into(),
                ..Default::default()
            }],
            endpoints: vec![Endpoints {
                cluster: "a".into(),
                ..Default::default()
            }],
            authorization_policies: vec![AuthorizationPolicy {
                name: "p".into(),
                ..Default::default()
            }],
            vdags: vec![VDag {
                name: "g".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut back = Bootstrap::default();
        for kind in Kind::PUSH_ORDER {
            for (name, any) in kind.pack(&set) {
                assert_eq!(Kind::from_type_url(&any.type_url), Some(kind));
                assert_eq!(kind.unpack_into(&any, &mut back).unwrap(), name);
            }
        }
        assert_eq!(back, set);
    }

    #[test]
    fn rejects_other_types_and_garbage() {
        let mut set = Bootstrap::default();
        let any = Any {
            type_url: Kind::Listener.type_url().into(),
            value: vec![0xff, 0xff, 0xff].into(),
        };
        assert!(matches!(
            Kind::Cluster.unpack_into(&any, &mut set),
            Err(UnpackError::TypeUrl { .. })
        ));
        assert!(matches!(
            Kind::Listener.unpack_into(&any, &mut set),
            Err(UnpackError::Decode(_))
        ));
        assert_eq!(set, Bootstrap::default());
    }
}
