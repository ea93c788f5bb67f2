//! How loaded the whole server is, reported in ORCA form on every inference
//! response (`endpoint-load-metrics`), so the sidecar in front can steer
//! requests to the least loaded block without scraping anything.
//!
//! Utilisation is the share of instance time spent in forwards over the last
//! sampling window: a block whose instances are always busy reports 1.0 even
//! when its queue is short, which queue length alone would hide.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// How often utilisation is recomputed.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Load {
    waiting: AtomicUsize,
    running: AtomicUsize,
    instances: AtomicUsize,
    busy_nanos: AtomicU64,
    /// f64 bits of the last sampled utilisation.
    utilization: AtomicU64,
}

impl Load {
    pub fn instances_started(&self, count: usize) {
        self.instances.fetch_add(count, Ordering::Relaxed);
    }

    pub fn job_queued(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    pub fn jobs_left_queue(&self, count: usize) {
        self.waiting.fetch_sub(count, Ordering::Relaxed);
    }

    pub fn batch_started(&self, jobs: usize) {
        self.running.fetch_add(jobs, Ordering::Relaxed);
    }

    pub fn batch_finished(&self, jobs: usize, busy: Duration) {
        self.running.fetch_sub(jobs, Ordering::Relaxed);
        self.busy_nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Requests queued or running anywhere in the server.
    pub fn outstanding(&self) -> usize {
        self.waiting.load(Ordering::Relaxed) + self.running.load(Ordering::Relaxed)
    }

    pub fn utilization(&self) -> f64 {
        f64::from_bits(self.utilization.load(Ordering::Relaxed))
    }

    /// The ORCA `endpoint-load-metrics` header value (TEXT form).
    pub fn orca_header(&self) -> String {
        format!(
            "TEXT application_utilization={:.3}, named_metrics.queue={}, named_metrics.in_flight={}",
            self.utilization(),
            self.waiting.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
        )
    }

    /// Recomputes utilisation every [`SAMPLE_INTERVAL`], for as long as the
    /// runtime lives.
    pub async fn sample(&self) {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = (Instant::now(), self.busy_nanos.load(Ordering::Relaxed));
        loop {
            ticker.tick().await;
            let now = (Instant::now(), self.busy_nanos.load(Ordering::Relaxed));
            let capacity = (now.0 - last.0).as_nanos() as f64
                * self.instances.load(Ordering::Relaxed).max(1) as f64;
            let busy = now.1.saturating_sub(last.1) as f64;
            let utilization = (busy / capacity).clamp(0.0, 1.0);
            self.utilization
                .store(utilization.to_bits(), Ordering::Relaxed);
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_counts_queued_and_running_requests() {
        let load = Load::default();
        load.job_queued();
        load.job_queued();
        load.job_queued();
        load.jobs_left_queue(2);
        load.batch_started(2);
        assert_eq!(
            load.orca_header(),
            "TEXT application_utilization=0.000, named_metrics.queue=1, named_metrics.in_flight=2"
        );
        load.batch_finished(2, Duration::from_millis(5));
        assert_eq!(load.outstanding(), 1);
    }
}
