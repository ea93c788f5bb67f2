//! Closed-loop load for maximum throughput: every connection sends its next
//! request as soon as the previous answer is in, for a fixed time.

use std::time::{Duration, Instant};

use super::ErrorTally;
use super::clients::{Exchange, exchange_in_time};

#[derive(Debug)]
pub struct ClosedLoopOutcome {
    pub completed: u64,
    pub errors: ErrorTally,
    pub elapsed: Duration,
}

/// Runs every connection flat out for `duration` and hands the connections
/// back for the next run.
pub async fn run<E: Exchange>(
    exchanges: Vec<E>,
    duration: Duration,
) -> (ClosedLoopOutcome, Vec<E>) {
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = exchanges
        .into_iter()
        .map(|exchange| tokio::spawn(worker(exchange, deadline)))
        .collect();
    let mut completed = 0;
    let mut errors = ErrorTally::default();
    let mut exchanges = Vec::with_capacity(workers.len());
    for worker in workers {
        let (exchange, worker_completed, worker_errors) =
            worker.await.expect("load worker panicked");
        exchanges.push(exchange);
        completed += worker_completed;
        errors.merge(worker_errors);
    }
    let outcome = ClosedLoopOutcome {
        completed,
        errors,
        elapsed: start.elapsed(),
    };
    (outcome, exchanges)
}

async fn worker<E: Exchange>(mut exchange: E, deadline: Instant) -> (E, u64, ErrorTally) {
    let mut completed = 0;
    let mut errors = ErrorTally::default();
    while Instant::now() < deadline {
        match exchange_in_time(&mut exchange).await {
            Ok(()) => completed += 1,
            Err(error) => errors.record(&error),
        }
    }
    (exchange, completed, errors)
}
