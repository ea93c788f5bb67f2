//! Who is connected and where each stream stands, for `GET /status`.
//!
//! Each stream task owns its protocol state and copies what an operator
//! needs into its [`ClientView`] after every event; the admin server only
//! reads the views. The lock is per client, so streams never contend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use gridmesh_proto::envoy::config::core::v3::Node;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Delta,
    Sotw,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Delta => "delta",
            Protocol::Sotw => "sotw",
        }
    }
}

/// One xDS stream (a sidecar) as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    /// The stream's id in this control plane's life.
    pub stream: u64,
    pub node_id: String,
    pub cluster: String,
    pub metadata: serde_json::Value,
    pub peer: Option<String>,
    pub connected_at: String,
    pub protocol: Protocol,
    /// The resource types it subscribed to, in push order.
    pub types: Vec<TypeView>,
    /// Type URLs it asked for that this control plane does not serve.
    pub unknown_types: Vec<String>,
}

/// Where one type stands on one stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TypeView {
    /// The kind's label (`cluster`, `endpoints`, `listener`, `routeTable`).
    #[serde(rename = "type")]
    pub kind: String,
    pub subscribed: Subscribed,
    /// SotW: the last `version_info` the client acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_version: Option<String>,
    /// Delta: how many resources the client holds as far as the control
    /// plane knows (sent, or reported in `initial_resource_versions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<usize>,
    /// Delta: how many of those were held when the client last acknowledged
    /// the latest response (equal to `held` when nothing is pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<usize>,
    pub last_nonce_sent: Option<String>,
    /// The latest response's nonce until the client answers it.
    pub pending_nonce: Option<String>,
    pub last_nack: Option<Nack>,
    /// The client's answer to the latest response it answered was a NACK:
    /// it runs on older config for this type until the next change.
    #[serde(default)]
    pub rejected: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub wildcard: bool,
    /// The first [`Subscribed::SHOWN`] names, in name order: a stream may
    /// name up to 100,000, and copying them all after every request would
    /// make each request cost what the stream holds.
    pub names: Vec<String>,
    /// How many names are subscribed in all.
    #[serde(default)]
    pub count: usize,
}

impl Subscribed {
    pub const SHOWN: usize = 64;

    pub fn of<'a>(wildcard: bool, names: impl ExactSizeIterator<Item = &'a str>) -> Subscribed {
        Subscribed {
            wildcard,
            count: names.len(),
            names: names.take(Self::SHOWN).map(str::to_string).collect(),
        }
    }
}

/// A response the client rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    pub nonce: String,
    /// The gRPC status code in `error_detail`.
    pub code: i32,
    pub message: String,
    pub at: String,
}

/// Every connected stream.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<Mutex<ClientView>>>>,
}

impl Registry {
    /// Registers a new stream; it is removed when the handle drops.
    pub fn add(self: &Arc<Self>, protocol: Protocol, peer: Option<SocketAddr>) -> ClientHandle {
        let stream = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let view = Arc::new(Mutex::new(ClientView {
            stream,
            node_id: String::new(),
            cluster: String::new(),
            metadata: serde_json::Value::Null,
            peer: peer.map(|p| p.to_string()),
            connected_at: timestamp(SystemTime::now()),
            protocol,
            types: Vec::new(),
            unknown_types: Vec::new(),
        }));
        lock(&self.clients).insert(stream, view.clone());
        ClientHandle {
            registry: self.clone(),
            stream,
            view,
        }
    }

    /// A copy of every client's view, in connection order.
    pub fn list(&self) -> Vec<ClientView> {
        let clients: Vec<_> = lock(&self.clients).values().cloned().collect();
        clients.iter().map(|c| lock(c).clone()).collect()
    }
}

pub struct ClientHandle {
    registry: Arc<Registry>,
    stream: u64,
    view: Arc<Mutex<ClientView>>,
}

impl ClientHandle {
    pub fn stream(&self) -> u64 {
        self.stream
    }

    pub fn node_id(&self) -> String {
        lock(&self.view).node_id.clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut ClientView)) {
        f(&mut lock(&self.view));
    }

    /// Records the node, which only the first request must carry.
    pub fn set_node(&self, node: &Node) {
        let metadata = node
            .metadata
            .as_ref()
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(serde_json::Value::Null);
        self.update(|v| {
            v.node_id = node.id.clone();
            v.cluster = node.cluster.clone();
            v.metadata = metadata;
        });
    }

    pub fn unknown_type(&self, type_url: &str) -> bool {
        let mut added = false;
        self.update(|v| {
            if !v.unknown_types.iter().any(|t| t == type_url) {
                v.unknown_types.push(type_url.to_string());
                added = true;
            }
        });
        added
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        lock(&self.registry.clients).remove(&self.stream);
    }
}

/// A panicking stream task must not take `/status` down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
