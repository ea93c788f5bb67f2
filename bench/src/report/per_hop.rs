//! Figures per sidecar hop, relative to the direct path where they are
//! latencies: computed within each round (same conditions), then summarised.

use serde::Serialize;

use crate::results::{Figure, Results, Scenario, Summary};
use crate::targets::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PerHop {
    /// (target percentile - direct percentile) / hops: a difference of
    /// percentiles spread over the hops, not a percentile of one hop
    /// (tails do not add up).
    AddedP50Us,
    AddedP99Us,
    AddedP999Us,
    /// Proxy CPU per request / hops.
    CpuUsPerRequest,
    CpuUsPerRequestAtMax,
    /// (stream time - direct stream time) / messages / hops.
    AddedUsPerStreamMessage,
    CpuNsPerStreamMessage,
    PssIdleMib,
    PssOpenStreamsMib,
    PssAfterLoadMib,
    /// Connection setup and held connections cross the inbound hop only:
    /// not divided by the target's hops.
    CpuUsPerConnection,
    KibPerOpenConnection,
}

impl PerHop {
    pub fn label(self) -> &'static str {
        match self {
            PerHop::AddedP50Us => "dp50/hop us",
            PerHop::AddedP99Us => "dp99/hop us",
            PerHop::AddedP999Us => "dp99.9/hop us",
            PerHop::CpuUsPerRequest => "CPU us/req/hop",
            PerHop::CpuUsPerRequestAtMax => "CPU us/req/hop @max",
            PerHop::AddedUsPerStreamMessage => "d us/msg/hop",
            PerHop::CpuNsPerStreamMessage => "CPU ns/msg/hop",
            PerHop::PssIdleMib => "idle MiB/hop",
            PerHop::PssOpenStreamsMib => "open-streams MiB/hop",
            PerHop::PssAfterLoadMib => "after-load MiB/hop",
            PerHop::CpuUsPerConnection => "CPU us/conn",
            PerHop::KibPerOpenConnection => "KiB/open conn",
        }
    }

    /// The per-hop figures of a scenario.
    pub fn of(scenario: Scenario) -> &'static [PerHop] {
        match scenario {
            Scenario::Http1 | Scenario::GrpcUnary => &[
                PerHop::AddedP50Us,
                PerHop::AddedP99Us,
                PerHop::AddedP999Us,
                PerHop::CpuUsPerRequest,
                PerHop::CpuUsPerRequestAtMax,
            ],
            Scenario::GrpcStream => &[
                PerHop::AddedUsPerStreamMessage,
                PerHop::CpuNsPerStreamMessage,
            ],
            Scenario::Memory => &[
                PerHop::PssIdleMib,
                PerHop::PssOpenStreamsMib,
                PerHop::PssAfterLoadMib,
            ],
            Scenario::Connections => &[PerHop::CpuUsPerConnection, PerHop::KibPerOpenConnection],
        }
    }

    /// The measured figure it derives from, and whether the direct path's
    /// value is subtracted first.
    fn source(self) -> (Figure, bool) {
        match self {
            PerHop::AddedP50Us => (Figure::P50Us, true),
            PerHop::AddedP99Us => (Figure::P99Us, true),
            PerHop::AddedP999Us => (Figure::P999Us, true),
            PerHop::CpuUsPerRequest => (Figure::CpuUsPerRequest, false),
            PerHop::CpuUsPerRequestAtMax => (Figure::CpuUsPerRequestAtMax, false),
            PerHop::AddedUsPerStreamMessage => (Figure::StreamMs, true),
            PerHop::CpuNsPerStreamMessage => (Figure::CpuNsPerMessage, false),
            PerHop::PssIdleMib => (Figure::PssIdleMib, false),
            PerHop::PssOpenStreamsMib => (Figure::PssOpenStreamsMib, false),
            PerHop::PssAfterLoadMib => (Figure::PssAfterLoadMib, false),
            PerHop::CpuUsPerConnection => (Figure::CpuUsPerConnection, false),
            PerHop::KibPerOpenConnection => (Figure::KibPerOpenConnection, false),
        }
    }

    /// `stream_messages` converts a stream's milliseconds into microseconds
    /// per message.
    pub fn summary(
        self,
        results: &Results,
        target: Target,
        scenario: Scenario,
        stream_messages: u32,
    ) -> Option<Summary> {
        // The direct path has no hop.
        target.proxy?;
        let (figure, relative_to_direct) = self.source();
        let rounds = results.rounds(target, scenario, figure)?;
        let direct = results.rounds(Target::DIRECT, scenario, figure);
        let hops = match self {
            PerHop::CpuUsPerConnection | PerHop::KibPerOpenConnection => 1.0,
            _ => f64::from(target.hops),
        };
        let scale = if self == PerHop::AddedUsPerStreamMessage {
            1e3 / f64::from(stream_messages)
        } else {
            1.0
        };
        let per_round = rounds.iter().filter_map(|(round, value)| {
            let baseline = if relative_to_direct {
                *direct?.get(round)?
            } else {
                0.0
            };
            Some((value - baseline) * scale / hops)
        });
        Summary::of(per_round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::ProxyKind;

    #[test]
    fn added_latency_is_paired_by_round_and_split_per_hop() {
        let mut results = Results::default();
        let two_hops = Target::through(ProxyKind::Envoy, 2);
        for (round, direct, proxied) in [(0, 50.0, 450.0), (1, 70.0, 430.0), (2, 60.0, 500.0)] {
            results.record(
                round,
                Target::DIRECT,
                Scenario::Http1,
                Figure::P50Us,
                direct,
            );
            results.record(round, two_hops, Scenario::Http1, Figure::P50Us, proxied);
        }
        // Per round: 200, 180, 220 us per hop.
        let summary = PerHop::AddedP50Us
            .summary(&results, two_hops, Scenario::Http1, 0)
            .unwrap();
        assert_eq!(summary.median, 200.0);
        assert_eq!((summary.min, summary.max), (180.0, 220.0));
    }

    #[test]
    fn stream_overhead_is_in_microseconds_per_message() {
        let mut results = Results::default();
        let one_hop = Target::through(ProxyKind::Gridmesh, 1);
        results.record(
            0,
            Target::DIRECT,
            Scenario::GrpcStream,
            Figure::StreamMs,
            100.0,
        );
        results.record(0, one_hop, Scenario::GrpcStream, Figure::StreamMs, 300.0);
        let summary = PerHop::AddedUsPerStreamMessage
            .summary(&results, one_hop, Scenario::GrpcStream, 100_000)
            .unwrap();
        assert_eq!(summary.median, 2.0);
    }
}
