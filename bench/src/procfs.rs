//! CPU time and memory of a proxy, read from /proc. A proxy may be several
//! processes (nginx's master and worker), so every figure covers the process
//! and all its descendants. Also the CPU the rest of the machine used
//! meanwhile, which tells whether a run's figures can be trusted.

use std::fs;
use std::time::{Duration, Instant};

use gridmesh_tests::process;

/// Some processes and all their descendants, as found when listed.
#[derive(Debug, Clone)]
pub struct ProcessTree {
    pids: Vec<u32>,
}

impl ProcessTree {
    pub fn of(roots: &[u32]) -> Self {
        let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, parent_of(pid)?)))
            .collect();
        let mut pids = roots.to_vec();
        let mut next = 0;
        while next < pids.len() {
            let parent = pids[next];
            pids.extend(
                parents
                    .iter()
                    .filter(|(_, p)| *p == parent)
                    .map(|(pid, _)| *pid),
            );
            next += 1;
        }
        Self { pids }
    }

    /// Time the tree's threads have spent on a CPU. Read from each thread's
    /// `schedstat` (nanoseconds) rather than `stat`'s utime+stime, whose
    /// 10 ms clock ticks are too coarse for runs of a few seconds.
    pub fn cpu_time(&self) -> Duration {
        self.pids.iter().map(|pid| process::cpu_time(*pid)).sum()
    }

    /// CPU time from each process's `stat` (utime + stime, clock ticks):
    /// coarse, but it keeps the time of threads that have exited.
    fn cpu_time_in_ticks(&self) -> Duration {
        let ticks: u64 = self
            .pids
            .iter()
            .filter_map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut fields = fields_after_name(&stat)?;
                // utime and stime are the 14th and 15th fields, i.e. the 12th
                // and 13th after the name.
                let utime: u64 = fields.nth(11)?.parse().ok()?;
                let stime: u64 = fields.next()?.parse().ok()?;
                Some(utime + stime)
            })
            .sum();
        ticks_to_duration(ticks)
    }

    /// Resident memory now (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.sum_status_field("VmRSS:")
    }

    /// Highest resident memory so far (`VmHWM`), in bytes, summed over the
    /// tree's processes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.sum_status_field("VmHWM:")
    }

    fn sum_status_field(&self, field: &str) -> u64 {
        self.pids
            .iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| kib_field(&status, field))
            .sum::<u64>()
            * 1024
    }
}

/// CPU time used by everything outside this process tree (the benchmark
/// and the proxies it started), from a starting point on.
pub struct BackgroundLoad {
    own: ProcessTree,
    machine_busy_before: Duration,
    own_before: Duration,
    since: Instant,
}

impl BackgroundLoad {
    pub fn start() -> Self {
        let own = ProcessTree::of(&[std::process::id()]);
        Self {
            machine_busy_before: machine_busy_time(),
            own_before: own.cpu_time_in_ticks(),
            own,
            since: Instant::now(),
        }
    }

    /// Average number of cores other processes kept busy since `start`.
    pub fn cores(&self) -> f64 {
        let machine = machine_busy_time().saturating_sub(self.machine_busy_before);
        // Ticks rather than schedstat: the benchmark's spinner threads come
        // and go, and their time must still count as ours.
        let own = self.own.cpu_time_in_ticks().saturating_sub(self.own_before);
        machine.saturating_sub(own).as_secs_f64() / self.since.elapsed().as_secs_f64()
    }
}

/// Busy time of all CPUs together from the first line of /proc/stat: user,
/// nice, system, irq, softirq and steal (time the hypervisor gave to someone
/// else is lost to us too), in clock ticks.
fn machine_busy_time() -> Duration {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    ticks_to_duration(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| ticks.get(i))
            .sum(),
    )
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // state, then ppid.
    fields_after_name(&stat)?.nth(1)?.parse().ok()
}

/// The fields of a `/proc/<pid>/stat` line after the command name, which is
/// in parentheses and may itself contain spaces or parentheses.
fn fields_after_name(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

fn kib_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until this process has used `cpu` more CPU time, however long
    /// that takes on a busy machine (tests run in parallel).
    fn burn(tree: &ProcessTree, cpu: Duration) {
        let target = tree.cpu_time() + cpu;
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        while tree.cpu_time() < target {
            assert!(
                std::time::Instant::now() < give_up,
                "CPU time does not grow"
            );
        }
    }

    #[test]
    fn reads_this_process() {
        let tree = ProcessTree::of(&[std::process::id()]);
        burn(&tree, Duration::from_millis(20));
        assert!(tree.rss_bytes() > 1024 * 1024);
        assert!(tree.peak_rss_bytes() >= tree.rss_bytes());
    }

    #[test]
    fn stat_ticks_agree_with_schedstat() {
        let tree = ProcessTree::of(&[std::process::id()]);
        let ticks_before = tree.cpu_time_in_ticks();
        burn(&tree, Duration::from_millis(200));
        let ticks = tree.cpu_time_in_ticks() - ticks_before;
        // Ticks are 10 ms and sampled, hence the wide margin.
        assert!(ticks >= Duration::from_millis(120), "{ticks:?}");
    }

    #[test]
    fn finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = ProcessTree::of(&[std::process::id()]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(tree.pids.contains(&child.id()));
    }

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
    }
}
