//! `gridmesh-bench block`: the block server (`gridmesh-block`) under
//! closed-loop load at increasing concurrency, with the dynamic batcher and
//! without it, and the targets: with batching, at least 4x the
//! batch-1 throughput on the CNN at concurrency 32 (stated for a GPU), and
//! queue p99 within `max_queue_delay` plus one batch's compute.
//! See docs/benchmark.md.

mod client;
mod cpus;
mod scrape;
mod server;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::{self, IdleSpinner, MachineInfo, Placement};
use crate::procfs::{BackgroundLoad, ProcessTree};
use crate::report::table::{number, print_rows};
use crate::results::Summary;
use cpus::Split;
use scrape::{BucketQuantile, ServerSide, Snapshot};
use server::{BATCHING_MODEL, BlockServer, DeviceInfo, ModelInfo, NO_BATCHING_MODEL};

/// Concurrency at which the issue states the throughput target.
const TARGET_CONCURRENCY: usize = 32;
const TARGET_SPEEDUP: f64 = 4.0;
/// Background load above which a level's figures are flagged.
const NOISY_BACKGROUND_CORES: f64 = 0.1;

/// Command-line choices of `gridmesh-bench block`.
pub struct Options {
    pub quick: bool,
    pub rounds: Option<u32>,
    pub torch_threads: Option<usize>,
    pub concurrency: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: u32,
    pub concurrency: Vec<usize>,
    /// Unmeasured load at each level before its window.
    pub level_warmup: Duration,
    pub level_duration: Duration,
    /// After each server start, per model: load at the highest concurrency,
    /// then at 1, so TorchScript's first (profiling) forwards and the first
    /// forwards of each batch size are behind us.
    pub server_warmup: Duration,
    /// HTTP/2 connections: min(concurrency, this).
    pub max_connections: usize,
    /// libtorch intra-op threads of the server (`--torch-threads`).
    pub torch_threads: usize,
}

impl Settings {
    fn full(server_cores: usize) -> Self {
        Self {
            rounds: 3,
            concurrency: vec![1, 4, 8, 16, 32, 64],
            level_warmup: Duration::from_secs(1),
            level_duration: Duration::from_secs(5),
            server_warmup: Duration::from_secs(3),
            max_connections: client::MAX_CONNECTIONS,
            torch_threads: server_cores,
        }
    }

    fn quick(server_cores: usize) -> Self {
        Self {
            rounds: 1,
            level_warmup: Duration::from_millis(300),
            level_duration: Duration::from_millis(1500),
            server_warmup: Duration::from_secs(1),
            ..Self::full(server_cores)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `cnn`: dynamic_batching as make_test_models.py configures it.
    Batching,
    /// `cnn_nobatch`: no dynamic_batching, each request a forward of its own
    /// (the batch-1 baseline).
    NoBatching,
}

impl Mode {
    fn model(self) -> &'static str {
        match self {
            Mode::Batching => BATCHING_MODEL,
            Mode::NoBatching => NO_BATCHING_MODEL,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Batching => "batching",
            Mode::NoBatching => "no batching",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One level (mode, concurrency) in one round.
#[derive(Debug, Clone, Serialize)]
pub struct LevelRound {
    pub round: u32,
    pub throughput_rps: f64,
    pub completed: u64,
    pub latency_ms: LatencyMs,
    pub errors: u64,
    pub first_error: Option<String>,
    pub server: ServerSide,
    pub server_cpu_us_per_request: f64,
    /// Cores' worth of CPU the server and the client used in the window.
    pub server_busy_cores: f64,
    pub client_busy_cores: f64,
    /// Cores' worth of CPU everything else on the machine used meanwhile
    /// (a build alongside shows here; above 0.1 the figures are suspect).
    pub background_cores: f64,
}

/// One level over all rounds: every round, and the medians.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub mode: Mode,
    pub concurrency: usize,
    pub connections: usize,
    pub rounds: Vec<LevelRound>,
    pub median: LevelSummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LevelSummary {
    pub throughput_rps: Option<Summary>,
    pub p50_ms: Option<Summary>,
    pub p90_ms: Option<Summary>,
    pub p99_ms: Option<Summary>,
    pub mean_batch_size: Option<Summary>,
    pub queue_mean_ms: Option<Summary>,
    /// The queue-time p99's bucket (lower, upper) and interpolated estimate.
    pub queue_p99_lower_ms: Option<Summary>,
    pub queue_p99_upper_ms: Option<Summary>,
    pub queue_p99_estimate_ms: Option<Summary>,
    pub compute_per_request_ms: Option<Summary>,
    pub compute_per_forward_ms: Option<Summary>,
    pub server_cpu_us_per_request: Option<Summary>,
    pub server_busy_cores: Option<Summary>,
    pub client_busy_cores: Option<Summary>,
    pub background_cores: Option<Summary>,
    pub errors: u64,
}

impl LevelSummary {
    fn of(rounds: &[LevelRound]) -> Self {
        let of = |figure: fn(&LevelRound) -> f64| Summary::of(rounds.iter().map(figure));
        let queue = |part: fn(&BucketQuantile) -> f64| {
            Summary::of(
                rounds
                    .iter()
                    .filter_map(|r| r.server.queue_p99_ms.as_ref().map(part)),
            )
        };
        Self {
            throughput_rps: of(|r| r.throughput_rps),
            p50_ms: of(|r| r.latency_ms.p50),
            p90_ms: of(|r| r.latency_ms.p90),
            p99_ms: of(|r| r.latency_ms.p99),
            mean_batch_size: of(|r| r.server.mean_batch_size),
            queue_mean_ms: of(|r| r.server.queue_mean_ms),
            queue_p99_lower_ms: queue(|q| q.lower),
            queue_p99_upper_ms: queue(|q| q.upper),
            queue_p99_estimate_ms: queue(|q| q.estimate),
            compute_per_request_ms: of(|r| r.server.compute_per_request_ms),
            compute_per_forward_ms: of(|r| r.server.compute_per_forward_ms),
            server_cpu_us_per_request: of(|r| r.server_cpu_us_per_request),
            server_busy_cores: of(|r| r.server_busy_cores),
            client_busy_cores: of(|r| r.client_busy_cores),
            background_cores: of(|r| r.background_cores),
            errors: rounds.iter().map(|r| r.errors).sum(),
        }
    }
}

/// Batching throughput over no-batching throughput at one concurrency,
/// per round (same server process, same round) and their median.
#[derive(Debug, Clone, Serialize)]
pub struct Speedup {
    pub concurrency: usize,
    pub ratio: Option<Summary>,
}

/// Queue p99 of the batching model against max_queue_delay plus the mean
/// compute of a request's batch at that level.
#[derive(Debug, Clone, Serialize)]
pub struct QueueCheck {
    pub concurrency: usize,
    pub bound_ms: f64,
    pub p99_lower_ms: f64,
    pub p99_upper_ms: f64,
    pub p99_estimate_ms: f64,
    /// "met" (the p99's whole bucket is within the bound), "MISSED" (all of
    /// it is above), or "unclear" (the bucket straddles the bound).
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub speedup_at_32: Option<f64>,
    pub speedup_target: f64,
    pub speedup_verdict: &'static str,
    /// The 4x target is stated for a GPU.
    pub on_gpu: bool,
    pub queue: Vec<QueueCheck>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub online_cpus: usize,
    pub kernel: String,
    pub client_cpus: Vec<usize>,
    pub server_cpus: Vec<usize>,
    /// Whether the client and the server ran at nice -10.
    pub raised_priority: bool,
}

/// A server's life in one round, for the report: how it stopped and what
/// its log warned about.
#[derive(Debug, Serialize)]
pub struct ServerRun {
    pub round: u32,
    pub exit: String,
    pub log_warnings_and_errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub revision: Option<String>,
    pub quick: bool,
    pub machine: Machine,
    pub device: DeviceInfo,
    pub model: ModelInfo,
    pub settings: Settings,
    pub levels: Vec<Level>,
    pub speedups: Vec<Speedup>,
    pub checks: Checks,
    pub servers: Vec<ServerRun>,
    pub failures: Vec<String>,
}

pub fn run(options: Options, repo: &Path, bench_dir: &Path) -> Result<()> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // Read before the build: the binary is built from this tree.
    let revision = crate::install::workspace_revision(repo);
    let work_dir = bench_dir.join("block-work");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;

    // The build and the model script run before this process pins itself,
    // so they may use the whole machine.
    let binary = server::build()?;
    eprintln!("generating the test models (make_test_models.py)...");
    let (repository, model) = server::prepare_repository(&work_dir)?;
    let split = Split::choose()?;
    let about = MachineInfo::read(
        Placement {
            load_core: split.client[0],
            proxy_core: split.server[0],
        },
        false,
    );
    let device = server::detect_device(&about.cpu_model);
    eprintln!("device: {}", device.label());

    let mut settings = if options.quick {
        Settings::quick(split.server.len())
    } else {
        Settings::full(split.server.len())
    };
    if let Some(rounds) = options.rounds {
        settings.rounds = rounds.max(1);
    }
    if let Some(threads) = options.torch_threads {
        settings.torch_threads = threads.max(1);
    }
    if !options.concurrency.is_empty() {
        settings.concurrency = options.concurrency.clone();
        settings.concurrency.retain(|&c| c > 0);
        settings.concurrency.sort_unstable();
        settings.concurrency.dedup();
    }

    cpus::pin_current_thread_to(&split.client).context("pinning the client")?;
    let raised_priority = machine::raise_priority();
    machine::raise_open_file_limit().context("raising the open-file limit")?;
    // Worker threads start pinned to the client's cores (they inherit the
    // mask and the nice value of this thread).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(split.client.len())
        .enable_all()
        .build()?;
    let mut measured = Measured::default();
    runtime.block_on(async {
        for round in 0..settings.rounds {
            let log = work_dir.join(format!("gridmesh-block-round{}.log", round + 1));
            if let Err(error) = run_round(
                round,
                &settings,
                &binary,
                &repository,
                &split,
                &log,
                &mut measured,
            )
            .await
            {
                let failure = format!("round {}: {error:#}", round + 1);
                eprintln!("  FAILED {failure}");
                measured.failures.push(failure);
            }
        }
    });
    drop(runtime);

    let levels = measured.levels(&settings);
    let speedups = speedups(&levels, &settings);
    let checks = checks(&levels, &speedups, &model, &device);
    let report = Report {
        started_at,
        revision,
        quick: options.quick,
        machine: Machine {
            cpu_model: about.cpu_model,
            online_cpus: about.online_cpus,
            kernel: about.kernel,
            client_cpus: split.client.clone(),
            server_cpus: split.server.clone(),
            raised_priority,
        },
        device,
        model,
        settings,
        levels,
        speedups,
        checks,
        servers: measured.servers,
        failures: measured.failures,
    };
    print(&report);
    let path = bench_dir.join("block-latest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!(
        "\nJSON: {}; server logs and the model repository: {}",
        path.display(),
        work_dir.display()
    );
    Ok(())
}

/// Everything measured, by (mode, concurrency) and round.
#[derive(Default)]
struct Measured {
    rounds: Vec<(Mode, usize, LevelRound)>,
    servers: Vec<ServerRun>,
    failures: Vec<String>,
}

impl Measured {
    fn levels(&self, settings: &Settings) -> Vec<Level> {
        [Mode::Batching, Mode::NoBatching]
            .into_iter()
            .flat_map(|mode| settings.concurrency.iter().map(move |&c| (mode, c)))
            .filter_map(|(mode, concurrency)| {
                let rounds: Vec<LevelRound> = self
                    .rounds
                    .iter()
                    .filter(|(m, c, _)| *m == mode && *c == concurrency)
                    .map(|(_, _, round)| round.clone())
                    .collect();
                (!rounds.is_empty()).then(|| Level {
                    mode,
                    concurrency,
                    connections: concurrency.min(settings.max_connections),
                    median: LevelSummary::of(&rounds),
                    rounds,
                })
            })
            .collect()
    }
}

/// One server process: warm-up, then every level of both models, the
/// modes in alternating order from round to round.
async fn run_round(
    round: u32,
    settings: &Settings,
    binary: &Path,
    repository: &Path,
    split: &Split,
    log: &Path,
    measured: &mut Measured,
) -> Result<()> {
    eprintln!(
        "round {}/{}: starting gridmesh-block",
        round + 1,
        settings.rounds
    );
    let server = BlockServer::start(
        binary,
        repository,
        settings.torch_threads,
        &split.server,
        log,
    )
    .await?;
    let result = measure_round(round, settings, &server, split, measured).await;
    let problems = server::log_problems(&server.log_text());
    let exit = server.stop().await;
    measured.servers.push(ServerRun {
        round,
        exit,
        log_warnings_and_errors: problems,
    });
    result
}

async fn measure_round(
    round: u32,
    settings: &Settings,
    server: &BlockServer,
    split: &Split,
    measured: &mut Measured,
) -> Result<()> {
    // Keep the server's cores out of deep idle states between requests (see
    // crate::machine); the spinners yield to any runnable thread at once.
    let _spinners: Vec<IdleSpinner> = split
        .server
        .iter()
        .map(|&core| IdleSpinner::start(core))
        .collect::<std::io::Result<_>>()
        .context("starting the idle spinners")?;
    let tree = ProcessTree::of(&[server.pid()]);
    let mut clients = Vec::with_capacity(settings.max_connections);
    for _ in 0..settings.max_connections {
        clients.push(client::connect(server.grpc).await?);
    }
    let mut statistics = client::connect(server.grpc).await?;

    let highest = settings.concurrency.last().copied().unwrap_or(1);
    for mode in [Mode::Batching, Mode::NoBatching] {
        for concurrency in [highest, 1] {
            let start = Instant::now();
            let callers = client::start(
                &clients[..concurrency.min(clients.len())],
                mode.model(),
                concurrency,
                start,
                start + settings.server_warmup / 2,
            );
            let warm = client::collect(callers).await;
            anyhow::ensure!(
                warm.first_error.is_none(),
                "warming up {}: {}",
                mode.model(),
                warm.first_error.unwrap_or_default()
            );
        }
    }

    let mut modes = [Mode::Batching, Mode::NoBatching];
    modes.rotate_left(round as usize % 2);
    for mode in modes {
        for &concurrency in &settings.concurrency {
            let connections = &clients[..concurrency.min(clients.len())];
            let start = Instant::now() + settings.level_warmup;
            let end = start + settings.level_duration;
            let callers = client::start(connections, mode.model(), concurrency, start, end);
            tokio::time::sleep_until(start.into()).await;
            let background = BackgroundLoad::start();
            let before = Snapshot::take(server.http, &mut statistics, &tree, mode.model()).await?;
            tokio::time::sleep_until(end.into()).await;
            let after = Snapshot::take(server.http, &mut statistics, &tree, mode.model()).await?;
            let background_cores = background.cores();
            let outcome = client::collect(callers).await;
            let side = scrape::between(&before, &after, mode.model())?;
            let window = settings.level_duration.as_secs_f64();
            let latency = &outcome.latency_ns;
            let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1e6;
            let level = LevelRound {
                round,
                throughput_rps: outcome.completed as f64 / window,
                completed: outcome.completed,
                latency_ms: LatencyMs {
                    p50: ms(0.50),
                    p90: ms(0.90),
                    p99: ms(0.99),
                    max: latency.max() as f64 / 1e6,
                },
                errors: outcome.errors,
                first_error: outcome.first_error,
                server_cpu_us_per_request: side.server_cpu_ms * 1e3
                    / outcome.completed.max(1) as f64,
                server_busy_cores: side.server_cpu_ms / 1e3 / side.window_s,
                client_busy_cores: side.client_cpu_ms / 1e3 / side.window_s,
                background_cores,
                server: side,
            };
            eprintln!(
                "  {:<11} C={concurrency:<3} {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  batch {:>5.1}{}",
                mode.label(),
                level.throughput_rps,
                level.latency_ms.p50,
                level.latency_ms.p99,
                level.server.mean_batch_size,
                if level.errors > 0 {
                    format!("  {} errors", level.errors)
                } else {
                    String::new()
                }
            );
            measured.rounds.push((mode, concurrency, level));
        }
    }
    Ok(())
}

fn speedups(levels: &[Level], settings: &Settings) -> Vec<Speedup> {
    let find = |mode: Mode, concurrency: usize| {
        levels
            .iter()
            .find(|l| l.mode == mode && l.concurrency == concurrency)
    };
    settings
        .concurrency
        .iter()
        .map(|&concurrency| {
            let ratios = match (
                find(Mode::Batching, concurrency),
                find(Mode::NoBatching, concurrency),
            ) {
                (Some(on), Some(off)) => on
                    .rounds
                    .iter()
                    .filter_map(|r| {
                        let base = off.rounds.iter().find(|o| o.round == r.round)?;
                        Some(r.throughput_rps / base.throughput_rps)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Speedup {
                concurrency,
                ratio: Summary::of(ratios),
            }
        })
        .collect()
}

fn checks(
    levels: &[Level],
    speedups: &[Speedup],
    model: &ModelInfo,
    device: &DeviceInfo,
) -> Checks {
    let speedup_at_32 = speedups
        .iter()
        .find(|s| s.concurrency == TARGET_CONCURRENCY)
        .and_then(|s| s.ratio.as_ref())
        .map(|r| r.median);
    let max_queue_delay_ms = model.max_queue_delay_us as f64 / 1e3;
    let queue = levels
        .iter()
        .filter(|l| l.mode == Mode::Batching)
        .filter_map(|l| {
            let m = &l.median;
            let bound_ms = max_queue_delay_ms + m.compute_per_request_ms.as_ref()?.median;
            let (lower, upper, estimate) = (
                m.queue_p99_lower_ms.as_ref()?.median,
                m.queue_p99_upper_ms.as_ref()?.median,
                m.queue_p99_estimate_ms.as_ref()?.median,
            );
            let verdict = if upper <= bound_ms {
                "met"
            } else if lower >= bound_ms {
                "MISSED"
            } else {
                "unclear"
            };
            Some(QueueCheck {
                concurrency: l.concurrency,
                bound_ms,
                p99_lower_ms: lower,
                p99_upper_ms: upper,
                p99_estimate_ms: estimate,
                verdict,
            })
        })
        .collect();
    Checks {
        speedup_at_32,
        speedup_target: TARGET_SPEEDUP,
        speedup_verdict: match speedup_at_32 {
            Some(ratio) if ratio >= TARGET_SPEEDUP => "met",
            Some(_) => "MISSED",
            None => "not measured",
        },
        on_gpu: device.is_gpu(),
        queue,
    }
}

fn print(report: &Report) {
    let s = &report.settings;
    println!(
        "\ngridmesh-block: {} ({}), device {}, torch {}, --torch-threads {}",
        report.model.name,
        report.model.input,
        report.device.label(),
        report.device.torch_version,
        s.torch_threads
    );
    println!(
        "client on CPUs {:?}, server on CPUs {:?}; {} round(s), {:.1} s per level after {:.1} s warm-up; \
         medians over rounds (± spread when several)",
        report.machine.client_cpus,
        report.machine.server_cpus,
        s.rounds,
        s.level_duration.as_secs_f64(),
        s.level_warmup.as_secs_f64()
    );
    println!(
        "batching: max_batch_size {}, max_queue_delay {} us, preferred {:?}\n",
        report.model.max_batch_size,
        report.model.max_queue_delay_us,
        report.model.preferred_batch_sizes
    );
    let mut rows = vec![
        [
            "mode",
            "C",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "batch",
            "queue mean",
            "queue p99 (bucket)",
            "compute/req",
            "compute/fwd",
            "srv us/req",
            "srv cores",
            "client cores",
            "errors",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for level in &report.levels {
        let m = &level.median;
        let queue_p99 = match (&m.queue_p99_lower_ms, &m.queue_p99_upper_ms) {
            (Some(lower), Some(upper)) => format!(
                "{}-{} (~{})",
                number(lower.median),
                number(upper.median),
                m.queue_p99_estimate_ms
                    .as_ref()
                    .map_or("?".into(), |e| number(e.median))
            ),
            _ => "-".into(),
        };
        rows.push(vec![
            level.mode.label().into(),
            level.concurrency.to_string(),
            cell(&m.throughput_rps),
            cell(&m.p50_ms),
            cell(&m.p90_ms),
            cell(&m.p99_ms),
            cell(&m.mean_batch_size),
            cell(&m.queue_mean_ms),
            queue_p99,
            cell(&m.compute_per_request_ms),
            cell(&m.compute_per_forward_ms),
            cell(&m.server_cpu_us_per_request),
            cell(&m.server_busy_cores),
            cell(&m.client_busy_cores),
            m.errors.to_string(),
        ]);
    }
    print_rows(&rows);
    println!(
        "\n  (times in ms; batch: rows per forward; queue: request_queue_time_seconds, its p99 only \
         to the histogram's bucket, ~ the interpolated estimate; compute/req: the inference-time \
         histogram's mean, compute/fwd: ModelStatistics per forward)"
    );

    println!("\nbatching throughput / no-batching throughput (same round):");
    let mut rows = vec![vec!["C".to_string(), "ratio".to_string()]];
    for speedup in &report.speedups {
        rows.push(vec![speedup.concurrency.to_string(), cell(&speedup.ratio)]);
    }
    print_rows(&rows);

    let c = &report.checks;
    println!("\ntargets:");
    println!(
        "  with batching >= {}x the batch-1 throughput at C={TARGET_CONCURRENCY} (stated for a GPU; this run: {}): {} -> {}",
        c.speedup_target,
        report.device.kind,
        c.speedup_at_32
            .map_or("-".into(), |ratio| format!("{ratio:.2}x")),
        c.speedup_verdict
    );
    for check in &c.queue {
        println!(
            "  C={:<3} queue p99 in {}-{} ms (~{}) vs max_queue_delay + compute = {} ms: {}",
            check.concurrency,
            number(check.p99_lower_ms),
            number(check.p99_upper_ms),
            number(check.p99_estimate_ms),
            number(check.bound_ms),
            check.verdict
        );
    }
    let noisy: Vec<String> = report
        .levels
        .iter()
        .filter(|l| {
            l.median
                .background_cores
                .as_ref()
                .is_some_and(|b| b.median > NOISY_BACKGROUND_CORES)
        })
        .map(|l| format!("{} C={}", l.mode.label(), l.concurrency))
        .collect();
    if !noisy.is_empty() {
        println!(
            "\nWARNING: other processes used over {NOISY_BACKGROUND_CORES} cores during: {} \
             (figures disturbed; run on a quiet machine)",
            noisy.join(", ")
        );
    }
    for server in &report.servers {
        if !server.log_warnings_and_errors.is_empty() {
            println!(
                "\nround {} server log: {} warning/error line(s), first: {}",
                server.round + 1,
                server.log_warnings_and_errors.len(),
                server.log_warnings_and_errors[0]
            );
        }
    }
    for failure in &report.failures {
        println!("\nFAILED {failure}");
    }
}

fn cell(summary: &Option<Summary>) -> String {
    match summary {
        None => "-".into(),
        Some(summary) if summary.rounds.len() > 1 => {
            format!("{} ±{:.0}%", number(summary.median), summary.spread_pct)
        }
        Some(summary) => number(summary.median),
    }
}
