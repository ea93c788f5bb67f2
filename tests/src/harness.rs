//! The in-process harness for end-to-end tests: a real [`Proxy`] started in
//! the test's runtime from YAML, real upstreams on real sockets, and real
//! clients (hyper HTTP/1.1 and h2c, tonic gRPC, raw TCP for malformed input).
//!
//! ```ignore
//! let upstream = harness::upstream("a").await;
//! let proxy = harness::proxy(&harness::render(
//!     r#"
//! listeners:
//!   - { name: in, address: "127.0.0.1:0", routeTable: rt }
//! routeTables:
//!   - name: rt
//!     virtualHosts:
//!       - { name: all, domains: ["*"], routes: [{ route: { cluster: up } }] }
//! clusters: [{ name: up }]
//! endpoints: [{ cluster: up, endpoints: ${up} }]
//! "#,
//!     &[("up", &harness::endpoints(&[upstream.local_addr()]))],
//! ))
//! .await;
//! let reply = harness::http1_client().get(proxy.addr("in"), "echo", "/echo").await;
//! ```
//!
//! Everything that waits is bounded by [`TIMEOUT`] (see [`within`]), so a hang
//! fails the test quickly instead of blocking CI.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gridmesh_net::{AcceptBackoff, accept};
use gridmesh_proto::testing::echo_client::EchoClient;
use gridmesh_proxy::Proxy;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::prometheus;
use crate::upstream::{self, UpstreamHandle};

pub use gridmesh_proxy::ERROR_HEADER;

/// Upper bound for anything a test waits on.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request body type of the harness clients: anything, streamed or not.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Awaits `future`, panicking with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(TIMEOUT, what, future).await
}

/// Awaits `future`, panicking with `what` if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Reads a gRPC response stream until it ends with an error status, within
/// [`TIMEOUT`]; returns how many messages arrived first and the status.
/// Panics if the stream ends with OK: these tests expect it to be cut.
pub async fn ended_with_status<T>(
    what: &str,
    stream: &mut tonic::Streaming<T>,
) -> (usize, tonic::Status) {
    within(what, async {
        let mut received = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Err(status) => return (received, status),
                Ok(None) => panic!("{what}: the stream ended with OK"),
            }
        }
    })
    .await
}

/// Logs to the test output when `RUST_LOG` is set (e.g.
/// `RUST_LOG=gridmesh_proxy=debug`); safe to call from every test.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

// ------------------------------------------------------------------ config

/// Replaces every `${name}` in `template` with its value; panics on a
/// placeholder without a value (a typo in a test).
pub fn render(template: &str, vars: &[(&str, &dyn Display)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), &value.to_string());
    }
    if let Some(start) = out.find("${") {
        let end = out[start..].find('}').map_or(out.len(), |e| start + e + 1);
        panic!(
            "render: no value for {} in template:\n{template}",
            &out[start..end]
        );
    }
    out
}

/// A YAML flow list of endpoints, e.g. `[{ address: "127.0.0.1:4000" }]`.
pub fn endpoints(addrs: &[SocketAddr]) -> String {
    weighted_endpoints(&addrs.iter().map(|a| (*a, 1)).collect::<Vec<_>>())
}

/// A YAML flow list of endpoints with weights.
pub fn weighted_endpoints(addrs: &[(SocketAddr, u32)]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|(a, w)| format!("{{ address: \"{a}\", weight: {w} }}"))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The simplest useful proxy config: listener `in` (AUTO protocol), every
/// request to cluster `up` with these endpoints.
pub fn forward_all(upstreams: &[SocketAddr]) -> String {
    render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up } }]
clusters: [{ name: up, connectTimeout: 1s }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("up", &endpoints(upstreams))],
    )
}

/// Two sidecars in a row, as in the mesh: a client's outbound sidecar
/// (listener `out`) forwards everything to a block's inbound sidecar
/// (listener `in`), which forwards to `upstream`.
pub struct Chain {
    pub outbound: TestProxy,
    pub inbound: TestProxy,
}

impl Chain {
    /// Where a client sends: the outbound sidecar's listener.
    pub fn entry(&self) -> SocketAddr {
        self.outbound.addr("out")
    }
}

pub async fn chain(upstream: SocketAddr) -> Chain {
    let hop = r#"
listeners:
  - { name: ${listener}, address: "127.0.0.1:0", direction: ${direction}, routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: next } }]
clusters: [{ name: next, connectTimeout: 1s }]
endpoints: [{ cluster: next, endpoints: ${next} }]
"#;
    let inbound = proxy(&render(
        hop,
        &[
            ("listener", &"in"),
            ("direction", &"INBOUND"),
            ("next", &endpoints(&[upstream])),
        ],
    ))
    .await;
    let outbound = proxy(&render(
        hop,
        &[
            ("listener", &"out"),
            ("direction", &"OUTBOUND"),
            ("next", &endpoints(&[inbound.addr("in")])),
        ],
    ))
    .await;
    Chain { outbound, inbound }
}

// ------------------------------------------------------------------- proxy

/// A proxy running in this process. Dropping it starts draining (it cannot
/// wait in `Drop`); [`TestProxy::shutdown`] drains and waits.
pub struct TestProxy {
    proxy: Option<Proxy>,
}

/// Parses, validates and starts a proxy. Panics with the configuration error
/// text if the YAML is invalid. When the YAML names no admin address the
/// admin server takes a free port (not 15000), so tests can run in parallel.
pub async fn proxy(yaml: &str) -> TestProxy {
    proxy_with_filters(yaml, Vec::new()).await
}

/// [`proxy`] with `filters` on every listener, in order.
pub async fn proxy_with_filters(
    yaml: &str,
    filters: Vec<Arc<dyn gridmesh_proxy::FilterFactory>>,
) -> TestProxy {
    init_tracing();
    let builder = filters
        .into_iter()
        .fold(Proxy::builder(snapshot(yaml)), |builder, filter| {
            builder.filter(filter)
        });
    let proxy = builder
        .start()
        .await
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    TestProxy { proxy: Some(proxy) }
}

/// Parses and validates bootstrap YAML as [`proxy`] does, without starting it.
pub fn snapshot(yaml: &str) -> gridmesh_config::Snapshot {
    use gridmesh_config as config;
    let source = "test.yaml";
    let mut bootstrap = config::parse_bootstrap(yaml, source)
        .unwrap_or_else(|e| panic!("{e}\n--- yaml ---\n{yaml}"));
    let admin = bootstrap.admin.get_or_insert_with(Default::default);
    if admin.address.is_empty() {
        admin.address = "127.0.0.1:0".into();
    }
    config::build_snapshot(bootstrap, source)
        .unwrap_or_else(|e| panic!("{e}\n--- yaml ---\n{yaml}"))
}

impl TestProxy {
    /// The bound address of a listener; panics if there is no such listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listener_addr(listener)
            .unwrap_or_else(|| panic!("the proxy has no listener named {listener:?}"))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin_addr()
    }

    /// GET on the admin server: status and body text.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        self.admin_request(Method::GET, path).await
    }

    /// POST on the admin server: status and body text.
    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        self.admin_request(Method::POST, path).await
    }

    async fn admin_request(&self, method: Method, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "admin")
            .body(empty())
            .expect("valid admin request");
        let reply = http1_client().request(self.admin(), req).await;
        (reply.status, reply.text())
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, StatusCode::OK, "/metrics: {text}");
        text
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `metric("gridmesh_requests_total", &[("listener", "in")])`; `None`
    /// when there is no such series.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        prometheus::value(&self.metrics().await, name, labels)
    }

    /// Drains and waits until the proxy has stopped (bounded by [`TIMEOUT`]
    /// plus the drain timeout is the caller's business: this waits [`TIMEOUT`]).
    pub async fn shutdown(mut self) {
        let proxy = self.proxy.take().expect("not yet stopped");
        proxy.drain();
        within("proxy to stop after drain", proxy.stopped()).await;
    }

    /// Gives up the harness wrapper, e.g. to call [`Proxy::stopped`].
    pub fn into_inner(mut self) -> Proxy {
        self.proxy.take().expect("not yet stopped")
    }
}

impl std::ops::Deref for TestProxy {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        self.proxy.as_ref().expect("not yet stopped")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(proxy) = &self.proxy {
            proxy.drain();
        }
    }
}

// --------------------------------------------------------------- upstreams

/// The sample upstream ([`crate::upstream`]) on a free loopback port.
pub async fn upstream(name: &str) -> UpstreamHandle {
    upstream::spawn("127.0.0.1:0".parse().unwrap(), name)
        .await
        .expect("bind the sample upstream")
}

/// What a [`RecordingUpstream`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An upstream (HTTP/1.1 and h2c) that records every request as it arrived,
/// headers included: for what the sample upstream does not echo (hop-by-hop
/// headers, `grpc-timeout`, `:authority`). It answers 200 `ok`; gRPC requests
/// get a trailers-only `grpc-status: 0`.
pub struct RecordingUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

pub async fn recording_upstream() -> RecordingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let (stream, _) = accept(&listener, &mut backoff, "recording upstream").await;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let grpc = parts
                                .headers
                                .get(http::header::CONTENT_TYPE)
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                            seen.lock().unwrap().push(Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            });
                            let mut rsp = Response::new(Full::new(Bytes::from_static(if grpc {
                                b""
                            } else {
                                b"ok"
                            })));
                            if grpc {
                                let h = rsp.headers_mut();
                                h.insert(
                                    http::header::CONTENT_TYPE,
                                    HeaderValue::from_static("application/grpc"),
                                );
                                h.insert("grpc-status", HeaderValue::from_static("0"));
                            }
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    RecordingUpstream { addr, seen, task }
}

impl RecordingUpstream {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The most recent request; panics if there was none.
    pub fn last(&self) -> Seen {
        self.seen()
            .pop()
            .expect("the recording upstream has seen no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------ HTTP clients

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request body the test writes while it is being sent: data frames,
/// trailers, or an abort through the sender.
pub fn streaming_body() -> (http_body_util::channel::Sender<Bytes, BoxError>, Body) {
    let (tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(16);
    (tx, body.boxed_unsync())
}

/// A GET for `path` with `authority` as its Host / `:authority`.
pub fn get(authority: &str, path: &str) -> Request<Body> {
    Request::get(path)
        .header(HOST, authority)
        .body(empty())
        .expect("valid request")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The proxy's `x-gridmesh-error` reason, if the proxy made this reply.
    pub fn error(&self) -> Option<&str> {
        self.header(ERROR_HEADER)
    }

    /// Which sample upstream answered (`x-upstream`).
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }
}

/// Reads a response to its end, trailers included.
pub async fn collect(rsp: Response<Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = rsp.into_parts();
    let collected = within("response body", body.collect()).await?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Which protocol an [`HttpClient`] speaks (cleartext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// A client that sends to any address with any authority. Each `request`
/// / `send` uses a fresh connection; [`HttpClient::connect`] gives one to reuse.
#[derive(Debug, Clone, Copy)]
pub struct HttpClient {
    pub protocol: Protocol,
}

pub fn http1_client() -> HttpClient {
    HttpClient {
        protocol: Protocol::Http1,
    }
}

pub fn h2c_client() -> HttpClient {
    HttpClient {
        protocol: Protocol::H2c,
    }
}

impl HttpClient {
    /// Opens a connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Conn {
        self.try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} ({:?}): {e}", self.protocol))
    }

    pub async fn try_connect(&self, addr: SocketAddr) -> Result<Conn, BoxError> {
        let stream = within("TCP connect", TcpStream::connect(addr)).await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        // The connection task ends by itself once every handle is dropped
        // and the last response body has been read (or dropped).
        let sender = match self.protocol {
            Protocol::Http1 => {
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                Sender::Http1(sender)
            }
            Protocol::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .handshake(io)
                    .await?;
                tokio::spawn(conn);
                Sender::Http2(sender)
            }
        };
        Ok(Conn { addr, sender })
    }

    /// Sends on a fresh connection; the response body streams.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut conn = self.try_connect(addr).await?;
        conn.send(req).await
    }

    /// Sends on a fresh connection and reads the whole response; panics on a
    /// transport error (use [`HttpClient::send`] to see those).
    pub async fn request(&self, addr: SocketAddr, req: Request<Body>) -> Reply {
        let mut conn = self.connect(addr).await;
        let what = format!("{} {}", req.method(), req.uri());
        let rsp = conn
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{what} via {addr}: {e}"));
        collect(rsp)
            .await
            .unwrap_or_else(|e| panic!("{what} via {addr}: body: {e}"))
    }

    /// GET `path` with `authority`, read to the end.
    pub async fn get(&self, addr: SocketAddr, authority: &str, path: &str) -> Reply {
        self.request(addr, get(authority, path)).await
    }
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// One client connection. HTTP/1.1 sends one request at a time; for HTTP/2,
/// [`Conn::stream`] gives another handle for concurrent streams.
pub struct Conn {
    addr: SocketAddr,
    sender: Sender,
}

impl Conn {
    /// Another handle on the same HTTP/2 connection (for concurrent streams).
    pub fn stream(&self) -> Conn {
        match &self.sender {
            Sender::Http2(s) => Conn {
                addr: self.addr,
                sender: Sender::Http2(s.clone()),
            },
            Sender::Http1(_) => panic!("HTTP/1.1 connections carry one request at a time"),
        }
    }

    /// Resolves once the peer has closed the connection (bounded by
    /// [`TIMEOUT`]).
    pub async fn closed(&self) {
        within("the connection to close", async {
            loop {
                let closed = match &self.sender {
                    Sender::Http1(s) => s.is_closed(),
                    Sender::Http2(s) => s.is_closed(),
                };
                if closed {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Sends a request and waits (bounded) for the response head. The
    /// request's authority comes from its URI or `Host` header (default: the
    /// address); the URI is put in the form the protocol expects (origin-form
    /// plus Host for HTTP/1.1, `:authority` for HTTP/2).
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let authority: Authority = match parts.uri.authority() {
            Some(a) => a.clone(),
            None => match parts.headers.get(HOST) {
                Some(h) => Authority::try_from(h.as_bytes())?,
                None => Authority::try_from(self.addr.to_string())?,
            },
        };
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let rsp = match &mut self.sender {
            Sender::Http1(sender) => {
                if !parts.headers.contains_key(HOST) {
                    parts
                        .headers
                        .insert(HOST, HeaderValue::from_str(authority.as_str())?);
                }
                parts.uri = Uri::from(path);
                parts.version = Version::HTTP_11;
                within("HTTP/1.1 connection ready", sender.ready()).await?;
                let future = sender.send_request(Request::from_parts(parts, body));
                within("response headers", future).await?
            }
            Sender::Http2(sender) => {
                parts.headers.remove(HOST);
                parts.uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(path)
                    .build()?;
                parts.version = Version::HTTP_2;
                within("HTTP/2 connection ready", sender.ready()).await?;
                let future = sender.send_request(Request::from_parts(parts, body));
                within("response headers", future).await?
            }
        };
        Ok(rsp)
    }
}

// ------------------------------------------------------------------- gRPC

/// A tonic channel to `addr` whose requests carry `:authority: <authority>`.
pub async fn grpc_channel(addr: SocketAddr, authority: &str) -> Channel {
    let origin: Uri = format!("http://{authority}")
        .parse()
        .unwrap_or_else(|e| panic!("authority {authority:?}: {e}"));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint uri")
        .origin(origin)
        .connect_timeout(Duration::from_secs(2))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .tcp_nodelay(true);
    within("gRPC connect", endpoint.connect())
        .await
        .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"))
}

/// The `gridmesh.testing.v1.Echo` client over [`grpc_channel`].
pub async fn grpc_echo_client(addr: SocketAddr, authority: &str) -> EchoClient<Channel> {
    EchoClient::new(grpc_channel(addr, authority).await)
}

// ---------------------------------------------------------------- raw TCP

/// Writes `bytes` on a new connection and returns what comes back: the first
/// complete response (by Content-Length or chunked end), or everything up to
/// the peer closing. Panics if neither happens within [`TIMEOUT`].
pub async fn raw_http1(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> String {
    let mut stream = within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(bytes.as_ref()).await.expect("write");
    let mut buf = Vec::new();
    within("raw HTTP/1.1 response", async {
        let mut chunk = [0u8; 8192];
        loop {
            if response_complete(&buf) {
                break;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Writes `bytes` and reads until the peer closes the connection (bounded by
/// [`TIMEOUT`]): for checking that nothing else follows a response.
pub async fn raw_http1_until_close(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> String {
    let mut stream = within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(bytes.as_ref()).await.expect("write");
    let mut buf = Vec::new();
    within("the proxy to close the connection", async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = &buf[head_end + 4..];
    let headers: HashMap<&str, &str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    if let Some(len) = headers.get("content-length") {
        return len.parse::<usize>().is_ok_and(|len| body.len() >= len);
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        return body.windows(5).any(|w| w == b"0\r\n\r\n");
    }
    false
}

/// The status code of a raw HTTP/1.1 response (`HTTP/1.1 400 ...`).
pub fn raw_status(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}
