//! `gridmesh-bench`: what a gridmesh sidecar hop costs, as ratios against the
//! direct path and against Envoy, nginx and HAProxy measured in the same run.
//! See docs/benchmark.md.
#![deny(clippy::unwrap_used)]
// The benchmark pins processes to CPUs and sets scheduling policies and
// priorities through libc (machine.rs, block/cpus.rs, targets/process.rs),
// and enters proxies into their cgroup before exec (cgroup.rs).
#![allow(unsafe_code)]

mod block;
mod cgroup;
mod install;
mod load;
mod machine;
mod measure;
mod procfs;
mod report;
mod results;
mod settings;
mod targets;
mod vdag;
mod xds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Parser;
use gridmesh_tests::process::workspace_root;

use install::ProxyStatus;
use machine::{MachineInfo, Placement};
use measure::Measurement;
use report::{Report, RunContext};
use results::{Results, Scenario};
use settings::Settings;
use targets::{ProxyKind, RunningTarget, Target};

#[derive(Parser)]
#[command(about = "Benchmark gridmesh against the direct path, Envoy, nginx and HAProxy")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// One short round (about two minutes): a smoke check, not figures to record.
    #[arg(long, global = true)]
    quick: bool,
    /// Scenarios to run; default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Proxies to compare gridmesh with; default all three.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "envoy,nginx,haproxy"
    )]
    peers: Vec<ProxyKind>,
    /// Rounds; default 3, or 1 with --quick.
    #[arg(long)]
    rounds: Option<u32>,
    /// A gridmesh-proxy binary to measure instead of building the workspace's.
    #[arg(long)]
    gridmesh_proxy: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Control plane and xDS: convergence of 1,000 simulated sidecars on a
    /// 10,000-endpoint config, and a sidecar applying 1,000-endpoint updates
    /// under load (`--quick` for a smaller smoke run).
    Xds,
    /// The block server (gridmesh-block): throughput and latency of the test
    /// CNN at increasing concurrency, dynamic batching on and off, on the
    /// GPU when libtorch sees one, else the CPU (`--quick` for a smoke run).
    Block {
        /// Rounds; default 3, or 1 with --quick.
        #[arg(long)]
        rounds: Option<u32>,
        /// The server's libtorch intra-op threads; default one per server core.
        #[arg(long)]
        torch_threads: Option<usize>,
        /// Concurrency levels; default 1,4,8,16,32,64.
        #[arg(long, value_delimiter = ',')]
        concurrency: Vec<usize>,
    },
    /// vDAGs: what a chain and a diamond of echo blocks cost through
    /// sidecars (mTLS) against calling the blocks directly, an
    /// origin-orchestrated design, and the Redis-list transport of the
    /// network gridmesh replaces (`--quick` for a smoke run).
    Vdag {
        /// Rounds; default 3, or 1 with --quick.
        #[arg(long)]
        rounds: Option<u32>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Xds) => {
            let repo = workspace_root();
            xds::run(args.quick, repo, &target_dir(repo).join("bench"))
        }
        Some(Command::Block {
            rounds,
            torch_threads,
            concurrency,
        }) => {
            let repo = workspace_root();
            let options = block::Options {
                quick: args.quick,
                rounds,
                torch_threads,
                concurrency,
            };
            block::run(options, repo, &target_dir(repo).join("bench"))
        }
        Some(Command::Vdag { rounds }) => {
            let repo = workspace_root();
            vdag::run(args.quick, rounds, repo, &target_dir(repo).join("bench"))
        }
        None => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gridmesh-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let repo = workspace_root();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut settings = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(rounds) = args.rounds {
        settings.rounds = rounds.max(1);
    }
    let scenarios = selected_scenarios(args.only);

    // Installs and the release build run before this process pins itself
    // to one core, so they may use the whole machine.
    let proxies = locate_proxies(&args.peers, args.gridmesh_proxy, repo);
    let binaries: BTreeMap<ProxyKind, PathBuf> = proxies
        .iter()
        .filter_map(|status| Some((status.proxy, status.binary.clone()?)))
        .collect();
    let targets: Vec<Target> = std::iter::once(Target::DIRECT)
        .chain(
            binaries
                .keys()
                .flat_map(|&proxy| [Target::through(proxy, 1), Target::through(proxy, 2)]),
        )
        .chain(
            binaries
                .contains_key(&ProxyKind::Gridmesh)
                .then_some([
                    Target::GRIDMESH_MTLS,
                    Target::gridmesh_traced(1),
                    Target::gridmesh_traced(100),
                    Target::GRIDMESH_ACCESS_LOG,
                ])
                .into_iter()
                .flatten(),
        )
        .collect();

    let placement = Placement::choose()?;
    machine::raise_open_file_limit().context("raising the open-file limit")?;
    machine::pin_current_thread(placement.load_core).context("pinning the load generator")?;
    let raised_priority = machine::raise_priority();
    let bench_dir = target_dir(repo).join("bench");
    let work_dir = bench_dir.join("work");
    // Configs and logs of the previous run would only confuse.
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;

    // One thread runs the load generator and the upstream, so both stay on
    // the load core and the measured process is the proxy alone.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rounds = Rounds {
        settings: &settings,
        scenarios: &scenarios,
        targets: &targets,
        binaries: &binaries,
        placement,
        work_dir: &work_dir,
    };
    let results = runtime.block_on(rounds.run())?;

    let report = Report::build(
        RunContext {
            started_at,
            revision: install::workspace_revision(repo),
            quick: args.quick,
            machine: MachineInfo::read(placement, raised_priority),
            settings,
            proxies,
            scenarios,
            targets,
        },
        results,
    );
    report::print(&report);
    let path = report.write_json(&bench_dir)?;
    println!(
        "\nJSON: {} (and latest.json beside it); proxy configs and logs: {}",
        path.display(),
        work_dir.display()
    );
    Ok(())
}

fn selected_scenarios(mut only: Vec<Scenario>) -> Vec<Scenario> {
    if only.is_empty() {
        return vec![
            Scenario::Http1,
            Scenario::GrpcUnary,
            Scenario::GrpcStream,
            Scenario::Memory,
            Scenario::Connections,
        ];
    }
    only.sort();
    only.dedup();
    only
}

fn locate_proxies(
    peers: &[ProxyKind],
    gridmesh_proxy: Option<PathBuf>,
    repo: &Path,
) -> Vec<ProxyStatus> {
    let mut wanted: Vec<ProxyKind> = peers
        .iter()
        .copied()
        .filter(|&p| p != ProxyKind::Gridmesh)
        .collect();
    wanted.sort();
    wanted.dedup();
    match gridmesh_proxy {
        Some(binary) => {
            let mut statuses = vec![install::given_binary(ProxyKind::Gridmesh, binary)];
            statuses.extend(install::prepare(&wanted, repo));
            statuses
        }
        None => {
            wanted.insert(0, ProxyKind::Gridmesh);
            install::prepare(&wanted, repo)
        }
    }
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` or `<repo>/target`.
fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from)
}

/// Every target in every round, each started fresh, against one upstream.
struct Rounds<'a> {
    settings: &'a Settings,
    scenarios: &'a [Scenario],
    targets: &'a [Target],
    binaries: &'a BTreeMap<ProxyKind, PathBuf>,
    placement: Placement,
    work_dir: &'a Path,
}

impl Rounds<'_> {
    async fn run(&self) -> Result<Results> {
        let upstream =
            gridmesh_tests::upstream::spawn("127.0.0.1:0".parse()?, "bench-upstream").await?;
        let mut results = Results::default();
        for round in 0..self.settings.rounds {
            // A different order each round spreads slow drifts of the
            // machine over all targets instead of always hitting the last.
            let mut order = self.targets.to_vec();
            let first = round as usize % order.len();
            order.rotate_left(first);
            for target in order {
                eprintln!("round {}/{}: {target}", round + 1, self.settings.rounds);
                let binary = target.proxy.and_then(|proxy| self.binaries.get(&proxy));
                let started = RunningTarget::start(
                    target,
                    binary.map(PathBuf::as_path),
                    upstream.local_addr(),
                    self.placement.proxy_core,
                    self.work_dir,
                )
                .await;
                let running = match started {
                    Ok(running) => running,
                    Err(error) => {
                        let failure =
                            format!("round {}: {target} did not start: {error:#}", round + 1);
                        eprintln!("  FAILED {failure}");
                        results.failures.push(failure);
                        continue;
                    }
                };
                Measurement {
                    round,
                    target,
                    running: &running,
                    settings: self.settings,
                    proxy_core: self.placement.proxy_core,
                    results: &mut results,
                }
                .run_all(self.scenarios)
                .await;
                running.stop().await;
            }
        }
        Ok(results)
    }
}
