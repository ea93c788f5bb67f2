//! Which cores the client and the server get, and the client's own CPU time.
//!
//! The CPUs this process may use are split in two halves: the load
//! generator runs on the first, the server (tokio, the batcher and its
//! instance thread, libtorch's intra-op threads) on the second. On the
//! 2-core VM that is one core each, so the two never take CPU from each
//! other and libtorch gets one intra-op thread (`--torch-threads 1`).

use std::io;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Split {
    pub client: Vec<usize>,
    pub server: Vec<usize>,
}

impl Split {
    pub fn choose() -> Result<Self> {
        let cpus = crate::machine::allowed_cpus()?;
        if cpus.len() < 2 {
            bail!(
                "the block benchmark needs two CPUs (one for the client, one for the server); \
                 this process may use {cpus:?}"
            );
        }
        let (client, server) = cpus.split_at(cpus.len() / 2);
        Ok(Self {
            client: client.to_vec(),
            server: server.to_vec(),
        })
    }
}

fn cpu_set(cores: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    set
}

/// Pins the calling thread to `cores`; threads (and processes) it starts
/// afterwards inherit the mask. Async-signal-safe (used before exec).
pub fn pin_current_thread_to(cores: &[usize]) -> io::Result<()> {
    let set = cpu_set(cores);
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CPU time of this process's threads (schedstat, nanoseconds), leaving out
/// the SCHED_IDLE spinners that keep the server's cores awake: the load
/// generator's own cost.
pub fn client_cpu_time() -> Duration {
    let nanos: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim() != "idle-spinner")
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}
