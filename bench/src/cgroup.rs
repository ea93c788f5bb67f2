//! A cgroup (v2) per measured target: every process of every hop is born
//! in it, so its `cpu.stat` counts their CPU time exactly — threads and
//! processes that exited during a run included, which per-thread counters
//! read from /proc miss — and its member list says whose memory to add up.
//!
//! Processes enter at exec (a pre-exec hook writes to `cgroup.procs`), so
//! that what they fork (nginx's worker) is born inside too. `cpu.stat`
//! needs no controller enabled, so this works on the v2 root or on a
//! hybrid host's `unified` mount alike.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const EMPTY_WAIT: Duration = Duration::from_secs(2);
const EMPTY_POLL: Duration = Duration::from_millis(10);

pub struct TargetCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, ready for the pre-exec hook (which must not allocate).
    procs: CString,
}

impl TargetCgroup {
    /// A new cgroup beside this process's own, named after the benchmark's
    /// pid and `name` (so a crashed run's leftovers can be told apart).
    pub fn create(name: &str) -> Result<Self> {
        let parent = own_cgroup().context(
            "the benchmark measures proxy CPU through a cgroup v2 (cgroup2 mount and root needed)",
        )?;
        let dir = parent.join(format!("gridmesh-bench-{}-{name}", std::process::id()));
        if dir.exists() {
            // A previous target of this run with the same name, not removed.
            remove(&dir);
        }
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .context("cgroup path with a NUL byte")?;
        Ok(Self { dir, procs })
    }

    /// Makes `command`'s process join this cgroup before it execs.
    pub fn enter_at_exec(&self, command: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: only async-signal-safe calls (open, write, close) on
        // memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
                Ok(())
            });
        }
    }

    /// CPU time of everything that ever ran in it (`usage_usec`).
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = self.dir.join("cpu.stat");
        let stat =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let usec = stat
            .lines()
            .find_map(|line| line.strip_prefix("usage_usec "))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("no usage_usec in {}", path.display()))?;
        Ok(Duration::from_micros(usec))
    }

    /// Proportional set size of its processes, in bytes: memory shared
    /// between them (nginx's master and worker, two hops of one binary) is
    /// counted once, not once per process as RSS would.
    pub fn pss_bytes(&self) -> Result<u64> {
        let pids = self.pids()?;
        if pids.is_empty() {
            bail!("no process left in {}", self.dir.display());
        }
        let mut total = 0;
        for pid in pids {
            let path = format!("/proc/{pid}/smaps_rollup");
            let rollup = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let kib = rollup
                .lines()
                .find_map(|line| line.strip_prefix("Pss:"))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .with_context(|| format!("no Pss in {path}"))?;
            total += kib * 1024;
        }
        Ok(total)
    }

    fn pids(&self) -> Result<Vec<u32>> {
        let path = self.dir.join("cgroup.procs");
        let procs =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }
}

impl Drop for TargetCgroup {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

/// Kills whatever is left in a cgroup and removes it.
fn remove(dir: &Path) {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + EMPTY_WAIT;
    while Instant::now() < deadline {
        let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l == "populated 1") {
            break;
        }
        std::thread::sleep(EMPTY_POLL);
    }
    if let Err(error) = fs::remove_dir(dir) {
        eprintln!("  warning: cgroup {} not removed: {error}", dir.display());
    }
}

/// This process's cgroup directory under the cgroup2 mount.
fn own_cgroup() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id parent major:minor root mountpoint options ... - fstype ...
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split_whitespace().next()? == "cgroup2")
                .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted")?;
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("this process is in no cgroup v2")?;
    Ok(mount.join(path.trim_start_matches('/')))
}
