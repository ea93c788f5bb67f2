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

/// One requirement: gridmesh's figure must not exceed `bound`.
struct Requirement {
    scenario: Scenario,
    hops: u8,
    figure: PerHop,
    bound: Bound,
    strict: bool,
}

enum Bound {
    Absolute(f64),
    TimesPeer(f64, ProxyKind),
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
        for scenario in [Scenario::Http1, Scenario::GrpcUnary] {
            for figure in [PerHop::AddedP50Us, PerHop::AddedP99Us] {
                requirements.push(Requirement::at_most(
                    scenario,
                    hops,
                    figure,
                    Bound::TimesPeer(0.7, ProxyKind::Envoy),
                ));
                requirements.push(Requirement::at_most(
                    scenario,
                    hops,
                    figure,
                    Bound::TimesPeer(1.0, ProxyKind::Haproxy),
                ));
            }
            let cpu = PerHop::CpuUsPerRequest;
            requirements.push(Requirement::at_most(
                scenario,
                hops,
                cpu,
                Bound::TimesPeer(0.5, ProxyKind::Envoy),
            ));
            requirements.push(Requirement::at_most(
                scenario,
                hops,
                cpu,
                Bound::TimesPeer(1.0, ProxyKind::Haproxy),
            ));
        }
        requirements.push(Requirement {
            strict: true,
            ..Requirement::at_most(
                Scenario::GrpcStream,
                hops,
                PerHop::AddedUsPerStreamMessage,
                Bound::Absolute(5.0),
            )
        });
    }
    requirements.push(Requirement::at_most(
        Scenario::Memory,
        1,
        PerHop::PssIdleMib,
        Bound::Absolute(20.0),
    ));
    requirements.push(Requirement::at_most(
        Scenario::Memory,
        1,
        PerHop::PssOpenStreamsMib,
        Bound::Absolute(50.0),
    ));
    requirements
}

impl Requirement {
    fn at_most(scenario: Scenario, hops: u8, figure: PerHop, bound: Bound) -> Self {
        Self {
            scenario,
            hops,
            figure,
            bound,
            strict: false,
        }
    }

    fn check(&self, per_hop: &[PerHopRow]) -> Check {
        let range = |target: Target| {
            find_per_hop(per_hop, &target.to_string(), self.scenario, self.figure).map(Range::of)
        };
        let gridmesh = range(Target::through(ProxyKind::Gridmesh, self.hops));
        let (limit, bound_text) = match self.bound {
            Bound::Absolute(limit) => (Some(Range::point(limit)), format!("{limit}")),
            Bound::TimesPeer(factor, peer) => (
                range(Target::through(peer, self.hops))
                    // A peer that measured as adding nothing (noise) is no yardstick.
                    .filter(|peer| peer.min > 0.0)
                    .map(|peer| peer.times(factor)),
                format!("{factor}x {}", peer.name()),
            ),
        };
        let verdict = match (gridmesh, limit) {
            (Some(g), Some(l)) => self.verdict(g, l),
            _ => Verdict::Unknown,
        };
        let comparison = if self.strict { "<" } else { "<=" };
        Check {
            requirement: format!(
                "{} x{}: {} {comparison} {bound_text}",
                self.scenario.title(),
                self.hops,
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
