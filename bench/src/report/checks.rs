//! The product owner's targets for gridmesh, checked against the range of
//! this run's rounds: met only when every round of gridmesh is within the
//! limit drawn from every round of the peer, missed only when none is, and
//! inconclusive when the ranges overlap (or a single round cannot show a
//! spread). A target that needs a peer the run did not measure is unknown,
//! never met.

use serde::Serialize;

use super::{PerHopRow, find_per_hop};
use crate::results::{Scenario, Summary};
use crate::targets::{ProxyKind, Target};

use super::per_hop::PerHop;

#[derive(Debug, Serialize)]
pub struct Check {
    pub requirement: String,
    /// gridmesh's figure over the rounds.
    pub gridmesh: Option<Range>,
    /// The limit over the rounds (the peer's rounds times the factor).
    pub limit: Option<Range>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Met,
    Missed,
    Inconclusive,
    /// A figure it needs was not measured.
    Unknown,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Range {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Range {
    fn of(summary: &Summary) -> Range {
        Range {
            median: summary.median,
            min: summary.min,
            max: summary.max,
            rounds: summary.rounds.len(),
        }
    }

    fn times(self, factor: f64) -> Range {
        Range {
            median: self.median * factor,
            min: self.min * factor,
            max: self.max * factor,
            rounds: self.rounds,
        }
    }

    fn point(value: f64) -> Range {
        Range {
            median: value,
            min: value,
            max: value,
            rounds: usize::MAX,
        }
    }
}

/// One requirement: a gridmesh target's figure must not exceed `bound`.
struct Requirement {
    scenario: Scenario,
    subject: Target,
    figure: PerHop,
    bound: Bound,
    strict: bool,
}

enum Bound {
    Absolute(f64),
    /// A factor of another target's figure (a peer's, or gridmesh's own
    /// without mTLS).
    Times(f64, Target),
}

pub fn evaluate(scenarios: &[Scenario], per_hop: &[PerHopRow]) -> Vec<Check> {
    requirements()
        .into_iter()
        .filter(|requirement| scenarios.contains(&requirement.scenario))
        .map(|requirement| requirement.check(per_hop))
        .collect()
}

fn requirements() -> Vec<Requirement> {
    let mut requirements = Vec::new();
    for hops in [1, 2] {
        let gridmesh = Target::through(ProxyKind::Gridmesh, hops);
        let envoy = Target::through(ProxyKind::Envoy, hops);
        let haproxy = Target::through(ProxyKind::Haproxy, hops);
        for scenario in [Scenario::Http1, Scenario::GrpcUnary] {
            for figure in [PerHop::AddedP50Us, PerHop::AddedP99Us] {
                requirements.push(Requirement::at_most(
                    scenario,
                    gridmesh,
                    figure,
                    Bound::Times(0.7, envoy),
                ));
                requirements.push(Requirement::at_most(
                    scenario,
                    gridmesh,
                    figure,
                    Bound::Times(1.0, haproxy),
                ));
            }
            let cpu = PerHop::CpuUsPerRequest;
            requirements.push(Requirement::at_most(
                scenario,
                gridmesh,
                cpu,
                Bound::Times(0.5, envoy),
            ));
            requirements.push(Requirement::at_most(
                scenario,
                gridmesh,
                cpu,
                Bound::Times(1.0, haproxy),
            ));
        }
        requirements.push(Requirement {
            strict: true,
            ..Requirement::at_most(
                Scenario::GrpcStream,
                gridmesh,
                PerHop::AddedUsPerStreamMessage,
                Bound::Absolute(5.0),
            )
        });
    }
    let one_hop = Target::through(ProxyKind::Gridmesh, 1);
    requirements.push(Requirement::at_most(
        Scenario::Memory,
        one_hop,
        PerHop::PssIdleMib,
        Bound::Absolute(20.0),
    ));
    requirements.push(Requirement::at_most(
        Scenario::Memory,
        one_hop,
        PerHop::PssOpenStreamsMib,
        Bound::Absolute(50.0),
    ));
    // mTLS between the two hops against the same two hops in plaintext.
    let plaintext = Target::through(ProxyKind::Gridmesh, 2);
    for scenario in [Scenario::Http1, Scenario::GrpcUnary] {
        for (figure, factor) in [(PerHop::AddedP50Us, 1.15), (PerHop::CpuUsPerRequest, 1.3)] {
            requirements.push(Requirement::at_most(
                scenario,
                Target::GRIDMESH_MTLS,
                figure,
                Bound::Times(factor, plaintext),
            ));
        }
    }
    // Tracing at 1% and 100% and access logs, against the same two hops
    // without them: CPU per request.
    for (subject, factor) in [
        (Target::gridmesh_traced(1), 1.10),
        (Target::gridmesh_traced(100), 1.30),
        (Target::GRIDMESH_ACCESS_LOG, 1.05),
    ] {
        for scenario in [Scenario::Http1, Scenario::GrpcUnary] {
            requirements.push(Requirement::at_most(
                scenario,
                subject,
                PerHop::CpuUsPerRequest,
                Bound::Times(factor, plaintext),
            ));
        }
    }
    // >= 2,000 full handshakes per second on one core.
    requirements.push(Requirement::at_most(
        Scenario::Connections,
        Target::GRIDMESH_MTLS,
        PerHop::CpuUsPerConnection,
        Bound::Absolute(500.0),
    ));
    requirements
}

impl Requirement {
    fn at_most(scenario: Scenario, subject: Target, figure: PerHop, bound: Bound) -> Self {
        Self {
            scenario,
            subject,
            figure,
            bound,
            strict: false,
        }
    }

    fn check(&self, per_hop: &[PerHopRow]) -> Check {
        let range = |target: Target| {
            find_per_hop(per_hop, &target.to_string(), self.scenario, self.figure).map(Range::of)
        };
        let gridmesh = range(self.subject);
        let (limit, bound_text) = match self.bound {
            Bound::Absolute(limit) => (Some(Range::point(limit)), format!("{limit}")),
            Bound::Times(factor, other) => (
                range(other)
                    // A target that measured as adding nothing (noise) is no yardstick.
                    .filter(|other| other.min > 0.0)
                    .map(|other| other.times(factor)),
                format!("{factor}x {other}"),
            ),
        };
        let verdict = match (gridmesh, limit) {
            (Some(g), Some(l)) => self.verdict(g, l),
            _ => Verdict::Unknown,
        };
        let comparison = if self.strict { "<" } else { "<=" };
        Check {
            requirement: format!(
                "{} {}: {} {comparison} {bound_text}",
                self.scenario.title(),
                self.subject,
                self.figure.label()
            ),
            gridmesh,
            limit,
            verdict,
        }
    }

    fn verdict(&self, gridmesh: Range, limit: Range) -> Verdict {
        let within = |value: f64, limit: f64| {
            if self.strict {
                value < limit
            } else {
                value <= limit
            }
        };
        if gridmesh.rounds.min(limit.rounds) < 2 {
            // One round shows no spread: nothing to tell a result from noise.
            Verdict::Inconclusive
        } else if within(gridmesh.max, limit.min) {
            Verdict::Met
        } else if !within(gridmesh.min, limit.max) {
            Verdict::Missed
        } else {
            Verdict::Inconclusive
        }
    }
}
