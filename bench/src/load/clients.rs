//! One request-response exchange per protocol, over connections opened once
//! and kept alive, so that the measurements see steady-state proxying rather
//! than connection setup.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use gridmesh_proto::testing::EchoRequest;
use gridmesh_proto::testing::echo_client::EchoClient;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
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

/// An HTTP/1.1 keep-alive connection posting `payload` to `/echo`.
pub struct Http1Echo {
    address: SocketAddr,
    payload: Bytes,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Http1Echo {
    pub async fn connect(address: SocketAddr, payload: Bytes) -> Result<Self> {
        let sender = open_http1(address).await?;
        Ok(Self {
            address,
            payload,
            sender,
        })
    }
}

async fn open_http1(address: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

impl Exchange for Http1Echo {
    async fn exchange(&mut self) -> Result<()> {
        // A proxy may close a keep-alive connection (e.g. after an error);
        // the next exchange opens a new one rather than failing forever.
        if self.sender.is_closed() {
            self.sender = open_http1(self.address).await?;
        }
        self.sender.ready().await?;
        let request = Request::post("/echo")
            .header(http::header::HOST, "upstream")
            .body(Full::new(self.payload.clone()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(status == StatusCode::OK, "HTTP status {status}");
        ensure!(
            body.len() == self.payload.len(),
            "echoed {} bytes of {}",
            body.len(),
            self.payload.len()
        );
        Ok(())
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
