//! The product owner's targets for gridmesh, checked against this run's
//! medians. A target that needs a peer the run did not measure is reported
//! as unknown, never as passed.

use serde::Serialize;

use super::{PerHopRow, find_per_hop};
use crate::results::Scenario;
use crate::targets::{ProxyKind, Target};

use super::per_hop::PerHop;

#[derive(Debug, Serialize)]
pub struct Check {
    pub requirement: String,
    pub gridmesh: Option<f64>,
    pub limit: Option<f64>,
    /// `None`: a figure it needs was not measured.
    pub pass: Option<bool>,
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
        Scenario::Rss,
        1,
        PerHop::RssIdleMib,
        Bound::Absolute(20.0),
    ));
    requirements.push(Requirement::at_most(
        Scenario::Rss,
        1,
        PerHop::RssOpenStreamsMib,
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
        let median = |target: Target| {
            find_per_hop(per_hop, &target.to_string(), self.scenario, self.figure).map(|s| s.median)
        };
        let gridmesh = median(Target::through(ProxyKind::Gridmesh, self.hops));
        let (limit, bound_text) = match self.bound {
            Bound::Absolute(limit) => (Some(limit), format!("{limit}")),
            Bound::TimesPeer(factor, peer) => (
                median(Target::through(peer, self.hops))
                    // A peer that measured as adding nothing (noise) is no yardstick.
                    .filter(|&value| value > 0.0)
                    .map(|value| factor * value),
                format!("{factor}x {}", peer.name()),
            ),
        };
        let pass = match (gridmesh, limit) {
            (Some(value), Some(limit)) if self.strict => Some(value < limit),
            (Some(value), Some(limit)) => Some(value <= limit),
            _ => None,
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
            pass,
        }
    }
}
