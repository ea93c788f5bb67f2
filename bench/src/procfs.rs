//! CPU time and memory of a proxy, read from /proc. A proxy may be several
//! processes (nginx's master and worker), so every figure covers the process
//! and all its descendants.

use std::fs;
use std::time::Duration;

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
        let nanos: u64 = self
            .pids
            .iter()
            .flat_map(|pid| {
                fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
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

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or
    // parentheses, so fields are counted from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
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

    #[test]
    fn reads_this_process() {
        let tree = ProcessTree::of(&[std::process::id()]);
        let spin_until = std::time::Instant::now() + Duration::from_millis(20);
        while std::time::Instant::now() < spin_until {}
        assert!(tree.cpu_time() >= Duration::from_millis(15));
        assert!(tree.rss_bytes() > 1024 * 1024);
        assert!(tree.peak_rss_bytes() >= tree.rss_bytes());
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
