//! A scripted xDS control plane: a real delta ADS server (gRPC over h2c on
//! a real port) whose every stream is handed to the test, which reads the
//! sidecar's requests one by one and decides each response itself. For
//! conformance tests of the sidecar's xDS client, and for measurements that
//! need exact control over what is pushed when.
//!
//! ```ignore
//! let mut cp = ScriptServer::start().await;
//! let proxy = harness::proxy(&format!("xds: {{ address: \"{}\" }}", cp.addr())).await;
//! let mut stream = cp.next_stream().await;
//! let subscriptions = stream.subscriptions().await;
//! stream.serve(&xds_script::parse(CONFIG), "1").await; // every kind, ACKs checked
//! ```
//!
//! Dropping the server (or [`ScriptServer::stop`]) closes the port and cuts
//! every connection at once, like a control plane that crashed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use gridmesh_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use gridmesh_proto::resource::Kind;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::Service;
use tonic::{Request, Response, Status, Streaming};

use gridmesh_net::{AcceptBackoff, accept};

use crate::harness::within_for;
use crate::ports::ReservedPort;

/// How long a script waits for the sidecar's next request by default.
pub const WAIT: Duration = Duration::from_secs(3);

/// A control plane on a real port whose streams the test drives.
pub struct ScriptServer {
    addr: SocketAddr,
    /// Held for the server's life and handed to [`ScriptServer::restart`]:
    /// a stopped server's port refuses connections and nothing else takes it.
    port: ReservedPort,
    streams: mpsc::UnboundedReceiver<ScriptStream>,
    task: JoinHandle<()>,
}

impl ScriptServer {
    /// Serves on a loopback port of its own.
    pub async fn start() -> ScriptServer {
        let port = ReservedPort::new();
        let addr = port.addr();
        let (streams, task) = serve(addr).await;
        ScriptServer {
            addr,
            port,
            streams,
            task,
        }
    }

    /// Closes the port and cuts every connection (as a crash would); the
    /// port stays reserved, refusing connections, for [`Self::restart`].
    pub async fn stop(&mut self) {
        if !self.task.is_finished() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    /// Serves again on the same port, as a restarted control plane does.
    pub async fn restart(&mut self) {
        self.stop().await;
        (self.streams, self.task) = serve(self.port.addr()).await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next stream a sidecar opens (within [`WAIT`]).
    pub async fn next_stream(&mut self) -> ScriptStream {
        self.next_stream_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no xDS stream was opened within {WAIT:?}"))
    }

    /// The next stream, or `None` if none opens within `limit`.
    pub async fn next_stream_within(&mut self, limit: Duration) -> Option<ScriptStream> {
        tokio::time::timeout(limit, self.streams.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Serves the scripted ADS on `addr` until the returned task is aborted.
async fn serve(addr: SocketAddr) -> (mpsc::UnboundedReceiver<ScriptStream>, JoinHandle<()>) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind the scripted control plane on {addr}: {e}"));
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let service = AggregatedDiscoveryServiceServer::new(Script {
        streams: streams_tx,
    });
    let task = tokio::spawn(async move {
        // Owned here, so aborting this task cuts every connection.
        let mut connections = JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        loop {
            tokio::select! {
                (stream, _) = accept(&listener, &mut backoff, "scripted control plane") => {
                    let service = service.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let mut service = service.clone();
                            async move { service.call(req).await }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .http2_only()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    (streams, task)
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One delta ADS stream, from the server's side.
pub struct ScriptStream {
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Nonces unique across streams and servers in one test process.
static NONCE: AtomicU64 = AtomicU64::new(1);

impl ScriptStream {
    /// The sidecar's next request (panics if none comes within [`WAIT`]
    /// or the stream ended).
    pub async fn recv(&mut self) -> DeltaDiscoveryRequest {
        within_for(WAIT, "the sidecar's next xDS request", self.requests.recv())
            .await
            .expect("the sidecar closed the xDS stream")
    }

    /// The next request if one comes within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<DeltaDiscoveryRequest> {
        tokio::time::timeout(limit, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// The subscription requests a stream opens with, one per kind.
    pub async fn subscriptions(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = Vec::new();
        for _ in Kind::PUSH_ORDER {
            requests.push(self.recv().await);
        }
        requests
    }

    /// Sends a response as is.
    pub fn send(&self, response: DeltaDiscoveryResponse) {
        let _ = self.responses.send(Ok(response));
    }

    /// Sends `resources` and `removed` of `kind` under a fresh nonce; returns it.
    pub fn push(&self, kind: Kind, resources: Vec<Resource>, removed: &[&str]) -> String {
        self.push_type(kind.type_url(), resources, removed)
    }

    /// [`ScriptStream::push`] with any type URL.
    pub fn push_type(&self, type_url: &str, resources: Vec<Resource>, removed: &[&str]) -> String {
        let nonce = format!("nonce-{}", NONCE.fetch_add(1, Ordering::Relaxed));
        self.send(DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.clone(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        nonce
    }

    /// Reads the reply to `nonce` and checks it is an ACK.
    pub async fn ack(&mut self, nonce: &str) -> DeltaDiscoveryRequest {
        let reply = self.recv().await;
        assert_eq!(
            reply.response_nonce, nonce,
            "reply to the wrong response: {reply:?}"
        );
        assert!(
            reply.error_detail.is_none(),
            "expected an ACK for {nonce}, got a NACK: {:?}",
            reply.error_detail
        );
        reply
    }

    /// Reads the reply to `nonce`, checks it is a NACK (code 3), and returns
    /// its message.
    pub async fn nack(&mut self, nonce: &str) -> String {
        let reply = self.recv().await;
        assert_eq!(
            reply.response_nonce, nonce,
            "reply to the wrong response: {reply:?}"
        );
        let status = reply
            .error_detail
            .unwrap_or_else(|| panic!("expected a NACK for {nonce}, got an ACK"));
        assert_eq!(status.code, 3, "a NACK is INVALID_ARGUMENT: {status:?}");
        status.message
    }

    /// Pushes every kind of `set` in the xDS order, each at `version`, and
    /// checks each is ACKed.
    pub async fn serve(&mut self, set: &Bootstrap, version: &str) {
        for kind in Kind::PUSH_ORDER {
            let nonce = self.push(kind, resources(kind, set, version), &[]);
            self.ack(&nonce).await;
        }
    }

    /// Ends the stream with an error status.
    pub fn cut(self, status: Status) {
        let _ = self.responses.send(Err(status));
    }

    /// Ends the stream with OK.
    pub fn end(self) {}
}

/// Parses resources written as bootstrap YAML.
pub fn parse(yaml: &str) -> Bootstrap {
    gridmesh_config::parse_bootstrap(yaml, "script")
        .unwrap_or_else(|e| panic!("{e}\n--- yaml ---\n{yaml}"))
}

/// Every resource of `kind` in `set`, packed, at `version`.
pub fn resources(kind: Kind, set: &Bootstrap, version: &str) -> Vec<Resource> {
    kind.pack(set)
        .into_iter()
        .map(|(name, any)| Resource {
            name,
            version: version.into(),
            resource: Some(any),
            ..Default::default()
        })
        .collect()
}

/// The resources of `kind` in bootstrap YAML, packed, at `version`.
pub fn resources_yaml(kind: Kind, yaml: &str, version: &str) -> Vec<Resource> {
    resources(kind, &parse(yaml), version)
}

struct Script {
    streams: mpsc::UnboundedSender<ScriptStream>,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Script {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the scripted control plane speaks delta only",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (responses, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                if requests_tx.send(request).is_err() {
                    break;
                }
            }
        });
        self.streams
            .send(ScriptStream {
                requests,
                responses,
            })
            .map_err(|_| Status::unavailable("the test stopped listening"))?;
        // An error item ends the stream (with that status).
        let stream = futures_util::stream::unfold(Some(outgoing), |rx| async move {
            let mut rx = rx?;
            let item = rx.recv().await?;
            let rest = item.is_ok().then_some(rx);
            Some((item, rest))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
