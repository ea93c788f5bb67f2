//! A proxy process started pinned to a core, its output kept in a log file,
//! stopped with SIGTERM (then SIGKILL) and killed if still running on drop.
//! Each proxy leads its own process group, so that signals reach the
//! processes it forks too (nginx's worker).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cgroup::TargetCgroup;
use crate::machine::pin_command;

const STOP_GRACE: Duration = Duration::from_secs(5);
const EXIT_POLL: Duration = Duration::from_millis(20);
/// How much of a log an error message quotes.
const LOG_TAIL_BYTES: usize = 2_000;

pub struct PinnedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl PinnedProcess {
    /// Starts `command` on `core`, born in `cgroup` (what it forks too).
    pub fn spawn(
        name: &str,
        mut command: Command,
        core: usize,
        cgroup: &TargetCgroup,
        log: &Path,
    ) -> Result<Self> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        command.process_group(0);
        pin_command(&mut command, core);
        cgroup.enter_at_exec(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The end of the process's output, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(LOG_TAIL_BYTES)..];
        format!(
            "{} ({}):\n{}",
            self.name,
            self.log.display(),
            String::from_utf8_lossy(tail)
        )
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub async fn stop(mut self) {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while self.exit_status().is_none() && Instant::now() < deadline {
            tokio::time::sleep(EXIT_POLL).await;
        }
        // Drop kills whatever is still running.
    }

    fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group id is
        // our child's pid, which cannot name anyone else's group before the
        // child is reaped; after that (Drop after stop) only members the
        // child forked can still be in the group.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
    }
}

impl Drop for PinnedProcess {
    fn drop(&mut self) {
        // Also reaches forked workers that outlived their parent.
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}
