//! What the request path tells the balancers about one endpoint.
//!
//! A `Load` belongs to the endpoint, not to a balancer, so that when the
//! endpoint set changes and a new balancer is built, endpoints that stay keep
//! their in-flight count and latency history.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::HeaderMap;

use super::peak_ewma::{DEFAULT_DECAY, DEFAULT_RTT, PeakEwma};

/// Below this the latency estimate stops mattering: a cost of zero would make
/// an endpoint look free however many requests it already holds.
const MIN_RTT_US: f64 = 1.0;

/// One endpoint's load signals. All operations are single atomic instructions
/// or a short compare-and-swap loop; nothing here takes a lock.
pub struct Load {
    in_flight: AtomicU64,
    latency: PeakEwma,
    /// The latest load report the endpoint sent about itself.
    report: ArcSwapOption<LoadReport>,
}

/// The header (or trailer) in which endpoints report their own load, in
/// ORCA form (`TEXT named_metrics.queue=3, ...` or JSON).
pub const LOAD_REPORT_HEADER: &str = "endpoint-load-metrics";

/// A load report as received: what the endpoint said, and when.
#[derive(Debug)]
pub struct LoadReport {
    pub text: Box<str>,
    pub at: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Load::new(DEFAULT_DECAY, DEFAULT_RTT)
    }
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("in_flight", &self.in_flight())
            .field("rtt_estimate", &self.rtt_estimate())
            .finish()
    }
}

impl Load {
    /// `decay` is the latency average's time constant; `default_rtt` is
    /// assumed until the endpoint has answered once.
    pub fn new(decay: Duration, default_rtt: Duration) -> Self {
        Load {
            in_flight: AtomicU64::new(0),
            latency: PeakEwma::new(decay, default_rtt),
            report: ArcSwapOption::empty(),
        }
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight {
            load: Arc::clone(self),
            started: Instant::now(),
        }
    }

    /// Requests started and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Feeds one latency sample to the peak-EWMA estimate.
    pub fn record_rtt(&self, rtt: Duration) {
        self.latency.observe(rtt, Instant::now());
    }

    /// The current latency estimate (for `/clusters` and metrics).
    pub fn rtt_estimate(&self) -> Duration {
        let secs = self.latency.estimate_us(Instant::now()) / 1e6;
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// Takes the endpoint's load report from a response's headers or
    /// trailers, when they carry one. This is the one place responses reach
    /// an endpoint's load state; the report is kept as received (and shown
    /// in `/clusters`) until a balancer reads its signals.
    pub fn observe_report(&self, headers: &HeaderMap) {
        if let Some(value) = headers.get(LOAD_REPORT_HEADER) {
            self.report.store(Some(Arc::new(LoadReport {
                text: String::from_utf8_lossy(value.as_bytes()).into(),
                at: Instant::now(),
            })));
        }
    }

    /// The latest load report, if the endpoint sent one.
    pub fn report(&self) -> Option<Arc<LoadReport>> {
        self.report.load_full()
    }

    /// Peak-EWMA cost: expected latency times the queue a new request joins.
    pub(super) fn peak_ewma_cost(&self, now: Instant) -> f64 {
        let rtt = self.latency.estimate_us(now).max(MIN_RTT_US);
        rtt * (self.in_flight() as f64 + 1.0)
    }
}

/// A request in flight to one endpoint; dropping it ends the request.
///
/// For a streamed response, call [`InFlight::record_latency`] when the
/// response headers arrive and keep the guard with the body until it ends, so
/// a long generation counts as load for as long as it runs.
#[must_use = "the request stops counting as in flight when this is dropped"]
#[derive(Debug)]
pub struct InFlight {
    load: Arc<Load>,
    started: Instant,
}

impl InFlight {
    /// Records the time since the request started as a latency sample.
    pub fn record_latency(&self) {
        self.load.record_rtt(self.started.elapsed());
    }

    /// See [`Load::observe_report`].
    pub fn observe_report(&self, headers: &HeaderMap) {
        self.load.observe_report(headers);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_requests_in_flight() {
        let load = Arc::new(Load::default());
        let first = load.start();
        let second = load.start();
        assert_eq!(load.in_flight(), 2);
        first.record_latency();
        drop(first);
        assert_eq!(load.in_flight(), 1);
        drop(second);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn recording_latency_feeds_the_estimate() {
        let load = Arc::new(Load::new(DEFAULT_DECAY, Duration::from_secs(5)));
        let request = load.start();
        std::thread::sleep(Duration::from_millis(20));
        request.record_latency();
        let estimate = load.rtt_estimate();
        assert!(
            estimate >= Duration::from_millis(19) && estimate < Duration::from_secs(1),
            "{estimate:?}"
        );
    }

    #[test]
    fn dropping_without_completing_records_nothing() {
        let load = Arc::new(Load::new(DEFAULT_DECAY, Duration::from_millis(30)));
        drop(load.start());
        assert_eq!(load.rtt_estimate(), Duration::from_millis(30));
    }

    #[test]
    fn cost_grows_with_requests_in_flight() {
        let load = Arc::new(Load::default());
        let now = Instant::now();
        let idle = load.peak_ewma_cost(now);
        let _busy = [load.start(), load.start()];
        assert!((load.peak_ewma_cost(now) - 3.0 * idle).abs() < 1e-6);
    }

    #[test]
    fn counts_stay_exact_under_concurrency() {
        let load = Arc::new(Load::default());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..10_000u64 {
                        let request = load.start();
                        if i % 2 == 0 {
                            request.record_latency();
                        }
                    }
                });
            }
        });
        assert_eq!(load.in_flight(), 0);
    }
}
