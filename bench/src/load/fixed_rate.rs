//! Open-loop load at a fixed request rate. Request `i` is due at
//! `start + i / rate` whatever happened before it, and its latency is counted
//! from that due time, not from when a connection became free: a slow
//! response delays the requests queued behind it and they are charged for it
//! (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::ErrorTally;
use super::clients::{Exchange, exchange_in_time};

/// tokio's timer works in whole milliseconds and rounds up twice (the
/// deadline to a tick, the wait to a millisecond), so a sleep can end up to
/// 2 ms after its deadline. The last stretch before a due time is therefore
/// spent yielding to the runtime instead, which keeps sends within a
/// microsecond or so of schedule on a quiet machine (and the load core awake).
const SPIN_BEFORE_DUE: Duration = Duration::from_millis(3);

#[derive(Debug)]
pub struct FixedRateOutcome {
    /// Latency in nanoseconds of each request that succeeded.
    pub latency_ns: Histogram<u64>,
    /// How late each request was sent, in nanoseconds: the load generator's
    /// own delay, already part of the latency. Large values mean the
    /// generator was starved (a busy machine) or behind schedule.
    pub send_lateness_ns: Histogram<u64>,
    pub errors: ErrorTally,
}

impl FixedRateOutcome {
    fn new() -> Self {
        Self {
            latency_ns: new_histogram(),
            send_lateness_ns: new_histogram(),
            errors: ErrorTally::default(),
        }
    }
}

/// Sends `rate` requests per second for `duration`, spread over the given
/// connections (each carries one request at a time), and hands the
/// connections back for the next run.
pub async fn run<E: Exchange>(
    exchanges: Vec<E>,
    rate: u32,
    duration: Duration,
) -> (FixedRateOutcome, Vec<E>) {
    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(5),
        interval: Duration::from_secs_f64(1.0 / f64::from(rate)),
        total: (duration.as_secs_f64() * f64::from(rate)).round() as u64,
        next_request: Arc::new(AtomicU64::new(0)),
    };
    let workers: Vec<_> = exchanges
        .into_iter()
        .map(|exchange| tokio::spawn(worker(exchange, schedule.clone())))
        .collect();
    let mut outcome = FixedRateOutcome::new();
    let mut exchanges = Vec::with_capacity(workers.len());
    for worker in workers {
        let (exchange, part) = worker.await.expect("load worker panicked");
        exchanges.push(exchange);
        outcome.latency_ns += part.latency_ns;
        outcome.send_lateness_ns += part.send_lateness_ns;
        outcome.errors.merge(part.errors);
    }
    (outcome, exchanges)
}

/// The due times shared by all connections; each takes the next request due.
#[derive(Clone)]
struct Schedule {
    start: Instant,
    interval: Duration,
    total: u64,
    next_request: Arc<AtomicU64>,
}

impl Schedule {
    fn next_due(&self) -> Option<Instant> {
        let index = self.next_request.fetch_add(1, Ordering::Relaxed);
        (index < self.total).then(|| self.start + self.interval.mul_f64(index as f64))
    }
}

async fn worker<E: Exchange>(mut exchange: E, schedule: Schedule) -> (E, FixedRateOutcome) {
    let mut outcome = FixedRateOutcome::new();
    while let Some(due) = schedule.next_due() {
        wait_until(due).await;
        let lateness = due.elapsed().as_nanos() as u64;
        outcome.send_lateness_ns.saturating_record(lateness.max(1));
        let result = exchange_in_time(&mut exchange).await;
        // A failed request stays in the latency histogram, at the time it
        // took to fail: leaving it out would flatter the tail of a target
        // that fails under load. (The errors are reported beside it.)
        let latency = due.elapsed().as_nanos() as u64;
        outcome.latency_ns.saturating_record(latency.max(1));
        if let Err(error) = result {
            outcome.errors.record(&error);
        }
    }
    (exchange, outcome)
}

/// Nanoseconds from 1 ns to 60 s at three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

async fn wait_until(due: Instant) {
    if let Some(coarse) = due.checked_sub(SPIN_BEFORE_DUE)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}
