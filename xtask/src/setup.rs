//! What the xtask commands need beyond the Rust toolchain, declared in one
//! table ([`REQUIREMENTS`]) and installed idempotently: every requirement of
//! the command being run is checked first, and only missing ones are
//! installed, so a fresh machine gets everything and a second run installs
//! nothing.
//!
//! To add a requirement, add a row; to add a new kind (a rustup target, a
//! Python venv in `<repo>/.venv`, Debian packages), add a [`Requirement`]
//! variant with a cheap check and an idempotent install. Debian packages
//! belong in one batch, installed after a single `apt-get update`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{Task, cargo, run_visibly, succeeds_quietly};

enum Requirement {
    /// `cargo <subcommand>` that a rustup component provides.
    RustupComponent {
        component: &'static str,
        cargo_subcommand: &'static str,
    },
    /// `cargo <subcommand>` built from a crates.io package.
    CargoInstall {
        package: &'static str,
        cargo_subcommand: &'static str,
    },
}

/// Every prerequisite, with the commands that need it.
const REQUIREMENTS: &[(Requirement, &[Task])] = &[
    (
        Requirement::RustupComponent {
            component: "rustfmt",
            cargo_subcommand: "fmt",
        },
        &[Task::Test],
    ),
    (
        Requirement::RustupComponent {
            component: "clippy",
            cargo_subcommand: "clippy",
        },
        &[Task::Test],
    ),
    (
        // Runs each test in its own process and ends with one summary line.
        Requirement::CargoInstall {
            package: "cargo-nextest",
            cargo_subcommand: "nextest",
        },
        &[Task::Test],
    ),
];

impl Requirement {
    fn is_met(&self) -> bool {
        match self {
            Requirement::RustupComponent {
                cargo_subcommand, ..
            }
            | Requirement::CargoInstall {
                cargo_subcommand, ..
            } => succeeds_quietly(cargo().args([cargo_subcommand, "--version"])),
        }
    }

    fn install(&self) -> Result<()> {
        match self {
            Requirement::RustupComponent { component, .. } => {
                run_visibly(Command::new("rustup").args(["component", "add", component]))
            }
            Requirement::CargoInstall { package, .. } => {
                run_visibly(cargo().args(["install", "--locked", package]))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Requirement::RustupComponent {
                component,
                cargo_subcommand,
            } => format!("cargo {cargo_subcommand} (rustup component {component})"),
            Requirement::CargoInstall {
                package,
                cargo_subcommand,
            } => format!("cargo {cargo_subcommand} (crates.io package {package})"),
        }
    }
}

/// Installs whatever `task` needs and the machine lacks.
pub fn ensure(task: Task) -> Result<()> {
    let needed = REQUIREMENTS
        .iter()
        .filter(|(_, tasks)| tasks.contains(&task))
        .map(|(requirement, _)| requirement);
    for requirement in needed.filter(|requirement| !requirement.is_met()) {
        println!("==> installing {}", requirement.describe());
        requirement.install()?;
        if !requirement.is_met() {
            bail!(
                "{} is still missing after installing it",
                requirement.describe()
            );
        }
    }
    Ok(())
}
