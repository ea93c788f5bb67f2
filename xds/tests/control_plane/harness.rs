//! A control plane on loopback serving a temporary directory, and scripted
//! xDS clients built on the generated tonic client: each sends requests
//! through a channel and reads responses with a timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gridmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use gridmesh_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use gridmesh_proto::envoy::config::core::v3::Node;
use gridmesh_proto::google::rpc::Status;
use gridmesh_proto::resource::Kind;
use gridmesh_xds::{ClientView, ControlPlane, Options, StatusView, TypeView};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tonic::Streaming;

/// How long a response may take (config changes go through a 30 ms debounce).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "nothing is sent" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

pub const C: &str = "type.googleapis.com/gridmesh.v1.Cluster";
pub const E: &str = "type.googleapis.com/gridmesh.v1.Endpoints";
pub const L: &str = "type.googleapis.com/gridmesh.v1.Listener";
pub const R: &str = "type.googleapis.com/gridmesh.v1.RouteTable";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub control: ControlPlane,
}

impl Harness {
    /// Starts a control plane on a directory holding `files`.
    pub async fn start(files: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let control = ControlPlane::start(options(dir.path()))
            .await
            .expect("control plane starts");
        Harness { dir, control }
    }

    pub fn write(&self, name: &str, text: &str) {
        write(self.dir.path(), name, text);
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove");
    }

    pub async fn delta(&self, node: &str) -> DeltaClient {
        DeltaClient::connect(self.control.xds_addr(), node).await
    }

    pub async fn sotw(&self, node: &str) -> SotwClient {
        SotwClient::connect(self.control.xds_addr(), node).await
    }

    /// `GET /status` over HTTP.
    pub async fn status(&self) -> StatusView {
        let (code, body) = http_get(self.control.admin_addr(), "/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until `/status` satisfies `ok`, and returns it.
    pub async fn status_until(&self, what: &str, ok: impl Fn(&StatusView) -> bool) -> StatusView {
        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let status = self.status().await;
            if ok(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; status: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Harness {
    /// Writes `name` and waits until the control plane has read the change
    /// and served it: `loaded_at` moves on with every accepted read of
    /// changed bytes, even when no resource changed. Silence asserted after
    /// this is about a change the control plane saw.
    pub async fn write_and_wait_loaded(&self, name: &str, text: &str) -> StatusView {
        let before = self.status().await.config.loaded_at;
        self.write(name, text);
        self.status_until(&format!("{name} to be reloaded"), |s| {
            s.config.loaded_at != before
        })
        .await
    }

    /// Waits until no response to `node` waits for an answer: its ACKs and
    /// NACKs so far were read.
    pub async fn settled(&self, node: &str) -> StatusView {
        self.status_until(&format!("{node}'s answers"), |s| {
            let client = client_view(s, node);
            !client.types.is_empty() && client.types.iter().all(|t| t.pending_nonce.is_none())
        })
        .await
    }
}

pub fn options(dir: &Path) -> Options {
    Options {
        config_dir: dir.to_path_buf(),
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
        // Tests rely on change events, not on the periodic re-read.
        resync: Duration::from_secs(3600),
        ca: None,
    }
}

/// Writes atomically (a dotfile renamed into place), as editors and
/// ConfigMap updates do; the dotfile itself must be ignored.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// A minimal HTTP/1.1 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "blocks".to_string(),
        ..Default::default()
    }
}

pub fn error(message: &str) -> Status {
    Status {
        code: 3,
        message: message.to_string(),
        details: Vec::new(),
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect xDS")
}

pub struct DeltaClient {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl DeltaClient {
    pub async fn connect(addr: SocketAddr, node_id: &str) -> DeltaClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let rx = AggregatedDiscoveryServiceClient::new(channel(addr).await)
            .delta_aggregated_resources(requests)
            .await
            .expect("delta stream")
            .into_inner();
        DeltaClient {
            tx,
            rx,
            node: Some(node(node_id)),
        }
    }

    /// Sends a request; the first one carries the node.
    pub fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        request.node = self.node.take();
        self.tx.send(request).expect("stream open");
    }

    pub fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// Subscribes to the wildcard of the four routing kinds (C, E, L, R), in
    /// push order: what most tests serve.
    pub fn subscribe_all(&mut self) {
        for url in [C, E, L, R] {
            self.subscribe(url, &[]);
        }
    }

    pub fn unsubscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_unsubscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    pub fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.ack_nonce(&response.type_url, &response.nonce);
    }

    pub fn ack_nonce(&mut self, type_url: &str, nonce: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        });
    }

    pub fn nack(&mut self, response: &DeltaDiscoveryResponse, message: &str) {
        self.nack_nonce(&response.type_url, &response.nonce, message);
    }

    pub fn nack_nonce(&mut self, type_url: &str, nonce: &str, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: Some(error(message)),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("delta stream ended: {other:?}"),
            Err(_) => panic!("no delta response within {RESPONSE_TIMEOUT:?}"),
        }
    }

    /// Receives `n` responses, acknowledging each.
    pub async fn recv_acked(&mut self, n: usize) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = self.recv().await;
            self.ack(&r);
            out.push(r);
        }
        out
    }

    pub async fn expect_quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}

pub struct SotwClient {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl SotwClient {
    pub async fn connect(addr: SocketAddr, node_id: &str) -> SotwClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let rx = AggregatedDiscoveryServiceClient::new(channel(addr).await)
            .stream_aggregated_resources(requests)
            .await
            .expect("SotW stream")
            .into_inner();
        SotwClient {
            tx,
            rx,
            node: Some(node(node_id)),
        }
    }

    pub fn send(&mut self, mut request: DiscoveryRequest) {
        request.node = self.node.take();
        self.tx.send(request).expect("stream open");
    }

    pub fn request(&mut self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// ACKs `response`, keeping the subscription `names`.
    pub fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// NACKs `response`, reporting `accepted` as the version still applied.
    pub fn nack(&mut self, response: &DiscoveryResponse, accepted: &str, message: &str) {
        self.send(DiscoveryRequest {
            version_info: accepted.into(),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(error(message)),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("SotW stream ended: {other:?}"),
            Err(_) => panic!("no SotW response within {RESPONSE_TIMEOUT:?}"),
        }
    }

    pub async fn expect_quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}

/// Names of the resources in a delta response, sorted.
pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// Names of the resources in a SotW response, decoded, sorted.
pub fn sotw_names(r: &DiscoveryResponse) -> Vec<String> {
    let mut set = gridmesh_proto::config::Bootstrap::default();
    let mut names: Vec<String> = r
        .resources
        .iter()
        .map(|any| {
            let kind = Kind::from_type_url(&any.type_url).expect("known type");
            kind.unpack_into(any, &mut set).expect("decodes")
        })
        .collect();
    names.sort();
    names
}

pub fn removed(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    let mut names: Vec<&str> = r.removed_resources.iter().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// The status of the client with node id `node`.
pub fn client_view<'a>(status: &'a StatusView, node: &str) -> &'a ClientView {
    status
        .clients
        .iter()
        .find(|c| c.node_id == node)
        .unwrap_or_else(|| panic!("no client {node} in {status:#?}"))
}

pub fn type_view<'a>(client: &'a ClientView, kind: &str) -> &'a TypeView {
    client
        .types
        .iter()
        .find(|t| t.kind == kind)
        .unwrap_or_else(|| panic!("no type {kind} in {client:#?}"))
}

impl DeltaClient {
    /// Resolves when the server ends the stream (any further message is
    /// ignored).
    pub async fn closed(&mut self) {
        while let Ok(Some(_)) = self.rx.message().await {}
    }

    /// The error status the server ends the stream with (responses before
    /// it are skipped); panics if the stream ends with OK or stays open.
    pub async fn ended_with_error(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(RESPONSE_TIMEOUT, self.rx.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the stream ended with OK"),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the stream did not end within {RESPONSE_TIMEOUT:?}"),
            }
        }
    }
}
