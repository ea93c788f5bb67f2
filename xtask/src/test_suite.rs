//! `cargo xtask test`: the whole check CI runs, step by step, stopping at the
//! first step that fails and naming it.

use anyhow::{Context, Result};
use gridmesh_tests::process::{self, CargoOutput, Profile};

use crate::{cargo, run_visibly};

enum Action {
    /// `cargo <args>` from the workspace root.
    Cargo(&'static [&'static str]),
    /// The binaries the end-to-end tests run, built here once with visible
    /// progress rather than silently inside the first test that needs them.
    BuildEndToEndBinaries,
    /// Licences and duplicate versions of the dependencies (see
    /// [`crate::dependencies`]).
    CheckDependencies,
}

struct Step {
    name: &'static str,
    action: Action,
}

const STEPS: &[Step] = &[
    Step {
        name: "format",
        action: Action::Cargo(&["fmt", "--all", "--check"]),
    },
    Step {
        name: "lint",
        action: Action::Cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    },
    Step {
        name: "dependencies",
        action: Action::CheckDependencies,
    },
    Step {
        name: "doc tests",
        action: Action::Cargo(&["test", "--workspace", "--doc"]),
    },
    Step {
        name: "end-to-end binaries",
        action: Action::BuildEndToEndBinaries,
    },
    // Last, so that nextest's summary closes the output.
    Step {
        name: "tests",
        action: Action::Cargo(&["nextest", "run", "--workspace", "--no-fail-fast"]),
    },
];

pub fn run() -> Result<()> {
    for (index, step) in STEPS.iter().enumerate() {
        println!("\n==> [{}/{}] {}", index + 1, STEPS.len(), step.name);
        let outcome = match step.action {
            Action::Cargo(args) => run_visibly(cargo().args(args)),
            Action::BuildEndToEndBinaries => {
                process::build_all(Profile::Debug, CargoOutput::Progress).map(drop)
            }
            Action::CheckDependencies => crate::dependencies::check(),
        };
        outcome.with_context(|| format!("step \"{}\" failed", step.name))?;
    }
    Ok(())
}
