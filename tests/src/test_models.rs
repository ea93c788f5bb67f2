//! The block server's test models: small TorchScript models in a Triton-style
//! repository, built by `block/models/make_test_models.py` with the project's
//! `.venv` Python (where `cargo xtask` installed PyTorch), for the block
//! server's tests, the demo and the benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::workspace_root;

pub fn script() -> PathBuf {
    workspace_root().join("block/models/make_test_models.py")
}

/// Writes the repository and its `expected.json` into `out_dir`.
pub fn build(out_dir: &Path) -> Result<()> {
    let python = workspace_root().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(script())
        .arg(out_dir)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (run `cargo xtask test` once to create .venv)",
                python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script().display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
