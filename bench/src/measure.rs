//! Runs the selected scenarios against one running target and records the
//! figures of one round.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::{StreamExt, TryStreamExt};

use crate::cgroup::TargetCgroup;
use crate::load::clients::{Exchange, GrpcUnaryEcho, Http1Echo, NewConnectionEcho, grpc_channel};
use crate::load::{closed_loop, fixed_rate, streams};
use crate::machine::IdleSpinner;
use crate::procfs::BackgroundLoad;
use crate::results::{Figure, Results, Scenario};
use crate::settings::Settings;
use crate::targets::{ProxyKind, RunningTarget, Target};

const MIB: f64 = 1024.0 * 1024.0;
/// Streams measured before the timed ones, to warm connections and caches.
const STREAM_WARMUP_MESSAGES: u32 = 10_000;

/// One target in one round.
pub struct Measurement<'a> {
    pub round: u32,
    pub target: Target,
    pub running: &'a RunningTarget,
    pub settings: &'a Settings,
    pub proxy_core: usize,
    pub results: &'a mut Results,
}

impl Measurement<'_> {
    /// Runs `scenarios`; a failed scenario is recorded and the next one runs.
    pub async fn run_all(&mut self, scenarios: &[Scenario]) {
        let background = BackgroundLoad::start();
        let processes = self.running.cgroup();
        let memory = scenarios.contains(&Scenario::Memory);
        if memory && let Some(processes) = processes {
            // Before any load: the target has served only its readiness probes.
            self.record_memory(Figure::PssIdleMib, processes);
        }
        for &scenario in scenarios {
            if let Err(error) = self.run(scenario, processes).await {
                let failure = format!(
                    "round {}: {} {}: {error:#}",
                    self.round + 1,
                    self.target,
                    scenario.title()
                );
                eprintln!("  FAILED {failure}");
                self.results.failures.push(failure);
            }
        }
        if memory && let Some(processes) = processes {
            self.record_memory(Figure::PssAfterLoadMib, processes);
        }
        self.results
            .record_background(self.round, self.target, background.cores());
    }

    async fn run(&mut self, scenario: Scenario, processes: Option<&TargetCgroup>) -> Result<()> {
        match scenario {
            Scenario::Http1 => {
                let payload = self.payload();
                let address = self.running.entry.http1;
                let connections = try_join_all(
                    (0..self.settings.max_throughput_concurrency)
                        .map(|_| Http1Echo::connect(address, payload.clone())),
                )
                .await?;
                self.requests(scenario, connections, processes).await
            }
            Scenario::GrpcUnary => {
                let payload = self.payload();
                let address = self.running.entry.grpc;
                let channels = try_join_all(
                    (0..self.settings.grpc_connections).map(|_| grpc_channel(address)),
                )
                .await?;
                let calls = (0..self.settings.max_throughput_concurrency)
                    .map(|i| {
                        GrpcUnaryEcho::new(channels[i % channels.len()].clone(), payload.clone())
                    })
                    .collect();
                self.requests(scenario, calls, processes).await
            }
            Scenario::GrpcStream => self.stream(processes).await,
            Scenario::Memory => self.memory_with_open_streams(processes).await,
            Scenario::Connections => self.connections(processes).await,
        }
    }

    fn payload(&self) -> Bytes {
        Bytes::from(vec![b'x'; self.settings.payload_bytes])
    }

    fn record(&mut self, scenario: Scenario, figure: Figure, value: f64) {
        self.results
            .record(self.round, self.target, scenario, figure, value);
    }

    /// Memory is read while no latency is measured: reading a process's
    /// PSS walks its memory map under the map's lock.
    fn record_memory(&mut self, figure: Figure, processes: &TargetCgroup) {
        match processes.pss_bytes() {
            Ok(bytes) => self.record(Scenario::Memory, figure, bytes as f64 / MIB),
            Err(error) => self.results.failures.push(format!(
                "round {}: {} {}: {error:#}",
                self.round + 1,
                self.target,
                figure.label()
            )),
        }
    }

    /// Fixed-rate latency and CPU on the first connections, then maximum
    /// throughput on all of them.
    async fn requests<E: Exchange>(
        &mut self,
        scenario: Scenario,
        mut exchanges: Vec<E>,
        processes: Option<&TargetCgroup>,
    ) -> Result<()> {
        let settings = self.settings;
        let spare = exchanges.split_off(settings.fixed_rate_concurrency.min(exchanges.len()));
        let (_, exchanges) = fixed_rate::run(exchanges, settings.rate, settings.warmup).await;

        let spinner = IdleSpinner::start(self.proxy_core)?;
        let cpu_before = cpu_time(processes)?;
        let (outcome, mut exchanges) =
            fixed_rate::run(exchanges, settings.rate, settings.fixed_rate_duration).await;
        let cpu = cpu_used_since(processes, cpu_before)?;
        drop(spinner);

        let latency = &outcome.latency_ns;
        // Failed requests included: they are in the histogram, and they
        // cost the proxy CPU too.
        let requests = latency.len();
        if requests > 0 {
            for (figure, quantile) in [
                (Figure::P50Us, 0.50),
                (Figure::P99Us, 0.99),
                (Figure::P999Us, 0.999),
            ] {
                self.record(
                    scenario,
                    figure,
                    latency.value_at_quantile(quantile) as f64 / 1e3,
                );
            }
            if let Some(cpu) = cpu {
                self.record(
                    scenario,
                    Figure::CpuUsPerRequest,
                    cpu.as_secs_f64() * 1e6 / requests as f64,
                );
            }
            let lateness = outcome.send_lateness_ns.value_at_quantile(0.99);
            self.record(scenario, Figure::SendLatenessP99Us, lateness as f64 / 1e3);
        }
        self.results
            .record_errors(self.target, scenario, outcome.errors);

        exchanges.extend(spare);
        let cpu_before = cpu_time(processes)?;
        let (outcome, _) = closed_loop::run(exchanges, settings.max_throughput_duration).await;
        let cpu = cpu_used_since(processes, cpu_before)?;
        let elapsed = outcome.elapsed.as_secs_f64();
        self.record(
            scenario,
            Figure::MaxRequestsPerS,
            outcome.completed as f64 / elapsed,
        );
        if let (Some(cpu), true) = (cpu, outcome.completed > 0) {
            self.record(
                scenario,
                Figure::CpuUsPerRequestAtMax,
                cpu.as_secs_f64() * 1e6 / outcome.completed as f64,
            );
            self.record(
                scenario,
                Figure::ProxyCoreBusyAtMax,
                cpu.as_secs_f64() / elapsed,
            );
        }
        self.results
            .record_errors(self.target, scenario, outcome.errors);
        Ok(())
    }

    /// Whole streams of many small messages, one after another.
    async fn stream(&mut self, processes: Option<&TargetCgroup>) -> Result<()> {
        let settings = self.settings;
        let channel = grpc_channel(self.running.entry.grpc).await?;
        streams::time_server_stream(
            &channel,
            STREAM_WARMUP_MESSAGES,
            settings.stream_message_bytes,
        )
        .await?;
        let cpu_before = cpu_time(processes)?;
        let mut times = Vec::new();
        for _ in 0..settings.streams_per_round {
            times.push(
                streams::time_server_stream(
                    &channel,
                    settings.stream_messages,
                    settings.stream_message_bytes,
                )
                .await?,
            );
        }
        let cpu = cpu_used_since(processes, cpu_before)?;
        times.sort();
        let median = times[times.len() / 2];
        self.record(
            Scenario::GrpcStream,
            Figure::StreamMs,
            median.as_secs_f64() * 1e3,
        );
        self.record(
            Scenario::GrpcStream,
            Figure::MessagesPerS,
            f64::from(settings.stream_messages) / median.as_secs_f64(),
        );
        if let Some(cpu) = cpu {
            let messages = f64::from(settings.stream_messages) * times.len() as f64;
            self.record(
                Scenario::GrpcStream,
                Figure::CpuNsPerMessage,
                cpu.as_secs_f64() * 1e9 / messages,
            );
        }
        Ok(())
    }

    /// Memory while many gRPC streams are open through every hop. The
    /// direct path has no proxy to measure.
    async fn memory_with_open_streams(&mut self, processes: Option<&TargetCgroup>) -> Result<()> {
        let Some(processes) = processes else {
            return Ok(());
        };
        let open = streams::open_streams(
            self.running.entry.grpc,
            self.settings.open_streams,
            self.settings.open_stream_connections,
        )
        .await?;
        self.record_memory(Figure::PssOpenStreamsMib, processes);
        drop(open);
        Ok(())
    }

    /// New connections to the inbound hop as fast as they are answered,
    /// then memory with many held open. Measured for gridmesh (plaintext
    /// and mTLS) and the direct path (the load generator's own ceiling).
    async fn connections(&mut self, processes: Option<&TargetCgroup>) -> Result<()> {
        if self.target.proxy.is_some_and(|p| p != ProxyKind::Gridmesh) {
            return Ok(());
        }
        let settings = self.settings;
        let (inbound, tls) = (self.running.inbound, self.running.inbound_tls.clone());
        let exchanges = (0..settings.connection_concurrency)
            .map(|_| NewConnectionEcho {
                address: inbound,
                payload: self.payload(),
                tls: tls.clone(),
            })
            .collect();
        let (_, exchanges) = closed_loop::run(exchanges, settings.warmup).await;
        let cpu_before = cpu_time(processes)?;
        let (outcome, _) = closed_loop::run(exchanges, settings.max_throughput_duration).await;
        let cpu = cpu_used_since(processes, cpu_before)?;
        let elapsed = outcome.elapsed.as_secs_f64();
        let scenario = Scenario::Connections;
        self.record(
            scenario,
            Figure::ConnectionsPerS,
            outcome.completed as f64 / elapsed,
        );
        if let (Some(cpu), true) = (cpu, outcome.completed > 0) {
            let cpu = cpu.as_secs_f64();
            let per_connection = cpu / outcome.completed as f64;
            self.record(scenario, Figure::CpuUsPerConnection, per_connection * 1e6);
            self.record(scenario, Figure::ConnectionsPerCoreS, 1.0 / per_connection);
            self.record(scenario, Figure::ProxyCoreBusyAtMax, cpu / elapsed);
        }
        self.results
            .record_errors(self.target, scenario, outcome.errors);

        let Some(processes) = processes else {
            return Ok(());
        };
        let before = processes.pss_bytes()?;
        // A few at a time, as the closed loop: the inbound hop's pool to
        // the upstream stays as small as in the other scenarios.
        let open: Vec<Http1Echo> = futures_util::stream::iter(0..settings.open_connections)
            .map(|_| async {
                let mut connection =
                    Http1Echo::connect_with(inbound, self.payload(), tls.clone()).await?;
                connection.exchange().await?;
                anyhow::Ok(connection)
            })
            .buffer_unordered(settings.connection_concurrency)
            .try_collect()
            .await?;
        let after = processes.pss_bytes()?;
        self.record(scenario, Figure::PssOpenConnectionsMib, after as f64 / MIB);
        self.record(
            scenario,
            Figure::KibPerOpenConnection,
            (after as f64 - before as f64) / 1024.0 / open.len() as f64,
        );
        Ok(())
    }
}

fn cpu_time(processes: Option<&TargetCgroup>) -> Result<Option<Duration>> {
    processes
        .map(|p| p.cpu_time().context("reading the target's CPU time"))
        .transpose()
}

fn cpu_used_since(
    processes: Option<&TargetCgroup>,
    before: Option<Duration>,
) -> Result<Option<Duration>> {
    let now = cpu_time(processes)?;
    Ok(now
        .zip(before)
        .map(|(now, before)| now.saturating_sub(before)))
}
