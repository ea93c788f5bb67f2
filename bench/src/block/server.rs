//! The server under test: the release `gridmesh-block`, built from this
//! workspace, serving a repository of two copies of the test CNN (one with
//! the dynamic batcher, one without), started pinned to its own cores.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gridmesh_tests::process::{
    CargoOutput, GRIDMESH_BLOCK, Profile, admin_get, build_all, strip_ansi, workspace_root,
};
use serde::Serialize;

use super::cpus::pin_current_thread_to;

/// The model with the dynamic batcher, as `make_test_models.py` writes it.
pub const BATCHING_MODEL: &str = "cnn";
/// The same TorchScript file with the `dynamic_batching` block removed:
/// Triton's default scheduler, every request is a forward of its own.
pub const NO_BATCHING_MODEL: &str = "cnn_nobatch";

/// Loading two TorchScript models takes a second or two; CUDA's first
/// initialisation can take much longer.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
/// SIGTERM drains: accepted requests are answered first.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The release `gridmesh-block`, built with the workspace's other binaries
/// (a no-op when up to date), so the figures are of the current sources.
pub fn build() -> Result<PathBuf> {
    eprintln!("building gridmesh-block (release)...");
    build_all(Profile::Release, CargoOutput::Progress)?
        .remove(&GRIDMESH_BLOCK)
        .context("cargo reported no gridmesh-block executable")
}

/// The batching model's settings, read back from the config the benchmark
/// serves, for the report and the queue-delay check.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: &'static str,
    pub input: &'static str,
    pub max_batch_size: usize,
    pub max_queue_delay_us: u64,
    pub preferred_batch_sizes: Vec<usize>,
    /// `instance_group` is left out: one instance, KIND_AUTO (the GPU when
    /// libtorch sees one, else the CPU).
    pub instances: &'static str,
}

/// Generates the test models with `make_test_models.py` and builds the
/// benchmark's own repository from its `cnn`: `cnn` unchanged but for the
/// instance group, and `cnn_nobatch` without `dynamic_batching`.
pub fn prepare_repository(work_dir: &Path) -> Result<(PathBuf, ModelInfo)> {
    let source = work_dir.join("test-models");
    let _ = std::fs::remove_dir_all(&source);
    gridmesh_tests::test_models::build(&source)?;
    let config = std::fs::read_to_string(source.join("cnn/config.pbtxt"))
        .context("make_test_models.py wrote no cnn/config.pbtxt")?;
    let repository = work_dir.join("models");
    let _ = std::fs::remove_dir_all(&repository);
    let mut info = None;
    for (name, batching) in [(BATCHING_MODEL, true), (NO_BATCHING_MODEL, false)] {
        let (text, parsed) = rewrite_config(&config, name, batching)?;
        let dir = repository.join(name);
        std::fs::create_dir_all(dir.join("1"))?;
        std::fs::write(dir.join("config.pbtxt"), text)?;
        std::fs::copy(source.join("cnn/1/model.pt"), dir.join("1/model.pt"))
            .context("copying cnn/1/model.pt")?;
        if batching {
            info = Some(parsed);
        }
    }
    Ok((repository, info.expect("the batching model is written")))
}

/// The cnn's config under `name`, without `instance_group` and, unless
/// `batching`, without `dynamic_batching`. The script writes each of those
/// blocks on one line; anything else is refused rather than half-edited.
fn rewrite_config(config: &str, name: &str, batching: bool) -> Result<(String, ModelInfo)> {
    let mut text = String::new();
    let mut max_batch_size = None;
    let mut batching_line = None;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("name:") {
            text.push_str(&format!("name: \"{name}\"\n"));
            continue;
        }
        if let Some(value) = trimmed.strip_prefix("max_batch_size:") {
            max_batch_size = Some(value.trim().parse::<usize>()?);
        }
        let block = ["instance_group", "dynamic_batching"]
            .into_iter()
            .find(|block| trimmed.starts_with(block));
        if let Some(block) = block {
            ensure!(
                trimmed.ends_with('}') || trimmed.ends_with(']'),
                "cnn/config.pbtxt: {block} spans several lines; the benchmark expects it on one"
            );
            if block == "dynamic_batching" {
                batching_line = Some(trimmed.to_owned());
                if batching {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    let batching_line = batching_line.context("cnn/config.pbtxt has no dynamic_batching")?;
    let info = ModelInfo {
        name: BATCHING_MODEL,
        input: "image FP32 [3,32,32], one image per request",
        max_batch_size: max_batch_size.context("cnn/config.pbtxt has no max_batch_size")?,
        max_queue_delay_us: number_after(&batching_line, "max_queue_delay_microseconds:")
            .unwrap_or(0),
        preferred_batch_sizes: list_after(&batching_line, "preferred_batch_size:"),
        instances: "one instance, KIND_AUTO (the GPU when libtorch sees one)",
    };
    Ok((text, info))
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = text.split(key).nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn list_after(text: &str, key: &str) -> Vec<usize> {
    let Some(rest) = text.split(key).nth(1) else {
        return Vec::new();
    };
    let Some(list) = rest
        .split_once('[')
        .and_then(|(_, list)| list.split_once(']'))
    else {
        return Vec::new();
    };
    list.0
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// What libtorch (the `torch` package in `.venv`, whose libraries the
/// server links) sees: the server puts a KIND_AUTO instance on the first
/// CUDA device when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// "cpu" or "cuda".
    pub kind: String,
    pub name: String,
    pub torch_version: String,
}

impl DeviceInfo {
    pub fn is_gpu(&self) -> bool {
        self.kind == "cuda"
    }

    pub fn label(&self) -> String {
        format!("{} ({})", self.kind, self.name)
    }
}

pub fn detect_device(cpu_model: &str) -> DeviceInfo {
    let python = workspace_root().join(".venv/bin/python");
    let probe = "import torch\n\
                 cuda = torch.cuda.is_available()\n\
                 print(torch.__version__)\n\
                 print('cuda' if cuda else 'cpu')\n\
                 print(torch.cuda.get_device_name(0) if cuda else '')\n";
    let output = Command::new(&python).args(["-c", probe]).output();
    let lines: Vec<String> = match &output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    match lines.as_slice() {
        [version, kind, name, ..] if kind == "cuda" => DeviceInfo {
            kind: "cuda".into(),
            name: name.clone(),
            torch_version: version.clone(),
        },
        [version, ..] => DeviceInfo {
            kind: "cpu".into(),
            name: cpu_model.to_owned(),
            torch_version: version.clone(),
        },
        [] => {
            eprintln!(
                "could not ask {} which device libtorch sees; assuming the CPU",
                python.display()
            );
            DeviceInfo {
                kind: "cpu".into(),
                name: cpu_model.to_owned(),
                torch_version: "unknown".into(),
            }
        }
    }
}

/// A running `gridmesh-block`, killed if still running when dropped.
pub struct BlockServer {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    log: PathBuf,
}

impl BlockServer {
    /// Starts the server pinned to `cores` and waits until `/v2/health/ready`
    /// answers 200 (every model loaded).
    pub async fn start(
        binary: &Path,
        repository: &Path,
        torch_threads: usize,
        cores: &[usize],
        log: &Path,
    ) -> Result<Self> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--model-repository")
            .arg(repository)
            .args([
                "--grpc-address",
                "127.0.0.1:0",
                "--http-address",
                "127.0.0.1:0",
                "--log",
                "info",
                "--torch-threads",
                &torch_threads.to_string(),
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0);
        let cores = cores.to_vec();
        // SAFETY: the closure runs between fork and exec and only makes the
        // sched_setaffinity system call, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || pin_current_thread_to(&cores));
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = Self {
            child,
            grpc: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "gridmesh-block exited ({status}) while starting:\n{}",
                    server.log_tail()
                );
            }
            if server.grpc.port() == 0
                && let Some((grpc, http)) = listening_addresses(&server.log_text())
            {
                server.grpc = grpc;
                server.http = http;
            }
            if server.grpc.port() != 0
                && admin_get(server.http, "/v2/health/ready")
                    .await
                    .is_ok_and(|response| response.status == 200)
            {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                bail!(
                    "gridmesh-block was not ready within {START_TIMEOUT:?}:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM (the server drains), then SIGKILL after the grace period.
    /// Returns how it ended, for the report.
    pub async fn stop(mut self) -> String {
        // SAFETY: kill with a pid of our own child and a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("still running {STOP_GRACE:?} after SIGTERM; killed")
    }
}

impl Drop for BlockServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `gridmesh-block listening grpc_addr=IP:PORT http_addr=IP:PORT`.
fn listening_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = log
        .lines()
        .find(|line| line.contains("gridmesh-block listening"))?;
    let field = |name: &str| -> Option<SocketAddr> {
        let value = line.split(&format!("{name}=")).nth(1)?;
        value
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .parse()
            .ok()
    };
    Some((field("grpc_addr")?, field("http_addr")?))
}

/// The log's WARN and ERROR lines: a clean run has none.
pub fn log_problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNN: &str = "name: \"cnn\"\nplatform: \"pytorch_libtorch\"\nmax_batch_size: 64\n\
        input [\n  { name: \"image\" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }\n]\n\
        output [\n  { name: \"logits\" data_type: TYPE_FP32 dims: [ 10 ] }\n]\n\
        dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [ 16, 32 ] }\n\
        instance_group [ { count: 1 kind: KIND_CPU } ]\n";

    #[test]
    fn rewrites_the_cnn_config() {
        let (batching, info) = rewrite_config(CNN, "cnn", true).unwrap();
        assert!(batching.contains("dynamic_batching"));
        assert!(!batching.contains("instance_group"));
        assert_eq!(info.max_batch_size, 64);
        assert_eq!(info.max_queue_delay_us, 2000);
        assert_eq!(info.preferred_batch_sizes, vec![16, 32]);
        let (plain, _) = rewrite_config(CNN, "cnn_nobatch", false).unwrap();
        assert!(plain.starts_with("name: \"cnn_nobatch\"\n"));
        assert!(!plain.contains("dynamic_batching"));
        assert!(plain.contains("max_batch_size: 64"));
    }

    #[test]
    fn reads_the_listening_line() {
        let log = "2026-11-21T00:00:00Z  INFO gridmesh_block::server: gridmesh-block listening \
                   grpc_addr=127.0.0.1:4001 http_addr=127.0.0.1:4002\n";
        let (grpc, http) = listening_addresses(log).unwrap();
        assert_eq!((grpc.port(), http.port()), (4001, 4002));
    }
}
