//! The run's report: absolute figures per target, figures per hop, gridmesh
//! as a ratio of each peer, and the product owner's targets checked, printed
//! as tables and written as JSON under `target/bench/`.

mod checks;
pub mod per_hop;
pub(crate) mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::install::ProxyStatus;
use crate::load::ErrorTally;
use crate::machine::MachineInfo;
use crate::results::{Figure, Results, Scenario, Summary};
use crate::settings::Settings;
use crate::targets::{Observe, ProxyKind, Target};
use checks::Check;
use per_hop::PerHop;

pub use table::print;

/// Everything about one run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub finished_at: String,
    /// The workspace commit gridmesh was built from.
    pub revision: Option<String>,
    pub quick: bool,
    pub machine: MachineInfo,
    pub settings: Settings,
    pub proxies: Vec<ProxyStatus>,
    pub scenarios: Vec<Scenario>,
    pub targets: Vec<TargetRow>,
    pub figures: Vec<FigureRow>,
    pub per_hop: Vec<PerHopRow>,
    pub errors: Vec<ErrorRow>,
    pub ratios: Vec<Ratio>,
    pub checks: Vec<Check>,
    /// Cores other processes kept busy while each target was measured: well
    /// above zero, the machine was not quiet and the figures are suspect.
    pub background_load: Vec<BackgroundRow>,
    /// Targets or scenarios that could not be measured, and why.
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BackgroundRow {
    pub target: String,
    pub round: u32,
    pub cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetRow {
    pub label: String,
    pub proxy: Option<ProxyKind>,
    pub hops: u8,
    pub mtls: bool,
    pub observe: Observe,
}

#[derive(Debug, Serialize)]
pub struct FigureRow {
    pub target: String,
    pub scenario: Scenario,
    pub figure: Figure,
    pub unit: &'static str,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct PerHopRow {
    pub target: String,
    pub scenario: Scenario,
    pub figure: PerHop,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct ErrorRow {
    pub target: String,
    pub scenario: Scenario,
    pub errors: ErrorTally,
}

/// gridmesh's median divided by a peer's, same scenario and hop count.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    pub hops: u8,
    pub figure: &'static str,
    pub peer: ProxyKind,
    pub gridmesh: f64,
    pub peer_value: f64,
    pub ratio: f64,
}

/// What the run was, besides its results.
pub struct RunContext {
    pub started_at: String,
    pub revision: Option<String>,
    pub quick: bool,
    pub machine: MachineInfo,
    pub settings: Settings,
    pub proxies: Vec<ProxyStatus>,
    pub scenarios: Vec<Scenario>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn build(context: RunContext, results: Results) -> Self {
        let stream_messages = context.settings.stream_messages;
        let figures = results
            .all()
            .filter_map(|(&(target, scenario, figure), rounds)| {
                Some(FigureRow {
                    target: target.to_string(),
                    scenario,
                    figure,
                    unit: figure.unit(),
                    summary: Summary::of(rounds.values().copied())?,
                })
            })
            .collect();
        let per_hop = context
            .targets
            .iter()
            .flat_map(|&target| {
                context.scenarios.iter().flat_map(move |&scenario| {
                    PerHop::of(scenario)
                        .iter()
                        .map(move |&figure| (target, scenario, figure))
                })
            })
            .filter_map(|(target, scenario, figure)| {
                Some(PerHopRow {
                    target: target.to_string(),
                    scenario,
                    figure,
                    summary: figure.summary(&results, target, scenario, stream_messages)?,
                })
            })
            .collect::<Vec<_>>();
        let errors = results
            .all_errors()
            .map(|(&(target, scenario), errors)| ErrorRow {
                target: target.to_string(),
                scenario,
                errors: errors.clone(),
            })
            .collect();
        let ratios = ratios(&context, &results);
        let background_load = results
            .background()
            .map(|(&(target, round), &cores)| BackgroundRow {
                target: target.to_string(),
                round: round + 1,
                cores,
            })
            .collect();
        let checks = checks::evaluate(&context.scenarios, &per_hop);
        Report {
            started_at: context.started_at,
            finished_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            revision: context.revision,
            quick: context.quick,
            machine: context.machine,
            settings: context.settings,
            proxies: context.proxies,
            scenarios: context.scenarios,
            targets: context
                .targets
                .iter()
                .map(|target| TargetRow {
                    label: target.to_string(),
                    proxy: target.proxy,
                    hops: target.hops,
                    mtls: target.mtls,
                    observe: target.observe,
                })
                .collect(),
            figures,
            per_hop,
            errors,
            ratios,
            checks,
            background_load,
            failures: results.failures,
        }
    }

    pub fn figure(&self, target: &str, scenario: Scenario, figure: Figure) -> Option<&Summary> {
        self.figures
            .iter()
            .find(|row| row.target == target && row.scenario == scenario && row.figure == figure)
            .map(|row| &row.summary)
    }

    pub fn per_hop(&self, target: &str, scenario: Scenario, figure: PerHop) -> Option<&Summary> {
        find_per_hop(&self.per_hop, target, scenario, figure)
    }

    /// Writes `<dir>/<started_at>.json` and `<dir>/latest.json`.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        let path = dir.join(format!("{}.json", self.started_at.replace(':', "-")));
        std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
        std::fs::write(dir.join("latest.json"), &json)?;
        Ok(path)
    }
}

fn find_per_hop<'a>(
    rows: &'a [PerHopRow],
    target: &str,
    scenario: Scenario,
    figure: PerHop,
) -> Option<&'a Summary> {
    rows.iter()
        .find(|row| row.target == target && row.scenario == scenario && row.figure == figure)
        .map(|row| &row.summary)
}

/// gridmesh / peer for every per-hop figure and for throughput.
fn ratios(context: &RunContext, results: &Results) -> Vec<Ratio> {
    let stream_messages = context.settings.stream_messages;
    let median = |target: Target, scenario: Scenario, figure: RatioFigure| match figure {
        RatioFigure::PerHop(figure) => figure
            .summary(results, target, scenario, stream_messages)
            .map(|s| s.median),
        RatioFigure::Absolute(figure) => results
            .rounds(target, scenario, figure)
            .and_then(|rounds| Summary::of(rounds.values().copied()))
            .map(|s| s.median),
    };
    let mut ratios = Vec::new();
    for &scenario in &context.scenarios {
        for hops in [1, 2] {
            let gridmesh = Target::through(ProxyKind::Gridmesh, hops);
            for figure in RatioFigure::of(scenario) {
                let Some(gridmesh_value) = median(gridmesh, scenario, figure) else {
                    continue;
                };
                for peer in ProxyKind::PEERS {
                    let Some(peer_value) = median(Target::through(peer, hops), scenario, figure)
                    else {
                        continue;
                    };
                    ratios.push(Ratio {
                        scenario,
                        hops,
                        figure: figure.label(),
                        peer,
                        gridmesh: gridmesh_value,
                        peer_value,
                        ratio: gridmesh_value / peer_value,
                    });
                }
            }
        }
    }
    ratios
}

#[derive(Clone, Copy)]
enum RatioFigure {
    PerHop(PerHop),
    Absolute(Figure),
}

impl RatioFigure {
    fn of(scenario: Scenario) -> Vec<RatioFigure> {
        let mut figures: Vec<_> = PerHop::of(scenario)
            .iter()
            .copied()
            .map(RatioFigure::PerHop)
            .collect();
        match scenario {
            Scenario::Http1 | Scenario::GrpcUnary => {
                figures.push(RatioFigure::Absolute(Figure::MaxRequestsPerS))
            }
            Scenario::GrpcStream => figures.push(RatioFigure::Absolute(Figure::MessagesPerS)),
            Scenario::Memory | Scenario::Connections => {}
        }
        figures
    }

    fn label(self) -> &'static str {
        match self {
            RatioFigure::PerHop(figure) => figure.label(),
            RatioFigure::Absolute(figure) => figure.label(),
        }
    }
}
