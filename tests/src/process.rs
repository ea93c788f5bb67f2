//! Runs gridmesh's real binaries, for the end-to-end tests and `cargo xtask demo`.
//!
//! - [`binary`] / [`build_all`]: a workspace binary that matches the sources. Tests
//!   cannot use `env!("CARGO_BIN_EXE_...")` for binaries of other crates, so
//!   cargo builds them here (a no-op when nothing changed) and reports where
//!   it put them, which also honours `CARGO_TARGET_DIR` and `build.target-dir`.
//! - [`ManagedProcess`]: a child whose stdout and stderr are captured for
//!   assertions, stopped with SIGTERM and a grace period, and killed when the
//!   handle is dropped, so a failing test or demo leaves no process behind.
//! - [`ProxyProcess`]: `gridmesh-proxy --config <file>` (a file, or YAML
//!   written to a temporary file), ready once its admin `/ready` answers 200.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridmesh_proto::config::Bootstrap;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Where the admin server listens when the bootstrap names no address.
const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
/// How often readiness is polled while waiting for a child to come up.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on one admin request, so a wedged proxy fails a test instead of hanging it.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the output readers may lag behind a child's exit: they finish at
/// end of file, which a grandchild holding the pipes open would postpone.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The cargo profile binaries are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// The profile this crate was compiled with, so that debug tests run debug
    /// binaries and `cargo test --release` runs release ones.
    pub fn of_this_build() -> Self {
        if cfg!(debug_assertions) {
            Profile::Debug
        } else {
            Profile::Release
        }
    }
}

/// Whether cargo's progress is shown while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CargoOutput {
    /// Only warnings and errors (tests: the build is usually a no-op).
    Quiet,
    /// Cargo's usual progress lines (the demo's release build takes minutes).
    Progress,
}

/// A binary target of a workspace package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkspaceBinary {
    pub package: &'static str,
    pub name: &'static str,
}

/// The sidecar proxy.
pub const GRIDMESH_PROXY: WorkspaceBinary = WorkspaceBinary {
    package: "gridmesh-proxy",
    name: "gridmesh-proxy",
};

/// The control plane.
pub const GRIDMESH_CONTROL: WorkspaceBinary = WorkspaceBinary {
    package: "gridmesh-xds",
    name: "gridmesh-control",
};

/// The sample upstream (HTTP endpoints + gRPC Echo), see [`crate::upstream`].
pub const SAMPLE_BLOCK: WorkspaceBinary = WorkspaceBinary {
    package: "gridmesh-tests",
    name: "sample-block",
};

/// The block server (KServe v2 over gRPC, TorchScript models).
pub const GRIDMESH_BLOCK: WorkspaceBinary = WorkspaceBinary {
    package: "gridmesh-block",
    name: "gridmesh-block",
};

/// The root of the workspace this crate belongs to.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
}

/// An executable of the project's Python environment (`.venv`, which
/// `cargo xtask demo|test` create): `python`, or a tool installed there from
/// PyPI such as `grpcurl`.
pub fn venv_bin(name: &str) -> PathBuf {
    workspace_root().join(".venv/bin").join(name)
}

/// Time a process's threads have spent on a CPU, from each thread's
/// `schedstat` (nanoseconds; `stat`'s 10 ms ticks are too coarse for short
/// windows). Threads that have exited no longer count.
pub fn cpu_time(pid: u32) -> Duration {
    let nanos: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Every binary the harness runs. They are always built together, by one
/// cargo command, so that every caller (tests, `cargo xtask test` before the
/// tests, the demo) resolves the same features and reuses the same artifacts.
pub const WORKSPACE_BINARIES: &[WorkspaceBinary] = &[
    GRIDMESH_PROXY,
    GRIDMESH_CONTROL,
    SAMPLE_BLOCK,
    GRIDMESH_BLOCK,
];

/// Path of `binary` built with this crate's profile, up to date with the
/// sources. Cargo runs once per process; later calls reuse its answer.
pub fn binary(binary: WorkspaceBinary) -> Result<PathBuf> {
    // Holding the lock while cargo runs makes concurrent callers wait for one
    // build instead of each queueing on cargo's own lock.
    static BUILT: Mutex<Option<HashMap<WorkspaceBinary, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = match &mut *built {
        Some(built) => built,
        None => built.insert(build_all(Profile::of_this_build(), CargoOutput::Quiet)?),
    };
    built
        .get(&binary)
        .cloned()
        .with_context(|| format!("{} is not in WORKSPACE_BINARIES", binary.name))
}

/// Builds [`WORKSPACE_BINARIES`] and returns where cargo put each one.
pub fn build_all(
    profile: Profile,
    output: CargoOutput,
) -> Result<HashMap<WorkspaceBinary, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped());
    if profile == Profile::Release {
        command.arg("--release");
    }
    if output == CargoOutput::Quiet {
        command.arg("--quiet");
    }
    for binary in WORKSPACE_BINARIES {
        command.args(["--package", binary.package, "--bin", binary.name]);
    }
    let mut cargo_process = command.spawn().context("cannot run cargo")?;
    let stdout = cargo_process.stdout.take().expect("stdout is piped");

    #[derive(serde::Deserialize)]
    struct ArtifactMessage {
        reason: String,
        target: Option<ArtifactTarget>,
        executable: Option<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct ArtifactTarget {
        name: String,
    }
    let mut executables = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        let Ok(message) = serde_json::from_str::<ArtifactMessage>(&line) else {
            continue;
        };
        if let (Some(target), Some(executable)) = (message.target, message.executable)
            && message.reason == "compiler-artifact"
        {
            executables.insert(target.name, executable);
        }
    }
    let status = cargo_process.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("building the workspace binaries failed: cargo build exited with {status}");
    }
    WORKSPACE_BINARIES
        .iter()
        .map(|binary| {
            let path = executables
                .remove(binary.name)
                .with_context(|| format!("cargo built no executable named {}", binary.name))?;
            Ok((*binary, path))
        })
        .collect()
}

/// A child process with captured output that is killed if still running when
/// the handle is dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    output_readers: Vec<JoinHandle<()>>,
}

impl ManagedProcess {
    /// Starts `program` with `args`; `name` labels it in errors. Must be
    /// called inside a tokio runtime.
    pub fn spawn<I, S>(name: impl Into<String>, program: &Path, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let name = name.into();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let output_readers = vec![
            tokio::spawn(capture_lines(stdout, output.clone())),
            tokio::spawn(capture_lines(stderr, output.clone())),
        ];
        Ok(ManagedProcess {
            name,
            child,
            output,
            output_readers,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the process wrote to stdout and stderr so far, line by line
    /// in the order the lines were read.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check whether {} is running", self.name))
    }

    /// Waits until the process exits on its own; kills it and fails after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("waiting for {}", self.name))?;
                self.finish_output().await;
                Ok(status)
            }
            Err(_) => {
                self.kill().await;
                bail!("{} did not exit within {timeout:?}; killed it", self.name)
            }
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit; after
    /// that it is killed and this fails, since it did not stop cleanly.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            self.finish_output().await;
            return Ok(status);
        }
        let pid = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            .with_context(|| format!("{} has no process id", self.name))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("cannot send SIGTERM to {}", self.name))?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let status = status.with_context(|| format!("waiting for {}", self.name))?;
                self.finish_output().await;
                Ok(status)
            }
            Err(_) => {
                self.kill().await;
                bail!("{} still ran {grace:?} after SIGTERM; killed it", self.name)
            }
        }
    }

    /// Waits until something accepts TCP connections on `address`; fails if
    /// the process exits first or `timeout` passes.
    pub async fn wait_listening(&mut self, address: SocketAddr, timeout: Duration) -> Result<()> {
        self.poll_until_ready(timeout, &format!("listening on {address}"), || async move {
            TcpStream::connect(address).await.is_ok()
        })
        .await
    }

    /// Waits until the process writes a line containing `pattern` and
    /// returns that line; fails if it exits first or `timeout` passes.
    pub async fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let output = self.output.clone();
        let find = move || {
            let text = output.lock().unwrap_or_else(|e| e.into_inner());
            strip_ansi(&text)
                .lines()
                .find(|l| l.contains(pattern))
                .map(str::to_string)
        };
        self.poll_until_ready(timeout, &format!("printing {pattern:?}"), || {
            let ready = find().is_some();
            async move { ready }
        })
        .await?;
        find().with_context(|| format!("{} printed no line with {pattern:?}", self.name))
    }

    /// Polls `is_ready` until it holds. On failure the error carries the
    /// process's output, which usually says why.
    async fn poll_until_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut is_ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status()? {
                self.finish_output().await;
                bail!(
                    "{} exited ({status}) before {what}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            if is_ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} was not {what} after {timeout:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Kills the process (SIGKILL) and collects its remaining output.
    pub async fn kill(&mut self) {
        // An error here means the process is already gone, which is the goal.
        let _ = self.child.kill().await;
        self.finish_output().await;
    }

    /// Lets the readers take in the last lines a process wrote before it exited.
    async fn finish_output(&mut self) {
        for reader in self.output_readers.drain(..) {
            let abort = reader.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, reader)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        for reader in &self.output_readers {
            reader.abort();
        }
        // `kill_on_drop` sends SIGKILL to a child that is still running.
    }
}

async fn capture_lines(stream: impl AsyncRead + Unpin, output: Arc<Mutex<String>>) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    // A read error ends capture like end of file does: the child is gone.
    while reader.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
        let text = String::from_utf8_lossy(&line);
        let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
        output.push_str(&text);
        if !text.ends_with('\n') {
            output.push('\n');
        }
        line.clear();
    }
}

/// Where a proxy's bootstrap configuration comes from.
#[derive(Debug, Clone)]
pub enum ProxyConfig {
    /// A bootstrap file on disk, e.g. one of `examples/`.
    File(PathBuf),
    /// Bootstrap YAML, written to a temporary file for the proxy's lifetime.
    Yaml(String),
}

/// A running `gridmesh-proxy --config <file>`.
#[derive(Debug)]
pub struct ProxyProcess {
    process: ManagedProcess,
    config_text: String,
    config_path: PathBuf,
    /// Keeps a [`ProxyConfig::Yaml`] file alive until the proxy is dropped.
    _temporary_config: Option<tempfile::NamedTempFile>,
    /// The admin address it bound, read from its log once it served.
    admin: Option<SocketAddr>,
}

/// A response from the proxy's admin server.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    pub status: u16,
    pub body: String,
}

impl ProxyProcess {
    /// Starts the proxy and waits until its admin `/ready` answers 200.
    pub async fn start(
        program: &Path,
        name: impl Into<String>,
        config: ProxyConfig,
        timeout: Duration,
    ) -> Result<Self> {
        Self::start_with_args(program, name, config, &[], timeout).await
    }

    /// [`ProxyProcess::start`] with more command-line arguments, e.g.
    /// `--workers 1`.
    pub async fn start_with_args(
        program: &Path,
        name: impl Into<String>,
        config: ProxyConfig,
        extra_args: &[&str],
        timeout: Duration,
    ) -> Result<Self> {
        let mut proxy = Self::spawn_with_args(program, name, config, extra_args)?;
        proxy.wait_ready(timeout).await?;
        Ok(proxy)
    }

    /// Starts the proxy without waiting for it: for tests that expect it to
    /// reject its configuration and exit.
    pub fn spawn(program: &Path, name: impl Into<String>, config: ProxyConfig) -> Result<Self> {
        Self::spawn_with_args(program, name, config, &[])
    }

    /// [`ProxyProcess::spawn`] with more command-line arguments.
    pub fn spawn_with_args(
        program: &Path,
        name: impl Into<String>,
        config: ProxyConfig,
        extra_args: &[&str],
    ) -> Result<Self> {
        let name = name.into();
        let (config_text, config_path, temporary_config) = match config {
            ProxyConfig::File(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                (text, path, None)
            }
            ProxyConfig::Yaml(text) => {
                let mut file = tempfile::Builder::new()
                    .prefix(&format!("{name}-"))
                    .suffix(".yaml")
                    .tempfile()
                    .context("cannot create a temporary bootstrap file")?;
                file.write_all(text.as_bytes())
                    .and_then(|()| file.flush())
                    .context("cannot write the temporary bootstrap file")?;
                (text, file.path().to_owned(), Some(file))
            }
        };
        let args = [OsStr::new("--config"), config_path.as_os_str()]
            .into_iter()
            .chain(extra_args.iter().map(OsStr::new));
        let process = ManagedProcess::spawn(name, program, args)?;
        Ok(ProxyProcess {
            process,
            config_text,
            config_path,
            _temporary_config: temporary_config,
            admin: None,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// The bootstrap file the proxy was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The bootstrap configuration, parsed.
    pub fn bootstrap(&self) -> Result<Bootstrap> {
        parse_bootstrap(&self.config_text)
            .with_context(|| format!("in {}", self.config_path.display()))
    }

    /// The admin server's address: the one it bound (port 0 in the
    /// bootstrap gets a free port) once [`Self::wait_ready`] has seen it,
    /// else the bootstrap's.
    pub fn admin_address(&self) -> Result<SocketAddr> {
        match self.admin {
            Some(admin) => Ok(admin),
            None => admin_address(&self.bootstrap()?),
        }
    }

    /// The address a listener bound, from the proxy's log (`listener
    /// serving`): with port 0 in the bootstrap, the port it was given.
    pub fn listener_address(&self, listener: &str) -> Result<SocketAddr> {
        let output = strip_ansi(&self.output());
        let line = output
            .lines()
            .rev()
            .find(|l| l.contains("listener serving") && log_field(l, "listener") == Some(listener))
            .with_context(|| format!("{} logged no serving listener {listener:?}", self.name()))?;
        log_field(line, "addr")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in {line:?}"))
    }

    /// Waits until admin `/ready` answers 200; fails with the proxy's output
    /// if it exits first or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let admin = self.wait_serving(timeout).await?;
        self.process
            .poll_until_ready(timeout, "ready", || async move {
                matches!(admin_get(admin, "/ready").await, Ok(response) if response.status == 200)
            })
            .await
    }

    /// Waits until the proxy serves (its admin server answers, ready or
    /// not) and returns the admin server's address.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<SocketAddr> {
        let serving = self
            .process
            .wait_for_line("gridmesh-proxy serving", timeout)
            .await?;
        let admin = log_field(&serving, "admin")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no admin address in {serving:?}"))?;
        self.admin = Some(admin);
        Ok(admin)
    }

    /// GET `path` (e.g. `/metrics`, `/clusters`) from the admin server.
    pub async fn admin_get(&self, path: &str) -> Result<AdminResponse> {
        let admin = self.admin_address()?;
        admin_get(admin, path)
            .await
            .with_context(|| format!("GET {path} from {}'s admin server", self.process.name()))
    }

    /// See [`ManagedProcess::output`].
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// See [`ManagedProcess::wait_for_line`]: for what the proxy logs
    /// before it is ready, or instead of becoming ready.
    pub async fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.process.wait_for_line(pattern, timeout).await
    }

    /// See [`ManagedProcess::wait_exit`]: for a proxy expected to stop on its
    /// own, e.g. with status 64 on invalid configuration.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// SIGKILL: the proxy dies at once, as a crash would.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// See [`ManagedProcess::terminate`]; `grace` should cover the bootstrap's
    /// drain timeout.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.process.terminate(grace).await
    }
}

/// The value of `name=value` in a log line (values without spaces).
pub fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
}

/// Parses bootstrap YAML the way the proxy does (proto3 JSON mapping).
pub fn parse_bootstrap(yaml: &str) -> Result<Bootstrap> {
    yaml_serde::from_str(yaml).context("invalid bootstrap YAML")
}

/// The admin server's address in `bootstrap`, or the proxy's default.
pub fn admin_address(bootstrap: &Bootstrap) -> Result<SocketAddr> {
    let address = bootstrap
        .admin
        .as_ref()
        .map(|admin| admin.address.as_str())
        .filter(|address| !address.is_empty())
        .unwrap_or(DEFAULT_ADMIN_ADDRESS);
    address
        .parse()
        .with_context(|| format!("admin address {address:?} is not ip:port"))
}

/// One HTTP/1.1 GET on a fresh connection, bounded by [`ADMIN_REQUEST_TIMEOUT`].
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<AdminResponse> {
    let exchange = async {
        let stream = TcpStream::connect(admin).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        anyhow::Ok(AdminResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer from {admin} within {ADMIN_REQUEST_TIMEOUT:?}"))?
}

/// How long the control plane may take to bind its ports.
const CONTROL_PLANE_START: Duration = Duration::from_secs(30);

/// Starts the control plane on `xds` and `admin` (port 0 allowed) and
/// returns it with the addresses it bound, read from its log. With port 0
/// nothing can take the port between picking and binding it.
pub async fn start_control_plane(
    dir: &Path,
    xds: SocketAddr,
    admin: SocketAddr,
) -> (ManagedProcess, SocketAddr, SocketAddr) {
    start_control_plane_with(dir, xds, admin, &[]).await
}

/// [`start_control_plane`] with more arguments to `serve` (e.g. `--ca-dir`).
pub async fn start_control_plane_with(
    dir: &Path,
    xds: SocketAddr,
    admin: SocketAddr,
    more: &[&str],
) -> (ManagedProcess, SocketAddr, SocketAddr) {
    let binary = binary(GRIDMESH_CONTROL).unwrap();
    let mut args = vec![
        "serve".to_string(),
        "--config-dir".into(),
        dir.display().to_string(),
        "--xds-address".into(),
        xds.to_string(),
        "--admin-address".into(),
        admin.to_string(),
        "--log".into(),
        "info".into(),
    ];
    args.extend(more.iter().map(|a| a.to_string()));
    let mut control = ManagedProcess::spawn("gridmesh-control", &binary, args).unwrap();
    let line = control
        .wait_for_line("control plane listening", CONTROL_PLANE_START)
        .await
        .unwrap();
    let field = |name: &str| -> SocketAddr {
        log_field(&line, name)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (xds, admin) = (field("xds_addr"), field("admin_addr"));
    (control, xds, admin)
}

/// A bootstrap token for `id` (`spiffe://<td>/ns/<ns>/sa/<sa>`) from the
/// real `gridmesh-control token` (`control`), signed with the key in `ca_dir`.
pub fn bootstrap_token(
    control: &Path,
    ca_dir: &Path,
    id: &gridmesh_identity::SpiffeId,
) -> Result<String> {
    let (namespace, service_account) = id
        .workload()
        .with_context(|| format!("{id} is not spiffe://<td>/ns/<ns>/sa/<sa>"))?;
    let out = std::process::Command::new(control)
        .arg("token")
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["--trust-domain", id.trust_domain()])
        .args([
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ])
        .output()
        .context("cannot run gridmesh-control token")?;
    if !out.status.success() {
        bail!(
            "gridmesh-control token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Log text without terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_TIMEOUT: Duration = Duration::from_secs(30);
    const STOP_GRACE: Duration = Duration::from_secs(10);

    use crate::ports::RefusingPort;

    const ANY_PORT: &str = "127.0.0.1:0";

    fn bootstrap_yaml(admin: &str, listener: &str, endpoint: SocketAddr) -> String {
        format!(
            "admin: {{ address: \"{admin}\" }}
drainTimeout: 1s
listeners:
  - {{ name: outbound, address: \"{listener}\", routeTable: all }}
routeTables:
  - name: all
    virtualHosts:
      - {{ name: any, domains: [\"*\"], routes: [{{ name: all, route: {{ cluster: block }} }}] }}
clusters:
  - {{ name: block }}
endpoints:
  - {{ cluster: block, endpoints: [{{ address: \"{endpoint}\" }}] }}
"
        )
    }

    #[tokio::test]
    async fn sample_block_serves_until_sigterm() {
        let args = ["--listen", ANY_PORT, "--name", "harness-test"];
        let mut block =
            ManagedProcess::spawn("sample-block", &binary(SAMPLE_BLOCK).unwrap(), args).unwrap();
        let line = block
            .wait_for_line("sample block listening", START_TIMEOUT)
            .await
            .unwrap();
        let address: SocketAddr = log_field(&line, "address").unwrap().parse().unwrap();
        block.wait_listening(address, START_TIMEOUT).await.unwrap();
        assert!(block.exit_status().unwrap().is_none());

        let status = block.terminate(STOP_GRACE).await.unwrap();
        assert!(status.success(), "{status}; output:\n{}", block.output());
        assert!(
            block.output().contains("harness-test"),
            "{}",
            block.output()
        );
    }

    #[tokio::test]
    async fn proxy_from_yaml_gets_ready_answers_admin_and_stops_on_sigterm() {
        let endpoint = RefusingPort::new();
        let yaml = bootstrap_yaml(ANY_PORT, ANY_PORT, endpoint.addr());
        let proxy_binary = binary(GRIDMESH_PROXY).unwrap();
        let mut proxy = ProxyProcess::start(
            &proxy_binary,
            "sidecar",
            ProxyConfig::Yaml(yaml),
            START_TIMEOUT,
        )
        .await
        .unwrap();
        // The address it bound, from its log.
        assert_ne!(proxy.admin_address().unwrap().port(), 0);
        let config_path = proxy.config_path().to_owned();
        assert!(config_path.exists());

        let ready = proxy.admin_get("/ready").await.unwrap();
        assert_eq!((ready.status, ready.body.trim()), (200, "ready"));

        let status = proxy.terminate(STOP_GRACE).await.unwrap();
        assert!(status.success(), "{status}; output:\n{}", proxy.output());
        drop(proxy);
        assert!(
            !config_path.exists(),
            "the temporary bootstrap file outlived the proxy"
        );
    }

    #[tokio::test]
    async fn proxy_with_invalid_config_exits_64_naming_the_field() {
        // Held ports: a proxy that bound before validating would fail to
        // bind and exit otherwise.
        let ports = [(); 3].map(|()| RefusingPort::new());
        let yaml = bootstrap_yaml(
            &ports[0].addr().to_string(),
            &ports[1].addr().to_string(),
            ports[2].addr(),
        )
        .replace("drainTimeout: 1s", "drainTimeout: soon");
        let proxy_binary = binary(GRIDMESH_PROXY).unwrap();
        let mut proxy =
            ProxyProcess::spawn(&proxy_binary, "sidecar", ProxyConfig::Yaml(yaml)).unwrap();

        let status = proxy.wait_exit(START_TIMEOUT).await.unwrap();
        let output = proxy.output();
        assert_eq!(status.code(), Some(64), "output:\n{output}");
        let file_name = proxy.config_path().to_string_lossy().into_owned();
        assert!(
            output.contains(&file_name),
            "output does not name {file_name}:\n{output}"
        );
        assert!(
            output.contains("drainTimeout") || output.contains("drain_timeout"),
            "{output}"
        );
    }

    #[tokio::test]
    async fn a_proxy_that_exits_early_fails_the_readiness_wait_with_its_output() {
        let admin = RefusingPort::new();
        let yaml = format!(
            "admin: {{ address: \"{}\" }}\nlisteners: [ {{ name: broken }} ]",
            admin.addr()
        );
        let proxy_binary = binary(GRIDMESH_PROXY).unwrap();
        let error = ProxyProcess::start(
            &proxy_binary,
            "sidecar",
            ProxyConfig::Yaml(yaml),
            START_TIMEOUT,
        )
        .await
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("sidecar exited"), "{message}");
        assert!(message.contains("broken"), "{message}");
    }
}
