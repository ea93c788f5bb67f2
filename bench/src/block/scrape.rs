//! What the server says about a level: its Prometheus histograms and
//! Triton's ModelStatistics, read before and after the measured window and
//! subtracted, and its CPU time from /proc.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gridmesh_proto::inference::ModelStatisticsRequest;
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_tests::process::admin_get;
use gridmesh_tests::prometheus;
use serde::Serialize;
use tonic::transport::Channel;

use super::cpus::client_cpu_time;
use crate::procfs::ProcessTree;

const QUEUE_TIME: &str = "gridmesh_block:request_queue_time_seconds";
const INFERENCE_TIME: &str = "gridmesh_block:request_inference_time_seconds";
const BATCH_SIZE: &str = "gridmesh_block:batch_size";

/// A Prometheus histogram: cumulative bucket counts by upper bound (the
/// last one `+Inf`), sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromHistogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl PromHistogram {
    /// The series of `name` for `model` version 1 in a text exposition;
    /// an error when the exposition does not parse or lacks the series.
    pub fn parse(text: &str, name: &str, model: &str) -> Result<Self> {
        let labels = [("model_name", model), ("model_version", "1")];
        let mut histogram = Self::default();
        let (mut sum, mut count) = (None, None);
        for sample in prometheus::parse(text)? {
            if !sample.has(&labels) {
                continue;
            }
            match sample.name.strip_prefix(name) {
                Some("_bucket") => {
                    let le = sample.label("le").context("a bucket without le")?;
                    let bound = le
                        .parse::<f64>()
                        .with_context(|| format!("bucket bound {le:?}"))?;
                    histogram.buckets.push((bound, sample.value));
                }
                Some("_sum") => sum = Some(sample.value),
                Some("_count") => count = Some(sample.value),
                _ => {}
            }
        }
        histogram.sum = sum.with_context(|| format!("no {name}_sum for {model}"))?;
        histogram.count = count.with_context(|| format!("no {name}_count for {model}"))?;
        ensure!(
            !histogram.buckets.is_empty(),
            "no {name} buckets for {model}"
        );
        histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(histogram)
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Self) -> Self {
        let earlier = |bound: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, count)| *count)
        };
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|&(bound, count)| (bound, count - earlier(bound)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }

    /// The `q` quantile as far as the buckets tell: the bucket it falls in
    /// (lower and upper bound) and Prometheus's `histogram_quantile`
    /// estimate, a linear interpolation inside that bucket. In the `+Inf`
    /// bucket the upper bound is infinite and the estimate is the lower one.
    pub fn quantile(&self, q: f64) -> Option<BucketQuantile> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank {
                let estimate = if upper.is_infinite() {
                    lower
                } else if cumulative > below {
                    lower + (upper - lower) * (rank - below) / (cumulative - below)
                } else {
                    upper
                };
                return Some(BucketQuantile {
                    lower,
                    upper,
                    estimate,
                });
            }
            lower = upper;
            below = cumulative;
        }
        None
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchCompute {
    pub batch_size: u64,
    pub forwards: u64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BucketQuantile {
    pub lower: f64,
    pub upper: f64,
    pub estimate: f64,
}

/// Everything read at one moment.
pub struct Snapshot {
    at: Instant,
    metrics: String,
    /// inference_count, execution_count, and the summed compute time of
    /// every forward (batch_stats: input + infer + output, once per batch).
    inferences: u64,
    executions: u64,
    forward_ns: u64,
    /// Per batch size: forwards and their summed compute time.
    by_size: BTreeMap<u64, (u64, u64)>,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Snapshot {
    pub async fn take(
        http: SocketAddr,
        grpc: &mut GrpcInferenceServiceClient<Channel>,
        server: &ProcessTree,
        model: &str,
    ) -> Result<Self> {
        let at = Instant::now();
        let (server_cpu, client_cpu) = (server.cpu_time(), client_cpu_time());
        let response = admin_get(http, "/metrics").await?;
        ensure!(
            response.status == 200,
            "/metrics answered {}",
            response.status
        );
        let statistics = grpc
            .model_statistics(ModelStatisticsRequest {
                name: model.into(),
                version: "1".into(),
            })
            .await
            .context("ModelStatistics")?
            .into_inner();
        let stats = statistics
            .model_stats
            .first()
            .with_context(|| format!("ModelStatistics has no {model} version 1"))?;
        let by_size: BTreeMap<u64, (u64, u64)> = stats
            .batch_stats
            .iter()
            .map(|batch| {
                let phases = [
                    &batch.compute_input,
                    &batch.compute_infer,
                    &batch.compute_output,
                ];
                let ns = phases.into_iter().flatten().map(|d| d.ns).sum();
                let forwards = batch.compute_infer.as_ref().map_or(0, |d| d.count);
                (batch.batch_size, (forwards, ns))
            })
            .collect();
        let forward_ns = by_size.values().map(|(_, ns)| ns).sum();
        Ok(Self {
            at,
            metrics: response.body,
            inferences: stats.inference_count,
            executions: stats.execution_count,
            forward_ns,
            by_size,
            server_cpu,
            client_cpu,
        })
    }
}

/// The server's side of one measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSide {
    /// Rows per forward (inference_count / execution_count).
    pub mean_batch_size: f64,
    pub forwards: u64,
    /// Time in the queue, from the histogram: mean (exact) and the p99's
    /// bucket, in milliseconds.
    pub queue_mean_ms: f64,
    pub queue_p99_ms: Option<BucketQuantile>,
    /// The inference-time histogram's mean: the compute time of a request's
    /// batch, averaged over requests (large batches weigh more).
    pub compute_per_request_ms: f64,
    /// Compute time per forward (ModelStatistics batch_stats), averaged
    /// over forwards.
    pub compute_per_forward_ms: f64,
    /// Batch sizes the batch-size histogram saw, by bucket (upper bound,
    /// count), for spotting bimodal batching.
    pub batch_size_buckets: Vec<(f64, f64)>,
    /// Per batch size the window ran: forwards and their mean compute time
    /// (ModelStatistics batch_stats), to see what a row costs at each size.
    pub compute_by_batch_size: Vec<BatchCompute>,
    pub server_cpu_ms: f64,
    pub client_cpu_ms: f64,
    pub window_s: f64,
}

pub fn between(before: &Snapshot, after: &Snapshot, model: &str) -> Result<ServerSide> {
    let histogram = |name: &str| -> Result<PromHistogram> {
        Ok(
            PromHistogram::parse(&after.metrics, name, model)?.since(&PromHistogram::parse(
                &before.metrics,
                name,
                model,
            )?),
        )
    };
    let queue = histogram(QUEUE_TIME)?;
    let inference = histogram(INFERENCE_TIME)?;
    let batch = histogram(BATCH_SIZE)?;
    let executions = after.executions - before.executions;
    let inferences = after.inferences - before.inferences;
    let ms = |seconds: f64| seconds * 1e3;
    let mut previous = 0.0;
    let batch_size_buckets = batch
        .buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let count = cumulative - previous;
            previous = cumulative;
            (bound, count)
        })
        .filter(|(_, count)| *count > 0.0)
        .collect();
    Ok(ServerSide {
        mean_batch_size: if executions > 0 {
            inferences as f64 / executions as f64
        } else {
            f64::NAN
        },
        forwards: executions,
        queue_mean_ms: ms(queue.mean()),
        queue_p99_ms: queue.quantile(0.99).map(|q| BucketQuantile {
            lower: ms(q.lower),
            upper: ms(q.upper),
            estimate: ms(q.estimate),
        }),
        compute_per_request_ms: ms(inference.mean()),
        compute_per_forward_ms: if executions > 0 {
            (after.forward_ns - before.forward_ns) as f64 / executions as f64 / 1e6
        } else {
            f64::NAN
        },
        batch_size_buckets,
        compute_by_batch_size: after
            .by_size
            .iter()
            .filter_map(|(&size, &(forwards, ns))| {
                let (forwards_before, ns_before) =
                    before.by_size.get(&size).copied().unwrap_or_default();
                let forwards = forwards - forwards_before;
                (forwards > 0).then(|| BatchCompute {
                    batch_size: size,
                    forwards,
                    mean_ms: (ns - ns_before) as f64 / forwards as f64 / 1e6,
                })
            })
            .collect(),
        server_cpu_ms: (after.server_cpu - before.server_cpu).as_secs_f64() * 1e3,
        client_cpu_ms: (after.client_cpu - before.client_cpu).as_secs_f64() * 1e3,
        window_s: (after.at - before.at).as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(bucket_counts: &[(&str, u64)], sum: f64, count: u64) -> String {
        let mut text = String::from("# TYPE gridmesh_block:batch_size histogram\n");
        for (le, n) in bucket_counts {
            text.push_str(&format!(
                "gridmesh_block:batch_size_bucket{{model_name=\"cnn\",model_version=\"1\",le=\"{le}\"}} {n}\n"
            ));
            text.push_str(&format!(
                "gridmesh_block:batch_size_bucket{{model_name=\"other\",model_version=\"1\",le=\"{le}\"}} 999\n"
            ));
        }
        text.push_str(&format!(
            "gridmesh_block:batch_size_sum{{model_name=\"cnn\",model_version=\"1\"}} {sum}\n\
             gridmesh_block:batch_size_count{{model_name=\"cnn\",model_version=\"1\"}} {count}\n"
        ));
        text
    }

    #[test]
    fn parses_subtracts_and_interpolates() {
        let before = PromHistogram::parse(
            &exposition(&[("1", 10), ("2", 10), ("4", 10), ("+Inf", 10)], 10.0, 10),
            BATCH_SIZE,
            "cnn",
        )
        .unwrap();
        let after = PromHistogram::parse(
            &exposition(
                &[("1", 10), ("2", 60), ("4", 110), ("+Inf", 110)],
                310.0,
                110,
            ),
            BATCH_SIZE,
            "cnn",
        )
        .unwrap();
        assert_eq!(before.buckets.len(), 4);
        assert!(PromHistogram::parse("", BATCH_SIZE, "cnn").is_err());
        let window = after.since(&before);
        assert_eq!(window.count, 100.0);
        assert_eq!(window.mean(), 3.0);
        let p50 = window.quantile(0.5).unwrap();
        assert_eq!((p50.lower, p50.upper, p50.estimate), (1.0, 2.0, 2.0));
        let p99 = window.quantile(0.99).unwrap();
        assert_eq!((p99.lower, p99.upper), (2.0, 4.0));
        assert!((p99.estimate - 3.96).abs() < 1e-9);
        assert!(PromHistogram::default().quantile(0.99).is_none());
    }
}
