//! The demo's client side: real HTTP/1.1, h2c and gRPC clients sending
//! requests through the client sidecar, checking every answer and tallying
//! latency and which block instance served it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::future::join_all;
use gridmesh_proto::testing::echo_client::EchoClient;
use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// The authority every request names; the client sidecar routes on it.
const AUTHORITY: &str = "echo";
/// The sample block's HTTP endpoint that echoes the request body.
const ECHO_PATH: &str = "/echo";
/// Header in which the sample block names itself.
const UPSTREAM_HEADER: &str = "x-upstream";
/// Header the proxy adds to the errors it creates.
const MESH_ERROR_HEADER: &str = "x-gridmesh-error";
/// Messages per server-streaming call.
const STREAM_MESSAGES: u32 = 5;
const STREAM_PAYLOAD_BYTES: u32 = 64;

/// The kinds of traffic the demo sends, in the order it sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Http1,
    H2c,
    GrpcUnary,
    GrpcServerStream,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Http1,
        Protocol::H2c,
        Protocol::GrpcUnary,
        Protocol::GrpcServerStream,
    ];

    pub fn label(self) -> String {
        match self {
            Protocol::Http1 => "HTTP/1.1".into(),
            Protocol::H2c => "HTTP/2 (h2c)".into(),
            Protocol::GrpcUnary => "gRPC unary".into(),
            Protocol::GrpcServerStream => format!("gRPC stream x{STREAM_MESSAGES}"),
        }
    }
}

/// How one protocol's requests went.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latency of every successful request (a whole stream for streaming calls).
    pub latencies: Vec<Duration>,
    /// Successful requests per block instance that answered.
    pub served_by: BTreeMap<String, u64>,
    /// Failed requests per reason.
    pub failures: BTreeMap<String, u64>,
}

impl Tally {
    pub fn succeeded(&self) -> usize {
        self.latencies.len()
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The latency at `quantile` (0..=1) of successful requests.
    pub fn latency_quantile(&self, quantile: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let rank = (quantile * last as f64).round() as usize;
        Some(sorted[rank.min(last)])
    }

    fn record(&mut self, latency: Duration, outcome: Result<String>) {
        match outcome {
            Ok(server) => {
                self.latencies.push(latency);
                *self.served_by.entry(server).or_default() += 1;
            }
            Err(error) => *self.failures.entry(format!("{error:#}")).or_default() += 1,
        }
    }
}

/// Sends `requests` requests of `protocol` through the listener at `outbound`,
/// `concurrency` at a time.
pub async fn send(
    protocol: Protocol,
    outbound: SocketAddr,
    requests: usize,
    concurrency: usize,
) -> Result<Tally> {
    let tally = match protocol {
        Protocol::Http1 => {
            let clients = (0..concurrency)
                .map(|_| Http1Client::new(outbound))
                .collect();
            drive(
                requests,
                clients,
                async |client: &mut Http1Client, index| client.echo(index).await,
            )
            .await
        }
        Protocol::H2c => {
            // One connection, its streams multiplexed: the way h2 clients behave.
            let connection = connect_h2c(outbound).await?;
            let clients = vec![connection; concurrency];
            drive(requests, clients, async |sender: &mut H2Sender, index| {
                h2c_echo(sender, index).await
            })
            .await
        }
        Protocol::GrpcUnary => {
            let clients = vec![grpc_client(outbound).await?; concurrency];
            drive(requests, clients, grpc_unary).await
        }
        Protocol::GrpcServerStream => {
            let clients = vec![grpc_client(outbound).await?; concurrency];
            drive(requests, clients, grpc_server_stream).await
        }
    };
    Ok(tally)
}

/// Sends `requests` calls, one worker per client, each worker sending its
/// next call as soon as the previous one ends. The workers share one task, so
/// clients need not be `Send`; the connections run on their own tasks.
pub(super) async fn drive<C>(
    requests: usize,
    clients: Vec<C>,
    call: impl AsyncFn(&mut C, usize) -> Result<String>,
) -> Tally {
    let next_index = Cell::new(0);
    let tally = RefCell::new(Tally::default());
    let workers = clients.into_iter().map(|mut client| {
        let (next_index, tally, call) = (&next_index, &tally, &call);
        async move {
            loop {
                let index = next_index.get();
                if index >= requests {
                    break;
                }
                next_index.set(index + 1);
                let started = Instant::now();
                let outcome = call(&mut client, index).await;
                tally.borrow_mut().record(started.elapsed(), outcome);
            }
        }
    });
    join_all(workers).await;
    tally.into_inner()
}

fn payload(index: usize) -> Bytes {
    Bytes::from(format!("gridmesh demo request #{index}"))
}

/// An HTTP/1.1 keep-alive connection, reopened after an error the way a
/// pooling client would.
struct Http1Client {
    outbound: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Http1Client {
    fn new(outbound: SocketAddr) -> Self {
        Http1Client {
            outbound,
            sender: None,
        }
    }

    async fn echo(&mut self, index: usize) -> Result<String> {
        let body = payload(index);
        let request = Request::post(ECHO_PATH)
            .header(hyper::header::HOST, AUTHORITY)
            .body(Full::new(body.clone()))?;
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(self.connect().await?),
        };
        let exchange = async {
            sender.ready().await?;
            anyhow::Ok(sender.send_request(request).await?)
        };
        match exchange.await {
            Ok(response) => check_echo(response, &body).await,
            Err(error) => {
                self.sender = None;
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.outbound)
            .await
            .with_context(|| format!("connecting to {}", self.outbound))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

type H2Sender = http2::SendRequest<Full<Bytes>>;

async fn connect_h2c(outbound: SocketAddr) -> Result<H2Sender> {
    let stream = TcpStream::connect(outbound)
        .await
        .with_context(|| format!("connecting to {outbound}"))?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn h2c_echo(sender: &mut H2Sender, index: usize) -> Result<String> {
    let body = payload(index);
    // HTTP/2 carries the authority in the URI (`:authority`), not in Host.
    let request =
        Request::post(format!("http://{AUTHORITY}{ECHO_PATH}")).body(Full::new(body.clone()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    check_echo(response, &body).await
}

/// Accepts a 200 that echoes `sent`; answers which block served it.
async fn check_echo(response: Response<Incoming>, sent: &Bytes) -> Result<String> {
    let status = response.status();
    let server = header_text(&response, UPSTREAM_HEADER);
    let mesh_error = header_text(&response, MESH_ERROR_HEADER);
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        match mesh_error {
            Some(reason) => bail!("HTTP {status} from the mesh: {reason}"),
            None => bail!("HTTP {status}"),
        }
    }
    ensure!(body == *sent, "the body came back changed");
    server.with_context(|| format!("no {UPSTREAM_HEADER} header in the answer"))
}

fn header_text(response: &Response<Incoming>, name: &str) -> Option<String> {
    let value = response.headers().get(name)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

async fn grpc_client(outbound: SocketAddr) -> Result<EchoClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{outbound}"))?
        .origin(format!("http://{AUTHORITY}").parse()?)
        .connect()
        .await
        .with_context(|| format!("connecting to {outbound}"))?;
    Ok(EchoClient::new(channel))
}

async fn grpc_unary(client: &mut EchoClient<Channel>, index: usize) -> Result<String> {
    let payload = payload(index);
    let reply = client
        .unary(EchoRequest {
            payload: payload.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(describe_status)?
        .into_inner();
    ensure!(reply.payload == payload, "the payload came back changed");
    Ok(reply.server)
}

async fn grpc_server_stream(client: &mut EchoClient<Channel>, _index: usize) -> Result<String> {
    let mut stream = client
        .server_stream(StreamRequest {
            count: STREAM_MESSAGES,
            payload_size: STREAM_PAYLOAD_BYTES,
            interval_ms: 0,
        })
        .await
        .map_err(describe_status)?
        .into_inner();
    let mut servers = Vec::new();
    while let Some(reply) = stream.message().await.map_err(describe_status)? {
        ensure!(
            reply.payload.len() == STREAM_PAYLOAD_BYTES as usize,
            "a message of {} bytes instead of {STREAM_PAYLOAD_BYTES}",
            reply.payload.len()
        );
        servers.push(reply.server);
    }
    ensure!(
        servers.len() == STREAM_MESSAGES as usize,
        "the stream ended after {} of {STREAM_MESSAGES} messages",
        servers.len()
    );
    servers.dedup();
    ensure!(servers.len() == 1, "one stream was answered by {servers:?}");
    Ok(servers.remove(0))
}

fn describe_status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("grpc-status {:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_of(latencies_ms: &[u64]) -> Tally {
        let mut tally = Tally::default();
        for &ms in latencies_ms {
            tally.record(Duration::from_millis(ms), Ok("block-a".into()));
        }
        tally
    }

    #[test]
    fn latency_quantiles_pick_the_nearest_rank() {
        let tally = tally_of(&[5, 1, 4, 2, 3]);
        assert_eq!(tally.latency_quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(tally.latency_quantile(0.5), Some(Duration::from_millis(3)));
        assert_eq!(tally.latency_quantile(1.0), Some(Duration::from_millis(5)));
        assert_eq!(Tally::default().latency_quantile(0.5), None);
    }

    #[test]
    fn failures_are_counted_by_reason_and_kept_out_of_latencies() {
        let mut tally = tally_of(&[1]);
        tally.record(Duration::from_millis(9), Err(anyhow::anyhow!("HTTP 503")));
        tally.record(Duration::from_millis(9), Err(anyhow::anyhow!("HTTP 503")));
        assert_eq!((tally.succeeded(), tally.failed()), (1, 2));
        assert_eq!(tally.failures["HTTP 503"], 2);
        assert_eq!(tally.served_by["block-a"], 1);
        assert_eq!(tally.latency_quantile(1.0), Some(Duration::from_millis(1)));
    }
}
