//! One request-response exchange per protocol, over connections opened once
//! and kept alive, so that the measurements see steady-state proxying rather
//! than connection setup — and, to measure connection setup itself, an
//! exchange that opens a new connection (plaintext or mTLS) every time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use gridmesh_identity::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use gridmesh_proto::testing::EchoRequest;
use gridmesh_proto::testing::echo_client::EchoClient;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// A bound on any single exchange, so a wedged proxy costs an error instead
/// of hanging the benchmark.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// One request and its full response, over a connection owned by the value.
pub trait Exchange: Send + 'static {
    fn exchange(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// [`Exchange::exchange`] bounded by [`EXCHANGE_TIMEOUT`].
pub async fn exchange_in_time<E: Exchange>(exchange: &mut E) -> Result<()> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange.exchange())
        .await
        .unwrap_or_else(|_| bail!("no response within {EXCHANGE_TIMEOUT:?}"))
}

/// mTLS as a workload speaks it: its certificate, the mesh's roots, and the
/// SPIFFE ID the server must present. Sessions are never resumed, so every
/// connection is a full handshake.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    pub fn new(credentials: Credentials, bundle: TrustBundle, server: SpiffeId) -> Self {
        let store = IdentityStore::new();
        store.install(credentials, bundle);
        let mut config = (*store.client_config(server, &[b"http/1.1"])).clone();
        config.resumption = Resumption::disabled();
        Self {
            connector: TlsConnector::from(Arc::new(config)),
        }
    }
}

/// An HTTP/1.1 keep-alive connection posting `payload` to `/echo`.
pub struct Http1Echo {
    address: SocketAddr,
    payload: Bytes,
    tls: Option<TlsClient>,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Http1Echo {
    pub async fn connect(address: SocketAddr, payload: Bytes) -> Result<Self> {
        Http1Echo::connect_with(address, payload, None).await
    }

    /// Over mTLS when `tls` is given.
    pub async fn connect_with(
        address: SocketAddr,
        payload: Bytes,
        tls: Option<TlsClient>,
    ) -> Result<Self> {
        let sender = open_http1(address, tls.as_ref()).await?;
        Ok(Self {
            address,
            payload,
            tls,
            sender,
        })
    }
}

async fn open_http1(
    address: SocketAddr,
    tls: Option<&TlsClient>,
) -> Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        return Ok(sender);
    };
    // The server is verified by its SPIFFE ID; rustls still wants a name.
    let name = ServerName::IpAddress(address.ip().into());
    let stream = tls
        .connector
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {address}"))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Posts `payload` to `/echo` and checks the echo.
async fn post_echo(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    payload: &Bytes,
    close: bool,
) -> Result<()> {
    sender.ready().await?;
    let mut request = Request::post("/echo").header(http::header::HOST, "upstream");
    if close {
        request = request.header(http::header::CONNECTION, "close");
    }
    let response = sender
        .send_request(request.body(Full::new(payload.clone()))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    ensure!(status == StatusCode::OK, "HTTP status {status}");
    ensure!(
        body.len() == payload.len(),
        "echoed {} bytes of {}",
        body.len(),
        payload.len()
    );
    Ok(())
}

impl Exchange for Http1Echo {
    async fn exchange(&mut self) -> Result<()> {
        // A proxy may close a keep-alive connection (e.g. after an error);
        // the next exchange opens a new one rather than failing forever.
        if self.sender.is_closed() {
            self.sender = open_http1(self.address, self.tls.as_ref()).await?;
        }
        post_echo(&mut self.sender, &self.payload, false).await
    }
}

/// A new connection per exchange (with a full mTLS handshake when `tls` is
/// given): connect, one HTTP/1.1 `POST /echo`, close.
pub struct NewConnectionEcho {
    pub address: SocketAddr,
    pub payload: Bytes,
    pub tls: Option<TlsClient>,
}

impl Exchange for NewConnectionEcho {
    async fn exchange(&mut self) -> Result<()> {
        let mut sender = open_http1(self.address, self.tls.as_ref()).await?;
        post_echo(&mut sender, &self.payload, true).await
    }
}

/// A gRPC channel (one HTTP/2 connection) to `address`.
pub async fn grpc_channel(address: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("opening a gRPC channel to {address}"))
}

/// Unary `Echo` calls carrying `payload`; many of these may share a channel.
pub struct GrpcUnaryEcho {
    client: EchoClient<Channel>,
    payload: Bytes,
}

impl GrpcUnaryEcho {
    pub fn new(channel: Channel, payload: Bytes) -> Self {
        Self {
            client: EchoClient::new(channel),
            payload,
        }
    }
}

impl Exchange for GrpcUnaryEcho {
    async fn exchange(&mut self) -> Result<()> {
        let request = EchoRequest {
            payload: self.payload.to_vec(),
            ..Default::default()
        };
        let reply = self.client.unary(request).await?.into_inner();
        if reply.payload.len() != self.payload.len() {
            bail!(
                "echoed {} bytes of {}",
                reply.payload.len(),
                self.payload.len()
            );
        }
        Ok(())
    }
}
