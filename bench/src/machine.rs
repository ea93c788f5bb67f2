//! Where the benchmark's pieces run. The proxy under test gets a core of its
//! own; the load generator and the upstream share the other one. On these
//! VMs an idle vCPU can take over a millisecond to wake, so while latency is
//! measured a SCHED_IDLE spinner keeps the proxy's core awake (it yields to
//! any runnable thread at once), and the load generator spins on its own core
//! while it waits for the next send time (see `load::schedule`).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Result, bail};
use serde::Serialize;

/// The two cores the run uses.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Placement {
    /// Load generator and upstream.
    pub load_core: usize,
    /// Proxy under test (every hop of it).
    pub proxy_core: usize,
}

impl Placement {
    /// The first two CPUs this process may run on.
    pub fn choose() -> Result<Self> {
        let cpus = allowed_cpus()?;
        match cpus.as_slice() {
            [load_core, proxy_core, ..] => Ok(Self {
                load_core: *load_core,
                proxy_core: *proxy_core,
            }),
            _ => bail!(
                "the benchmark needs two CPUs (one for the proxy, one for load and upstream); \
                 this process may use {cpus:?}"
            ),
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread; threads it spawns afterwards inherit the pin.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    // SAFETY: as above; pid 0 is the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(core, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins every thread of a running process. Threads it creates later
/// inherit their creator's mask, so call this once it has started its
/// workers (a proxy that answers `/ready` has).
pub fn pin_process(pid: u32, core: usize) -> io::Result<()> {
    // SAFETY: as above, for each thread id of the process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(core, &mut set) };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        let rc = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `command`'s process start pinned to `core` (every thread it creates
/// inherits the mask), before it runs a single instruction of its own.
pub fn pin_command(command: &mut Command, core: usize) {
    // SAFETY: the closure runs between fork and exec and only makes the
    // sched_setaffinity system call, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || pin_current_thread(core));
    }
}

/// Lifts the soft limit on open files to the hard one: with 1,000 streams
/// open through nginx, the in-process upstream holds over 1,000 connections.
pub fn raise_open_file_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nice value of the load generator and the proxies (they inherit it).
const BENCH_NICE: libc::c_int = -10;

/// Gives the calling thread, and every thread and process it starts later,
/// a higher CPU share than ordinary jobs (nice -10), so that a build running
/// alongside disturbs the measurement less. Needs root (CAP_SYS_NICE);
/// returns whether it was granted.
pub fn raise_priority() -> bool {
    // SAFETY: setpriority on the calling thread (who 0) with a valid value.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BENCH_NICE) == 0 }
}

/// A thread at SCHED_IDLE priority that busy-loops on one core until dropped,
/// so that the core never drops into a deep idle state between requests.
pub struct IdleSpinner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IdleSpinner {
    pub fn start(core: usize) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("idle-spinner".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let setup = pin_current_thread(core).and_then(|()| become_sched_idle());
                    let ok = setup.is_ok();
                    // The receiver waits for this message; it cannot be gone.
                    let _ = started_tx.send(setup);
                    while ok && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
            })?;
        let setup = started_rx
            .recv()
            .map_err(|_| io::Error::other("idle spinner thread died while starting"))?;
        let spinner = Self {
            stop,
            thread: Some(thread),
        };
        setup.map(|()| spinner)
    }
}

fn become_sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for IdleSpinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the report says about the machine, so figures from different runs
/// are compared knowingly.
#[derive(Debug, Serialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    pub online_cpus: usize,
    pub kernel: String,
    pub placement: Placement,
    /// Whether the load generator and proxies ran at nice -10.
    pub raised_priority: bool,
}

impl MachineInfo {
    pub fn read(placement: Placement, raised_priority: bool) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        // Not available_parallelism: this process is pinned to one CPU by now.
        // SAFETY: sysconf has no preconditions.
        let online_cpus =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| "unknown".to_owned(),
            |release| release.trim().to_owned(),
        );
        Self {
            cpu_model,
            online_cpus,
            kernel,
            placement,
            raised_priority,
        }
    }
}
