//! The project's own commands, run as `cargo xtask <command>` (the alias is
//! in `.cargo/config.toml`). A fresh machine with only the Rust toolchain runs
//! both: each command first installs what it needs (see [`setup`]).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod demo;
mod dependencies;
mod setup;
mod test_suite;

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gridmesh's project commands", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

/// Each command is also the key its prerequisites are declared under in [`setup`].
#[derive(Subcommand, Clone, Copy, PartialEq, Eq, Debug)]
enum Task {
    /// Run a local mesh on loopback (two sample blocks, their sidecars and a
    /// client sidecar), send HTTP/1.1, h2c and gRPC traffic through it, and
    /// print a summary. Exits non-zero unless every request succeeded.
    Demo,
    /// Run everything CI runs: rustfmt, clippy with warnings denied, and the
    /// workspace's tests. Exits non-zero naming the step that failed.
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = setup::ensure(cli.command).and_then(|()| match cli.command {
        Task::Demo => demo::run(),
        Task::Test => test_suite::run(),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "\ncargo xtask {}: FAILED: {error:#}",
                command_name(cli.command)
            );
            ExitCode::FAILURE
        }
    }
}

fn command_name(task: Task) -> &'static str {
    match task {
        Task::Demo => "demo",
        Task::Test => "test",
    }
}

/// The workspace root: commands run from there wherever cargo was invoked.
fn workspace_root() -> &'static Path {
    gridmesh_tests::process::workspace_root()
}

/// The cargo that runs this xtask, so nested builds use the same toolchain.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs `command` with inherited output, printing it first; fails unless it
/// exits with status 0.
fn run_visibly(command: &mut Command) -> Result<()> {
    let shown = show(command);
    println!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` exited with {status}");
    }
    Ok(())
}

/// Whether `command` runs and exits with status 0, with its output hidden.
fn succeeds_quietly(command: &mut Command) -> bool {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn show(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ")
}
