//! `gridmesh-bench xds`: the control plane's convergence at fleet scale and
//! the sidecar's cost of applying an update, with the targets.
//! See docs/benchmark.md.

mod apply;
mod convergence;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

impl Percentiles {
    /// Of durations, in milliseconds.
    fn of(samples: &mut [Duration]) -> Percentiles {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            samples.get(index).copied().map_or(f64::NAN, ms)
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().map_or(f64::NAN, ms),
            samples: samples.len(),
        }
    }
}

#[derive(Serialize)]
struct Report {
    started_at: String,
    revision: Option<String>,
    quick: bool,
    convergence: convergence::Figures,
    apply: apply::Figures,
}

pub fn run(quick: bool, repo: &Path, bench_dir: &Path) -> Result<()> {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let work_dir = bench_dir.join("xds-work");
    std::fs::create_dir_all(&work_dir)?;
    crate::machine::raise_open_file_limit().context("raising the open-file limit")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (convergence, apply) = runtime.block_on(async {
        let settings = if quick {
            convergence::Settings::quick()
        } else {
            convergence::Settings::full()
        };
        eprintln!(
            "convergence: {} simulated sidecars, {} clusters",
            settings.clients, settings.clusters
        );
        let convergence = convergence::run(&settings, &work_dir).await?;
        println!("{}", convergence::describe(&convergence));
        let settings = if quick {
            apply::Settings::quick()
        } else {
            apply::Settings::full()
        };
        eprintln!("sidecar apply: {} endpoints", settings.endpoints);
        let apply = apply::run(&settings).await?;
        println!("{}", apply::describe(&apply));
        anyhow::Ok((convergence, apply))
    })?;
    let report = Report {
        started_at,
        revision: crate::install::workspace_revision(repo),
        quick,
        convergence,
        apply,
    };
    let path = bench_dir.join("xds-latest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nJSON: {}", path.display());
    Ok(())
}

/// A port nothing listens on right now, for a child process to bind.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
