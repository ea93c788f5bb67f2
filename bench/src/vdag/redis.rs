//! The anchor users have today: a chain carried the way the existing
//! network carries it. Each hop is a gRPC `InferenceProxy.infer` to the next
//! block's shim, which pushes the packet into that block's Redis list
//! (LPUSH) and acks; the block pops it (BLPOP), runs, and calls the next
//! shim; the last block pushes its output into the list the client pops.
//! redis-server (from the distribution's packages) runs on the proxy core:
//! it is the transport under test, as the sidecars are; the shims and
//! blocks run in the benchmark's process, on the load core, as the echo
//! blocks do for the mesh.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridmesh_proto::inference::ModelInferRequest;
use gridmesh_proto::inference_proxy::inference_proxy_client::InferenceProxyClient;
use gridmesh_proto::inference_proxy::inference_proxy_server::{
    InferenceProxy, InferenceProxyServer,
};
use gridmesh_proto::inference_proxy::{InferenceMessage, InferenceRespose};
use gridmesh_tests::ports::ReservedPort;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::echo;
use crate::cgroup::TargetCgroup;
use crate::targets::process::PinnedProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one call, so a lost packet costs an error, not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(20);
const CLOSED: &str = "redis closed the connection";
/// Largest packet a shim takes (the 1 MiB tensors and framing).
const MAX_MESSAGE: usize = 8 << 20;

/// redis-server, pinned, in its own cgroup (its CPU time is the
/// transport's).
pub struct RedisServer {
    pub addr: SocketAddr,
    pub cgroup: TargetCgroup,
    process: PinnedProcess,
    _port: ReservedPort,
}

impl RedisServer {
    pub async fn start(binary: &Path, core: usize, work_dir: &Path) -> Result<RedisServer> {
        let port = ReservedPort::new();
        let addr = port.addr();
        let cgroup = TargetCgroup::create("redis")?;
        let mut command = Command::new(binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            // Memory only: persistence would measure the disk.
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(work_dir);
        let log = work_dir.join("redis-server.log");
        let mut process = PinnedProcess::spawn("redis-server", command, core, &cgroup, &log)?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = process.exit_status() {
                bail!("redis-server exited with {status}\n{}", process.log_tail());
            }
            if let Ok(mut redis) = Redis::connect(addr).await
                && redis.command(&[b"PING"]).await.is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "redis-server did not answer within {READY_TIMEOUT:?}\n{}",
                    process.log_tail()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(RedisServer {
            addr,
            cgroup,
            process,
            _port: port,
        })
    }

    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// One connection speaking RESP, the Redis protocol: a command is an array
/// of bulk strings; the replies this benchmark reads are integers, simple
/// strings and (BLPOP's) an array of two bulk strings.
pub struct Redis {
    stream: BufStream<TcpStream>,
}

enum Reply {
    Simple,
    Integer,
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Redis {
    pub async fn connect(addr: SocketAddr) -> Result<Redis> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Redis {
            stream: BufStream::new(stream),
        })
    }

    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&request).await?;
        self.stream.flush().await?;
        self.reply().await
    }

    async fn reply(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!(CLOSED);
        }
        let line = line.trim_end();
        let (kind, rest) = line.split_at_checked(1).context("an empty reply")?;
        match kind {
            "+" => Ok(Reply::Simple),
            ":" => Ok(Reply::Integer),
            "-" => bail!("redis: {rest}"),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut value = vec![0; len as usize + 2];
                self.stream.read_exact(&mut value).await?;
                value.truncate(len as usize);
                Ok(Reply::Bulk(Some(value)))
            }
            "*" => {
                let len: i64 = rest.parse()?;
                let mut items = Vec::new();
                for _ in 0..len.max(0) {
                    items.push(Box::pin(self.reply()).await?);
                }
                Ok(Reply::Array(items))
            }
            _ => bail!("redis sent {line:?}"),
        }
    }

    pub async fn lpush(&mut self, list: &str, value: &[u8]) -> Result<()> {
        match self.command(&[b"LPUSH", list.as_bytes(), value]).await? {
            Reply::Integer => Ok(()),
            _ => bail!("LPUSH answered with something other than a length"),
        }
    }

    /// Waits for the next value of `list` (BRPOP: LPUSH and BRPOP make a
    /// FIFO queue).
    pub async fn pop(&mut self, list: &str) -> Result<Vec<u8>> {
        match self.command(&[b"BRPOP", list.as_bytes(), b"0"]).await? {
            Reply::Array(mut items) if items.len() == 2 => match items.pop() {
                Some(Reply::Bulk(Some(value))) => Ok(value),
                _ => bail!("BRPOP answered without a value"),
            },
            _ => bail!("BRPOP answered with something other than [list, value]"),
        }
    }
}

/// A block's shim: `InferenceProxy.infer` pushes the packet into the list
/// `x-service-name` names.
struct Shim {
    redis: Mutex<Redis>,
}

#[tonic::async_trait]
impl InferenceProxy for Shim {
    async fn infer(
        &self,
        request: Request<InferenceMessage>,
    ) -> Result<Response<InferenceRespose>, Status> {
        let list = request
            .metadata()
            .get("x-service-name")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("no x-service-name"))?
            .to_string();
        let packet = request.into_inner().rpc_data;
        let pushed = self.redis.lock().await.lpush(&list, &packet).await;
        pushed.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(InferenceRespose { message: true }))
    }
}

/// A chain of `blocks` blocks carried over Redis lists: a shim per block
/// and a worker per block popping its list, running the echo model and
/// calling the next block's shim; the last pushes to the list of the
/// caller the request's `id` names.
pub struct RedisChain {
    redis: SocketAddr,
    first_shim: InferenceProxyClient<Channel>,
}

impl RedisChain {
    pub async fn start(redis: SocketAddr, blocks: usize) -> Result<RedisChain> {
        let mut shims = Vec::new();
        for _ in 0..blocks {
            shims.push(start_shim(redis).await?);
        }
        for block in 0..blocks {
            let next = match shims.get(block + 1) {
                Some(&shim) => Some(shim_client(shim).await?),
                None => None,
            };
            let worker = Worker {
                list: list_name(block),
                next_list: list_name(block + 1),
                next,
                redis: Redis::connect(redis).await?,
                results: Redis::connect(redis).await?,
            };
            tokio::spawn(worker.run());
        }
        Ok(RedisChain {
            redis,
            first_shim: shim_client(shims[0]).await?,
        })
    }

    /// A caller with a results list of its own.
    pub async fn caller(&self, name: &str) -> Result<RedisCaller> {
        Ok(RedisCaller {
            shim: self.first_shim.clone(),
            results: Redis::connect(self.redis).await?,
            list: results_list(name),
            name: name.to_string(),
        })
    }
}

pub struct RedisCaller {
    shim: InferenceProxyClient<Channel>,
    results: Redis,
    list: String,
    name: String,
}

impl RedisCaller {
    /// Sends `request` through the chain and waits for its output.
    pub async fn call(&mut self, request: &ModelInferRequest) -> Result<ModelInferRequest> {
        let mut request = request.clone();
        request.id.clone_from(&self.name);
        let mut call = Request::new(InferenceMessage {
            rpc_data: request.encode_to_vec().into(),
        });
        call.metadata_mut()
            .insert("x-service-name", list_name(0).parse()?);
        self.shim.infer(call).await?;
        let popped = tokio::time::timeout(CALL_TIMEOUT, self.results.pop(&self.list)).await;
        let output = popped.context("no output within the call timeout")??;
        Ok(ModelInferRequest::decode(output.as_slice())?)
    }
}

fn list_name(block: usize) -> String {
    format!("block-{block}")
}

fn results_list(caller: &str) -> String {
    format!("results-{caller}")
}

async fn start_shim(redis: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shim = Shim {
        redis: Mutex::new(Redis::connect(redis).await?),
    };
    let service = InferenceProxyServer::new(shim).max_decoding_message_size(MAX_MESSAGE);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(gridmesh_net::incoming(listener, "redis shim")),
    );
    Ok(addr)
}

async fn shim_client(addr: SocketAddr) -> Result<InferenceProxyClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(InferenceProxyClient::new(channel).max_encoding_message_size(MAX_MESSAGE))
}

struct Worker {
    list: String,
    next_list: String,
    /// The next block's shim; `None` for the last block.
    next: Option<InferenceProxyClient<Channel>>,
    redis: Redis,
    results: Redis,
}

impl Worker {
    async fn run(mut self) {
        match self.work().await {
            // redis-server stopped: the benchmark is over.
            Err(error) if error.to_string() == CLOSED => {}
            Err(error) => eprintln!("redis chain worker {}: {error:#}", self.list),
            Ok(()) => {}
        }
    }

    async fn work(&mut self) -> Result<()> {
        loop {
            let packet = self.redis.pop(&self.list).await?;
            let request = ModelInferRequest::decode(packet.as_slice())?;
            let output = echo::echo(request);
            // The next block's request: this one's outputs as its inputs.
            let next = echo::as_request(output);
            let results = results_list(&next.id);
            let next = next.encode_to_vec();
            match &mut self.next {
                Some(shim) => {
                    let mut call = Request::new(InferenceMessage {
                        rpc_data: next.into(),
                    });
                    call.metadata_mut()
                        .insert("x-service-name", self.next_list.parse()?);
                    shim.infer(call).await?;
                }
                None => self.results.lpush(&results, &next).await?,
            }
        }
    }
}
