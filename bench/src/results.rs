//! What a run measured: one value per (target, scenario, figure) and round,
//! plus failed requests and failed targets. Rounds are kept apart so that
//! figures relative to the direct path are taken within a round, under the
//! same conditions, before being summarised.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::load::ErrorTally;
use crate::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// HTTP/1.1 POST /echo with a 1 KiB body, keep-alive connections.
    Http1,
    /// gRPC unary Echo with a 1 KiB payload.
    GrpcUnary,
    /// gRPC server streaming: one stream of many small messages.
    GrpcStream,
    /// Proxy memory (PSS) idle, with 1,000 open gRPC streams, and after
    /// the load runs.
    #[value(alias = "rss")]
    Memory,
    /// Connection setup (a new connection per HTTP/1.1 request, with a full
    /// handshake on mTLS targets) and memory with 1,000 connections open,
    /// at the inbound hop.
    Connections,
}

impl Scenario {
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Http1 => "HTTP/1.1 1 KiB POST",
            Scenario::GrpcUnary => "gRPC unary 1 KiB",
            Scenario::GrpcStream => "gRPC server stream",
            Scenario::Memory => "proxy memory (PSS)",
            Scenario::Connections => "HTTP/1.1 new connections, and 1,000 open, at the inbound hop",
        }
    }
}

/// A measured figure. Proxy CPU and memory cover every hop's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    /// Fixed-rate latency percentiles, from the scheduled send time.
    P50Us,
    P99Us,
    P999Us,
    /// 99th percentile of how late the load generator sent (part of the
    /// latencies above): near zero on a quiet machine.
    SendLatenessP99Us,
    /// Proxy CPU time / requests during the fixed-rate run.
    CpuUsPerRequest,
    /// Closed loop, proxy pinned to one core.
    MaxRequestsPerS,
    CpuUsPerRequestAtMax,
    /// Share of the proxy core the proxy used in the closed-loop run; well
    /// below 1.0 means the load generator, not the proxy, was the limit.
    ProxyCoreBusyAtMax,
    /// Median time to receive one whole stream.
    StreamMs,
    MessagesPerS,
    CpuNsPerMessage,
    PssIdleMib,
    PssOpenStreamsMib,
    PssAfterLoadMib,
    /// Closed loop, one request per new connection (a full handshake each
    /// on mTLS targets).
    ConnectionsPerS,
    /// Proxy CPU per new connection, and its inverse: how many a core could
    /// set up per second.
    CpuUsPerConnection,
    ConnectionsPerCoreS,
    /// PSS with 1,000 connections open (each served one request), and
    /// what each added.
    PssOpenConnectionsMib,
    KibPerOpenConnection,
}

impl Figure {
    pub fn label(self) -> &'static str {
        match self {
            Figure::P50Us => "p50 us",
            Figure::P99Us => "p99 us",
            Figure::P999Us => "p99.9 us",
            Figure::SendLatenessP99Us => "send late p99 us",
            Figure::CpuUsPerRequest => "CPU us/req",
            Figure::MaxRequestsPerS => "max req/s",
            Figure::CpuUsPerRequestAtMax => "CPU us/req @max",
            Figure::ProxyCoreBusyAtMax => "core busy @max",
            Figure::StreamMs => "stream ms",
            Figure::MessagesPerS => "msg/s",
            Figure::CpuNsPerMessage => "CPU ns/msg",
            Figure::PssIdleMib => "idle MiB",
            Figure::PssOpenStreamsMib => "open-streams MiB",
            Figure::PssAfterLoadMib => "after-load MiB",
            Figure::ConnectionsPerS => "conn/s",
            Figure::CpuUsPerConnection => "CPU us/conn",
            Figure::ConnectionsPerCoreS => "conn/s per core",
            Figure::PssOpenConnectionsMib => "1,000 open MiB",
            Figure::KibPerOpenConnection => "KiB/open conn",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Figure::P50Us | Figure::P99Us | Figure::P999Us | Figure::SendLatenessP99Us => "us",
            Figure::CpuUsPerRequest | Figure::CpuUsPerRequestAtMax => "us",
            Figure::MaxRequestsPerS => "req/s",
            Figure::ProxyCoreBusyAtMax => "fraction",
            Figure::StreamMs => "ms",
            Figure::MessagesPerS => "msg/s",
            Figure::CpuNsPerMessage => "ns",
            Figure::PssIdleMib | Figure::PssOpenStreamsMib | Figure::PssAfterLoadMib => "MiB",
            Figure::ConnectionsPerS | Figure::ConnectionsPerCoreS => "conn/s",
            Figure::CpuUsPerConnection => "us",
            Figure::PssOpenConnectionsMib => "MiB",
            Figure::KibPerOpenConnection => "KiB",
        }
    }
}

#[derive(Debug, Default)]
pub struct Results {
    /// round -> value
    values: BTreeMap<(Target, Scenario, Figure), BTreeMap<u32, f64>>,
    errors: BTreeMap<(Target, Scenario), ErrorTally>,
    /// Cores kept busy by other processes while a target was measured.
    background_cores: BTreeMap<(Target, u32), f64>,
    /// Targets or scenarios that could not be measured in some round, and why.
    pub failures: Vec<String>,
}

impl Results {
    pub fn record(
        &mut self,
        round: u32,
        target: Target,
        scenario: Scenario,
        figure: Figure,
        value: f64,
    ) {
        self.values
            .entry((target, scenario, figure))
            .or_default()
            .insert(round, value);
    }

    pub fn record_errors(&mut self, target: Target, scenario: Scenario, errors: ErrorTally) {
        if errors.count > 0 {
            self.errors
                .entry((target, scenario))
                .or_default()
                .merge(errors);
        }
    }

    pub fn rounds(
        &self,
        target: Target,
        scenario: Scenario,
        figure: Figure,
    ) -> Option<&BTreeMap<u32, f64>> {
        self.values.get(&(target, scenario, figure))
    }

    pub fn record_background(&mut self, round: u32, target: Target, cores: f64) {
        self.background_cores.insert((target, round), cores);
    }

    pub fn background(&self) -> impl Iterator<Item = (&(Target, u32), &f64)> {
        self.background_cores.iter()
    }

    pub fn all(&self) -> impl Iterator<Item = (&(Target, Scenario, Figure), &BTreeMap<u32, f64>)> {
        self.values.iter()
    }

    pub fn all_errors(&self) -> impl Iterator<Item = (&(Target, Scenario), &ErrorTally)> {
        self.errors.iter()
    }
}

/// Median and spread of one figure over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median, in percent.
    pub spread_pct: f64,
    pub rounds: Vec<f64>,
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let rounds: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if rounds.is_empty() {
            return None;
        }
        let mut sorted = rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        let spread_pct = if median.abs() > f64::EPSILON {
            (max - min) / median.abs() * 100.0
        } else {
            0.0
        };
        Some(Self {
            median,
            min,
            max,
            spread_pct,
            rounds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_median_and_spread() {
        let summary = Summary::of([12.0, 10.0, 11.0]).unwrap();
        assert_eq!(
            (summary.median, summary.min, summary.max),
            (11.0, 10.0, 12.0)
        );
        assert!((summary.spread_pct - 2.0 / 11.0 * 100.0).abs() < 1e-9);
        assert_eq!(Summary::of([1.0, 3.0]).unwrap().median, 2.0);
        assert!(Summary::of([]).is_none());
    }
}
