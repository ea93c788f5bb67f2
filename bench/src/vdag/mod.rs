//! `gridmesh-bench vdag`: what carrying a vDAG through sidecars costs. The
//! same echo blocks (their model returns its input) are called
//! - **direct**: the client calls each node's block in turn, passing each
//!   output on as the next input (the chain: 3 calls; the diamond: 4);
//! - **vdag**: one call to the origin sidecar, which hands the request to
//!   the entry node's sidecar; each sidecar runs its block and hands the
//!   output on sidecar to sidecar over mTLS; the tail delivers to the origin;
//! - **orchestrated**: the client calls each node in turn through the
//!   origin sidecar (every output comes back through the origin, as in a
//!   design where the origin orchestrates the graph), also over mTLS;
//! - **redis**: the chain carried the way the existing network does it
//!   (redis.rs): gRPC shims pushing into Redis lists, blocks popping.
//!
//! Figures: latency at concurrency 1 (small and 1 MiB tensors), the time a
//! vDAG adds per node over the direct calls, throughput at saturation, and
//! the sidecars' CPU per request. See docs/benchmark.md.

mod echo;
mod mesh;
mod redis;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};
use gridmesh_tests::process::{CargoOutput, GRIDMESH_PROXY, Profile, build_all};
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::install;
use crate::machine::{self, IdleSpinner, MachineInfo, Placement};
use crate::report::table::{number, print_rows};
use crate::results::Summary;
use mesh::{CHAIN_NODES, Mesh, NODES};
use redis::{RedisCaller, RedisChain, RedisServer};

/// The target for the time a vDAG adds per node, at p50 with mTLS.
const TARGET_PER_HOP_US: f64 = 150.0;
/// Elements of the small tensor (FP32): 1 KiB.
const SMALL_ELEMENTS: usize = 256;
/// Elements of the large tensor (FP32): 1 MiB.
const LARGE_ELEMENTS: usize = 256 * 1024;
/// Bound on one call, so a wedged path costs an error, not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest message a client sends or takes.
const MAX_MESSAGE: usize = 8 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: u32,
    /// Calls timed one at a time per path and round, after `warmup` calls.
    pub small_calls: usize,
    pub large_calls: usize,
    pub warmup_calls: usize,
    /// Callers at saturation, and how long they are measured (after as
    /// long again of warm-up).
    pub saturation_callers: usize,
    pub saturation_window: Duration,
}

impl Settings {
    fn new(quick: bool, rounds: Option<u32>) -> Self {
        let full = Settings {
            rounds: 3,
            small_calls: 2000,
            large_calls: 200,
            warmup_calls: 100,
            saturation_callers: 32,
            saturation_window: Duration::from_secs(5),
        };
        let mut settings = match quick {
            true => Settings {
                rounds: 1,
                small_calls: 300,
                large_calls: 30,
                warmup_calls: 20,
                saturation_window: Duration::from_millis(1500),
                ..full
            },
            false => full,
        };
        if let Some(rounds) = rounds {
            settings.rounds = rounds.max(1);
        }
        settings
    }
}

/// The ways a request crosses the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Way {
    DirectChain,
    VdagChain,
    OrchestratedChain,
    RedisChain,
    DirectDiamond,
    VdagDiamond,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::DirectChain => "chain: direct calls",
            Way::VdagChain => "chain: vDAG through sidecars",
            Way::OrchestratedChain => "chain: orchestrated by the origin",
            Way::RedisChain => "chain: Redis lists",
            Way::DirectDiamond => "diamond: direct calls",
            Way::VdagDiamond => "diamond: vDAG through sidecars",
        }
    }
}

/// Latency of one way and payload, per round.
#[derive(Debug, Default, Serialize)]
struct Latency {
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// The sidecars' (or redis-server's) CPU per call.
    transport_cpu_us: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Saturation {
    calls_per_s: Vec<f64>,
    transport_cpu_us: Vec<f64>,
    errors: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    started_at: String,
    revision: Option<String>,
    quick: bool,
    machine: MachineInfo,
    settings: Settings,
    small: BTreeMap<Way, Latency>,
    large: BTreeMap<Way, Latency>,
    saturation: BTreeMap<Way, Saturation>,
    checks: Checks,
}

#[derive(Debug, Serialize)]
struct Checks {
    /// (vDAG chain p50 - direct chain p50) / 3 nodes, per round.
    chain_added_per_node_p50_us: Option<Summary>,
    chain_added_per_node_p99_us: Option<Summary>,
    /// (vDAG diamond p50 - direct diamond p50) / 4 nodes.
    diamond_added_per_node_p50_us: Option<Summary>,
    /// Redis chain p50 - direct chain p50, per node.
    redis_added_per_node_p50_us: Option<Summary>,
    redis_added_per_node_p99_us: Option<Summary>,
    per_node_target: &'static str,
    /// vDAG chain p50 / orchestrated chain p50 with 1 MiB tensors.
    large_vdag_over_orchestrated_p50: Option<Summary>,
    beats_orchestrated: &'static str,
    /// vDAG chain / Redis chain, p50 and p99, small tensors.
    vdag_over_redis_p50: Option<Summary>,
    vdag_over_redis_p99: Option<Summary>,
    beats_redis: &'static str,
}

pub fn run(quick: bool, rounds: Option<u32>, repo: &Path, bench_dir: &Path) -> Result<()> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let settings = Settings::new(quick, rounds);
    // Builds and installs use the whole machine, before any pinning.
    eprintln!("building gridmesh-proxy (release)...");
    let proxy = build_all(Profile::Release, CargoOutput::Progress)?
        .remove(&GRIDMESH_PROXY)
        .context("cargo reported no gridmesh-proxy executable")?;
    let redis_server = install::apt_binary("redis-server", "redis-server")?;
    let placement = Placement::choose()?;
    machine::raise_open_file_limit()?;
    machine::pin_current_thread(placement.load_core)?;
    let raised_priority = machine::raise_priority();
    let work_dir = bench_dir.join("vdag-work");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;

    // Client, echo blocks, shims and Redis workers share the load core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = runtime.block_on(async {
        let blocks = [
            echo::start().await?,
            echo::start().await?,
            echo::start().await?,
            echo::start().await?,
        ];
        let mut mesh = Mesh::start(&proxy, &blocks, placement.proxy_core, &work_dir)?;
        let redis = RedisServer::start(&redis_server, placement.proxy_core, &work_dir).await?;
        let chain = RedisChain::start(redis.addr, CHAIN_NODES).await?;
        let paths = Paths::connect(&blocks, mesh.origin, &chain, "latency").await;
        let paths = match paths {
            Ok(paths) => paths,
            Err(error) => match mesh.exited() {
                Some(exit) => bail!("a sidecar exited: {exit}"),
                None => return Err(error),
            },
        };
        let bench = Bench {
            settings: &settings,
            placement,
            mesh: &mesh,
            redis: &redis,
            chain: &chain,
            blocks: &blocks,
        };
        let measured = bench.measure(paths).await;
        mesh.stop().await;
        redis.stop().await;
        measured
    })?;
    let (small, large, saturation) = measured;
    let checks = checks(&small, &large);
    let report = Report {
        started_at,
        revision: install::workspace_revision(repo),
        quick,
        machine: MachineInfo::read(placement, raised_priority),
        settings,
        small,
        large,
        saturation,
        checks,
    };
    print(&report);
    let path = bench_dir.join(format!("vdag-{}.json", report.started_at.replace(':', "-")));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nfull results: {}", path.display());
    Ok(())
}

type Measured = (
    BTreeMap<Way, Latency>,
    BTreeMap<Way, Latency>,
    BTreeMap<Way, Saturation>,
);

struct Bench<'a> {
    settings: &'a Settings,
    placement: Placement,
    mesh: &'a Mesh,
    redis: &'a RedisServer,
    chain: &'a RedisChain,
    blocks: &'a [SocketAddr; NODES],
}

impl Bench<'_> {
    async fn measure(&self, mut paths: Paths) -> Result<Measured> {
        let s = self.settings;
        let mut small: BTreeMap<Way, Latency> = BTreeMap::new();
        let mut large: BTreeMap<Way, Latency> = BTreeMap::new();
        let mut saturation: BTreeMap<Way, Saturation> = BTreeMap::new();
        let small_request = tensor_request(SMALL_ELEMENTS);
        let large_request = tensor_request(LARGE_ELEMENTS);
        for round in 1..=s.rounds {
            eprintln!("round {round}/{}", s.rounds);
            {
                // Keeps the proxy core out of deep idle between calls.
                let _spinner = IdleSpinner::start(self.placement.proxy_core)?;
                let ways = [
                    Way::DirectChain,
                    Way::VdagChain,
                    Way::OrchestratedChain,
                    Way::RedisChain,
                    Way::DirectDiamond,
                    Way::VdagDiamond,
                ];
                for way in ways {
                    let latency = small.entry(way).or_default();
                    self.latency(&mut paths, way, &small_request, s.small_calls, latency)
                        .await
                        .with_context(|| format!("{}, small tensors", way.label()))?;
                }
                for way in [Way::DirectChain, Way::VdagChain, Way::OrchestratedChain] {
                    let latency = large.entry(way).or_default();
                    self.latency(&mut paths, way, &large_request, s.large_calls, latency)
                        .await
                        .with_context(|| format!("{}, 1 MiB tensors", way.label()))?;
                }
            }
            for way in [
                Way::DirectChain,
                Way::VdagChain,
                Way::OrchestratedChain,
                Way::RedisChain,
            ] {
                let figures = saturation.entry(way).or_default();
                self.saturate(way, &small_request, figures)
                    .await
                    .with_context(|| format!("{} at saturation", way.label()))?;
            }
        }
        Ok((small, large, saturation))
    }

    /// The CPU time of what carries `way`'s calls, besides the blocks.
    fn transport_cpu(&self, way: Way) -> Duration {
        let cgroup = match way {
            Way::RedisChain => &self.redis.cgroup,
            _ => &self.mesh.cgroup,
        };
        cgroup.cpu_time().unwrap_or_default()
    }

    async fn latency(
        &self,
        paths: &mut Paths,
        way: Way,
        request: &ModelInferRequest,
        calls: usize,
        into: &mut Latency,
    ) -> Result<()> {
        for _ in 0..self.settings.warmup_calls {
            paths.call(way, request).await?;
        }
        let mut histogram = Histogram::<u64>::new(3)?;
        let cpu_before = self.transport_cpu(way);
        for _ in 0..calls {
            let started = Instant::now();
            paths.call(way, request).await?;
            histogram.record(started.elapsed().as_micros() as u64)?;
        }
        let cpu = self.transport_cpu(way).saturating_sub(cpu_before);
        into.p50_us.push(histogram.value_at_quantile(0.5) as f64);
        into.p99_us.push(histogram.value_at_quantile(0.99) as f64);
        into.transport_cpu_us
            .push(cpu.as_secs_f64() * 1e6 / calls as f64);
        Ok(())
    }

    /// `saturation_callers` callers, each calling again as soon as its call
    /// is answered; calls answered inside the window count.
    async fn saturate(
        &self,
        way: Way,
        request: &ModelInferRequest,
        into: &mut Saturation,
    ) -> Result<()> {
        let s = self.settings;
        let mut callers = Vec::new();
        for caller in 0..s.saturation_callers {
            let name = format!("caller-{caller}");
            callers.push(Paths::connect(self.blocks, self.mesh.origin, self.chain, &name).await?);
        }
        let warm_until = Instant::now() + s.saturation_window;
        let end = warm_until + s.saturation_window;
        let tasks: Vec<_> = callers
            .into_iter()
            .map(|mut paths| {
                let request = request.clone();
                tokio::spawn(async move {
                    let (mut done, mut errors) = (0u64, 0u64);
                    while Instant::now() < end {
                        let ok = paths.call(way, &request).await.is_ok();
                        let counted = Instant::now();
                        if counted >= warm_until && counted < end {
                            if ok { done += 1 } else { errors += 1 }
                        }
                    }
                    (done, errors)
                })
            })
            .collect();
        tokio::time::sleep_until(warm_until.into()).await;
        let cpu_before = self.transport_cpu(way);
        let mut done = 0;
        for task in tasks {
            let (calls, errors) = task.await?;
            done += calls;
            into.errors += errors;
        }
        // The window's CPU: callers finish within a call of its end.
        let cpu = self.transport_cpu(way).saturating_sub(cpu_before);
        into.calls_per_s
            .push(done as f64 / s.saturation_window.as_secs_f64());
        into.transport_cpu_us
            .push(cpu.as_secs_f64() * 1e6 / done.max(1) as f64);
        Ok(())
    }
}

/// One caller's connections: to each block, to the origin, and its Redis
/// results list.
struct Paths {
    blocks: Vec<GrpcInferenceServiceClient<Channel>>,
    origin: GrpcInferenceServiceClient<Channel>,
    /// The origin, with the authority that routes to each node.
    through_origin: Vec<GrpcInferenceServiceClient<Channel>>,
    redis: RedisCaller,
}

impl Paths {
    /// Connects, then waits until the vDAGs answer (the sidecars started
    /// with the benchmark).
    async fn connect(
        blocks: &[SocketAddr; NODES],
        origin: SocketAddr,
        chain: &RedisChain,
        name: &str,
    ) -> Result<Paths> {
        let mut direct = Vec::new();
        for &block in blocks {
            direct.push(client(block, None).await?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let origin_client = loop {
            match client(origin, None).await {
                Ok(client) => break client,
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut through_origin = Vec::new();
        for n in 1..=NODES {
            through_origin.push(client(origin, Some(&format!("n{n}.node"))).await?);
        }
        let mut paths = Paths {
            blocks: direct,
            origin: origin_client,
            through_origin,
            redis: chain.caller(name).await?,
        };
        let probe = tensor_request(SMALL_ELEMENTS);
        loop {
            match paths.call(Way::VdagDiamond, &probe).await {
                Ok(()) => return Ok(paths),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context("the mesh did not answer a vDAG call"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// One call along `way`; its answer checked against the input.
    async fn call(&mut self, way: Way, request: &ModelInferRequest) -> Result<()> {
        let output = match way {
            Way::DirectChain => sequence(&mut self.blocks[..CHAIN_NODES], request).await?,
            Way::OrchestratedChain => {
                sequence(&mut self.through_origin[..CHAIN_NODES], request).await?
            }
            Way::VdagChain | Way::VdagDiamond => {
                let vdag = if way == Way::VdagChain {
                    "chain"
                } else {
                    "diamond"
                };
                let mut call = tonic::Request::new(request.clone());
                call.metadata_mut().insert("x-gridmesh-vdag", vdag.parse()?);
                call.set_timeout(CALL_TIMEOUT);
                let answer = self.origin.model_infer(call).await?.into_inner();
                echo::as_request(answer)
            }
            Way::RedisChain => self.redis.call(request).await?,
            Way::DirectDiamond => {
                let pre = infer(&mut self.blocks[0], request.clone()).await?;
                let left = infer(&mut self.blocks[1], pre.clone()).await?;
                let right = infer(&mut self.blocks[2], pre).await?;
                let join = joined(left, right);
                infer(&mut self.blocks[3], join).await?
            }
        };
        let expected = match way {
            Way::DirectDiamond | Way::VdagDiamond => 2 * request.raw_input_contents[0].len(),
            _ => request.raw_input_contents[0].len(),
        };
        let got: usize = output.raw_input_contents.iter().map(|b| b.len()).sum();
        ensure!(
            got == expected,
            "{}: {got} bytes back, not {expected}",
            way.label()
        );
        Ok(())
    }
}

async fn client(
    addr: SocketAddr,
    authority: Option<&str>,
) -> Result<GrpcInferenceServiceClient<Channel>> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20);
    if let Some(authority) = authority {
        endpoint = endpoint.origin(format!("http://{authority}").parse()?);
    }
    let channel = endpoint.connect().await?;
    Ok(GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// `request` through `nodes` in turn, each output the next input.
async fn sequence(
    nodes: &mut [GrpcInferenceServiceClient<Channel>],
    request: &ModelInferRequest,
) -> Result<ModelInferRequest> {
    let mut next = request.clone();
    for node in nodes {
        next = infer(node, next).await?;
    }
    Ok(next)
}

/// One ModelInfer; its outputs as the next node's inputs.
async fn infer(
    node: &mut GrpcInferenceServiceClient<Channel>,
    request: ModelInferRequest,
) -> Result<ModelInferRequest> {
    let mut call = tonic::Request::new(request);
    call.set_timeout(CALL_TIMEOUT);
    let answer: ModelInferResponse = node.model_infer(call).await?.into_inner();
    Ok(echo::as_request(answer))
}

/// The diamond's join input: left's `x` as `left`, right's as `right`.
fn joined(left: ModelInferRequest, right: ModelInferRequest) -> ModelInferRequest {
    let mut join = ModelInferRequest {
        model_name: "echo".into(),
        ..Default::default()
    };
    for (name, part) in [("left", left), ("right", right)] {
        for (mut input, raw) in part.inputs.into_iter().zip(part.raw_input_contents) {
            input.name = name.into();
            join.inputs.push(input);
            join.raw_input_contents.push(raw);
        }
    }
    join
}

/// A request with one FP32 tensor `x` of `elements` values, raw.
fn tensor_request(elements: usize) -> ModelInferRequest {
    let raw: Vec<u8> = (0..elements)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: "echo".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, elements as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// Per-round figures of `a` minus `b`, divided by `nodes`.
fn added_per_node(a: &[f64], b: &[f64], nodes: f64) -> Option<Summary> {
    Summary::of(a.iter().zip(b).map(|(a, b)| (a - b) / nodes))
}

fn ratio(a: &[f64], b: &[f64]) -> Option<Summary> {
    Summary::of(a.iter().zip(b).map(|(a, b)| a / b))
}

/// "met" when every round is within `limit`, "missed" when none is,
/// "inconclusive" when the rounds' spread straddles it.
fn verdict(summary: &Option<Summary>, limit: f64) -> &'static str {
    match summary {
        Some(s) if s.max <= limit => "met",
        Some(s) if s.min > limit => "missed",
        Some(_) => "inconclusive",
        None => "not measured",
    }
}

fn latency_of(map: &BTreeMap<Way, Latency>, way: Way) -> Option<&Latency> {
    map.get(&way)
}

fn checks(small: &BTreeMap<Way, Latency>, large: &BTreeMap<Way, Latency>) -> Checks {
    let empty = Latency::default();
    // Every way is measured; a missing one makes its figures None.
    let get = |map, way| latency_of(map, way).unwrap_or(&empty);
    let (direct, vdag) = (get(small, Way::DirectChain), get(small, Way::VdagChain));
    let redis = get(small, Way::RedisChain);
    let chain = CHAIN_NODES as f64;
    let chain_p50 = added_per_node(&vdag.p50_us, &direct.p50_us, chain);
    let (direct_d, vdag_d) = (get(small, Way::DirectDiamond), get(small, Way::VdagDiamond));
    let large_ratio = ratio(
        &get(large, Way::VdagChain).p50_us,
        &get(large, Way::OrchestratedChain).p50_us,
    );
    let redis_p50 = ratio(&vdag.p50_us, &redis.p50_us);
    let redis_p99 = ratio(&vdag.p99_us, &redis.p99_us);
    let beats_redis = match (verdict(&redis_p50, 1.0), verdict(&redis_p99, 1.0)) {
        ("met", "met") => "met",
        ("missed", _) | (_, "missed") => "missed",
        _ => "inconclusive",
    };
    Checks {
        per_node_target: verdict(&chain_p50, TARGET_PER_HOP_US),
        chain_added_per_node_p50_us: chain_p50,
        chain_added_per_node_p99_us: added_per_node(&vdag.p99_us, &direct.p99_us, chain),
        diamond_added_per_node_p50_us: added_per_node(
            &vdag_d.p50_us,
            &direct_d.p50_us,
            NODES as f64,
        ),
        redis_added_per_node_p50_us: added_per_node(&redis.p50_us, &direct.p50_us, chain),
        redis_added_per_node_p99_us: added_per_node(&redis.p99_us, &direct.p99_us, chain),
        beats_orchestrated: verdict(&large_ratio, 1.0),
        large_vdag_over_orchestrated_p50: large_ratio,
        vdag_over_redis_p50: redis_p50,
        vdag_over_redis_p99: redis_p99,
        beats_redis,
    }
}

fn median(values: &[f64]) -> String {
    Summary::of(values.iter().copied()).map_or("-".into(), |s| summary(&s))
}

fn summary(s: &Summary) -> String {
    format!("{} ({:.0}%)", number(s.median), s.spread_pct)
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let header = header.iter().map(|h| h.to_string()).collect();
    print_rows(&[vec![header], rows].concat());
}

fn print(report: &Report) {
    for (title, map) in [
        ("latency at concurrency 1, 1 KiB tensors", &report.small),
        ("latency at concurrency 1, 1 MiB tensors", &report.large),
    ] {
        println!("\n{title} (median of rounds, spread)");
        let rows: Vec<Vec<String>> = map
            .iter()
            .map(|(way, l)| {
                vec![
                    way.label().to_string(),
                    median(&l.p50_us),
                    median(&l.p99_us),
                    median(&l.transport_cpu_us),
                ]
            })
            .collect();
        table(&["path", "p50 us", "p99 us", "transport CPU us/call"], rows);
    }
    println!(
        "\nat saturation ({} callers, 1 KiB tensors)",
        report.settings.saturation_callers
    );
    let rows: Vec<Vec<String>> = report
        .saturation
        .iter()
        .map(|(way, s)| {
            vec![
                way.label().to_string(),
                median(&s.calls_per_s),
                median(&s.transport_cpu_us),
                s.errors.to_string(),
            ]
        })
        .collect();
    table(
        &["path", "calls/s", "transport CPU us/call", "errors"],
        rows,
    );
    let c = &report.checks;
    let show = |s: &Option<Summary>| s.as_ref().map_or("-".into(), summary);
    println!("\nchecks (median of rounds, spread)");
    let rows = vec![
        vec![
            format!("vDAG chain: added per node, p50 (target <= {TARGET_PER_HOP_US} us)"),
            show(&c.chain_added_per_node_p50_us),
            c.per_node_target.into(),
        ],
        vec![
            "vDAG chain: added per node, p99 us".into(),
            show(&c.chain_added_per_node_p99_us),
            String::new(),
        ],
        vec![
            "vDAG diamond: added per node, p50 us".into(),
            show(&c.diamond_added_per_node_p50_us),
            String::new(),
        ],
        vec![
            "Redis chain: added per node, p50 / p99 us".into(),
            format!(
                "{} / {}",
                show(&c.redis_added_per_node_p50_us),
                show(&c.redis_added_per_node_p99_us)
            ),
            String::new(),
        ],
        vec![
            "1 MiB chain: vDAG p50 / orchestrated p50 (< 1)".into(),
            show(&c.large_vdag_over_orchestrated_p50),
            c.beats_orchestrated.into(),
        ],
        vec![
            "vDAG chain / Redis chain, p50 and p99 (< 1)".into(),
            format!(
                "{} / {}",
                show(&c.vdag_over_redis_p50),
                show(&c.vdag_over_redis_p99)
            ),
            c.beats_redis.into(),
        ],
    ];
    table(&["check", "value", "verdict"], rows);
}
