//! A retry budget (as in Finagle and Linkerd): retries may add at most a
//! fixed share of recent traffic, plus a small floor per second, so that
//! retries cannot multiply the load on an upstream that is already failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The window the budget looks back over, in one-second buckets.
const WINDOW_SECONDS: usize = 10;
/// A bucket is one atomic word: the second it counts (high bits) and the
/// count (low bits), so moving a bucket to a new second and counting in it
/// are one compare-and-swap, with no lock on the request path.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

pub struct RetryBudget {
    retry_percent: u64,
    min_per_second: u64,
    origin: Instant,
    requests: [AtomicU64; WINDOW_SECONDS],
    retries: [AtomicU64; WINDOW_SECONDS],
}

impl RetryBudget {
    pub fn new(retry_percent: u32, min_retries_per_second: u32) -> Self {
        RetryBudget {
            retry_percent: retry_percent.into(),
            min_per_second: min_retries_per_second.into(),
            origin: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts a request (a first attempt) toward the budget.
    pub fn deposit(&self) {
        count(&self.requests, self.now());
    }

    /// Takes one retry from the budget; `false` when it is spent. Retries
    /// racing each other may overdraw it by the few in flight at once.
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let requests = total(&self.requests, now);
        let retries = total(&self.retries, now);
        let allowed =
            self.min_per_second * WINDOW_SECONDS as u64 + requests * self.retry_percent / 100;
        if retries >= allowed {
            return false;
        }
        count(&self.retries, now);
        true
    }

    /// Seconds since the budget was made.
    fn now(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }
}

/// Adds one to `now`'s bucket, starting it afresh if it held an older second.
fn count(buckets: &[AtomicU64; WINDOW_SECONDS], now: u64) {
    let bucket = &buckets[now as usize % WINDOW_SECONDS];
    let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
        Some(if word >> COUNT_BITS == now {
            // Saturates: 16.7 million a second is far beyond one sidecar.
            word + u64::from(word & COUNT_MASK < COUNT_MASK)
        } else {
            (now << COUNT_BITS) | 1
        })
    });
}

/// The counts of the buckets within the window ending at `now`.
fn total(buckets: &[AtomicU64; WINDOW_SECONDS], now: u64) -> u64 {
    buckets
        .iter()
        .map(|bucket| bucket.load(Ordering::Relaxed))
        .filter(|word| now.saturating_sub(word >> COUNT_BITS) < WINDOW_SECONDS as u64)
        .map(|word| word & COUNT_MASK)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_floor_and_the_share_of_traffic() {
        let budget = RetryBudget::new(20, 1);
        // Floor: 1 per second over a 10 s window.
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 10);
        for _ in 0..100 {
            budget.deposit();
        }
        // 20% of 100 requests on top of the floor.
        assert_eq!((0..100).filter(|_| budget.try_withdraw()).count(), 20);
    }

    #[test]
    fn buckets_start_afresh_each_second_and_count_only_their_window() {
        let buckets: [AtomicU64; WINDOW_SECONDS] = Default::default();
        count(&buckets, 3);
        count(&buckets, 3);
        count(&buckets, 4);
        assert_eq!(total(&buckets, 4), 3);
        // Second 13 reuses second 3's bucket.
        count(&buckets, 13);
        assert_eq!(total(&buckets, 13), 2, "second 4 and second 13");
        assert_eq!(total(&buckets, 30), 0, "all of it too old");
    }
}
