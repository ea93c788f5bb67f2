//! What the server tells about each model version: Prometheus metrics named
//! in vLLM's style (`gridmesh_block:num_requests_waiting`, ...), which the
//! sidecar and dashboards already know how to read, and Triton's
//! `ModelStatistics` counters. Both are fed from the same few calls, made by
//! the service and the batcher at the points a request passes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use gridmesh_proto::inference::{
    InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration,
};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

const PREFIX: &str = "gridmesh_block:";
const MODEL_LABELS: &[&str] = &["model_name", "model_version"];

/// Why a request failed, as the `reason` label of the failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    InvalidArgument,
    QueueFull,
    Cancelled,
    ModelError,
    Draining,
}

impl FailureReason {
    fn label(self) -> &'static str {
        match self {
            FailureReason::InvalidArgument => "invalid_argument",
            FailureReason::QueueFull => "queue_full",
            FailureReason::Cancelled => "cancelled",
            FailureReason::ModelError => "model_error",
            FailureReason::Draining => "draining",
        }
    }
}

/// The metric families, registered once per server.
pub struct Metrics {
    pub registry: Registry,
    waiting: IntGaugeVec,
    running: IntGaugeVec,
    batch_size: HistogramVec,
    queue_time: HistogramVec,
    inference_time: HistogramVec,
    e2e_latency: HistogramVec,
    success: IntCounterVec,
    failure: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let gauge = IntGaugeVec::new(Opts::new(format!("{PREFIX}{name}"), help), MODEL_LABELS)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<HistogramVec> {
                let opts = HistogramOpts::new(format!("{PREFIX}{name}"), help).buckets(buckets);
                let histogram = HistogramVec::new(opts, MODEL_LABELS)?;
                registry.register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let counter =
                    IntCounterVec::new(Opts::new(format!("{PREFIX}{name}"), help), labels)?;
                registry.register(Box::new(counter.clone()))?;
                Ok(counter)
            };
        // Fine between 1 and 5 ms, where typical max_queue_delay settings
        // and CPU forwards fall, so their p99 can be read off the buckets.
        let seconds = || {
            vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]
        };
        Ok(Self {
            waiting: gauge("num_requests_waiting", "Requests queued for a batch.")?,
            running: gauge(
                "num_requests_running",
                "Requests in batches running on an instance.",
            )?,
            batch_size: histogram(
                "batch_size",
                "Rows per forward the dynamic batcher ran.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )?,
            queue_time: histogram(
                "request_queue_time_seconds",
                "Time a request waited in the queue for its batch.",
                seconds(),
            )?,
            inference_time: histogram(
                "request_inference_time_seconds",
                "Time the forward of a request's batch took.",
                seconds(),
            )?,
            e2e_latency: histogram(
                "e2e_request_latency_seconds",
                "Time from a request's arrival to its response.",
                seconds(),
            )?,
            success: counter(
                "request_success_total",
                "Requests answered with outputs.",
                MODEL_LABELS,
            )?,
            failure: counter(
                "request_failure_total",
                "Requests that failed, by reason.",
                &["model_name", "model_version", "reason"],
            )?,
            registry,
        })
    }
}

/// The metrics and statistics of one model version.
pub struct Observer {
    name: String,
    version: String,
    pub waiting: IntGauge,
    pub running: IntGauge,
    metrics: MetricHandles,
    failure: IntCounterVec,
    statistics: Mutex<Statistics>,
}

struct MetricHandles {
    batch_size: prometheus::Histogram,
    queue_time: prometheus::Histogram,
    inference_time: prometheus::Histogram,
    e2e_latency: prometheus::Histogram,
    success: prometheus::IntCounter,
}

/// Triton's counters, in nanoseconds.
#[derive(Default)]
struct Statistics {
    last_inference_ms: u64,
    inference_count: u64,
    execution_count: u64,
    success: Duration,
    success_count: u64,
    fail: Duration,
    fail_count: u64,
    queue: Duration,
    queue_count: u64,
    compute: PhaseTotals,
    batches: BTreeMap<u64, PhaseTotals>,
}

/// Time spent on one batch: joining inputs and moving them to the device,
/// the forward, and moving outputs back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

impl Phases {
    pub fn total(&self) -> Duration {
        self.input + self.infer + self.output
    }
}

#[derive(Default, Clone, Copy)]
struct PhaseTotals {
    count: u64,
    phases: Phases,
}

impl PhaseTotals {
    fn add(&mut self, phases: Phases, times: u64) {
        self.count += times;
        self.phases.input += phases.input * times as u32;
        self.phases.infer += phases.infer * times as u32;
        self.phases.output += phases.output * times as u32;
    }
}

impl Observer {
    pub fn new(metrics: &Metrics, name: &str, version: u64) -> Self {
        let version = version.to_string();
        let labels = [name, version.as_str()];
        Self {
            waiting: metrics.waiting.with_label_values(&labels),
            running: metrics.running.with_label_values(&labels),
            metrics: MetricHandles {
                batch_size: metrics.batch_size.with_label_values(&labels),
                queue_time: metrics.queue_time.with_label_values(&labels),
                inference_time: metrics.inference_time.with_label_values(&labels),
                e2e_latency: metrics.e2e_latency.with_label_values(&labels),
                success: metrics.success.with_label_values(&labels),
            },
            failure: metrics.failure.clone(),
            name: name.to_string(),
            version,
            statistics: Mutex::new(Statistics::default()),
        }
    }

    fn statistics(&self) -> std::sync::MutexGuard<'_, Statistics> {
        self.statistics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `count` queued requests whose callers went away were dropped unrun.
    pub fn cancelled(&self, count: usize) {
        self.waiting.sub(count as i64);
        self.failure
            .with_label_values(&[&self.name, &self.version, FailureReason::Cancelled.label()])
            .inc_by(count as u64);
    }

    pub fn queued_for(&self, waited: Duration) {
        self.metrics.queue_time.observe(waited.as_secs_f64());
        let mut statistics = self.statistics();
        statistics.queue += waited;
        statistics.queue_count += 1;
    }

    /// A forward over `rows` rows of `jobs` requests succeeded.
    pub fn batch_ran(&self, rows: usize, jobs: usize, phases: Phases) {
        self.metrics.batch_size.observe(rows as f64);
        for _ in 0..jobs {
            self.metrics
                .inference_time
                .observe(phases.total().as_secs_f64());
        }
        let mut statistics = self.statistics();
        statistics.execution_count += 1;
        statistics.inference_count += rows as u64;
        statistics.compute.add(phases, jobs as u64);
        statistics
            .batches
            .entry(rows as u64)
            .or_default()
            .add(phases, 1);
        statistics.last_inference_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
    }

    pub fn succeeded(&self, took: Duration) {
        self.metrics.success.inc();
        self.metrics.e2e_latency.observe(took.as_secs_f64());
        let mut statistics = self.statistics();
        statistics.success += took;
        statistics.success_count += 1;
    }

    pub fn failed(&self, reason: FailureReason, took: Duration) {
        self.failure
            .with_label_values(&[&self.name, &self.version, reason.label()])
            .inc();
        let mut statistics = self.statistics();
        statistics.fail += took;
        statistics.fail_count += 1;
    }

    /// Triton's `ModelStatistics` for this version.
    pub fn report(&self) -> ModelStatistics {
        let statistics = self.statistics();
        let duration = |count: u64, total: Duration| {
            Some(StatisticDuration {
                count,
                ns: total.as_nanos() as u64,
            })
        };
        let compute = &statistics.compute;
        ModelStatistics {
            name: self.name.clone(),
            version: self.version.clone(),
            last_inference: statistics.last_inference_ms,
            inference_count: statistics.inference_count,
            execution_count: statistics.execution_count,
            inference_stats: Some(InferStatistics {
                success: duration(statistics.success_count, statistics.success),
                fail: duration(statistics.fail_count, statistics.fail),
                queue: duration(statistics.queue_count, statistics.queue),
                compute_input: duration(compute.count, compute.phases.input),
                compute_infer: duration(compute.count, compute.phases.infer),
                compute_output: duration(compute.count, compute.phases.output),
                cache_hit: duration(0, Duration::ZERO),
                cache_miss: duration(0, Duration::ZERO),
            }),
            batch_stats: statistics
                .batches
                .iter()
                .map(|(size, totals)| InferBatchStatistics {
                    batch_size: *size,
                    compute_input: duration(totals.count, totals.phases.input),
                    compute_infer: duration(totals.count, totals.phases.infer),
                    compute_output: duration(totals.count, totals.phases.output),
                })
                .collect(),
            memory_usage: Vec::new(),
            response_stats: Default::default(),
        }
    }
}
