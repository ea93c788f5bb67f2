//! A retry budget (as in Finagle and Linkerd): retries may add at most a
//! fixed share of recent traffic, plus a small floor per second, so that
//! retries cannot multiply the load on an upstream that is already failing.

use std::sync::Mutex;
use std::time::Instant;

/// The window the budget looks back over, in one-second buckets.
const WINDOW_SECONDS: usize = 10;

pub struct RetryBudget {
    retry_percent: u64,
    min_per_second: u64,
    window: Mutex<Window>,
}

struct Window {
    origin: Instant,
    /// (second, requests, retries) per bucket; a bucket is stale when its
    /// second is older than the window.
    buckets: [(u64, u64, u64); WINDOW_SECONDS],
}

impl RetryBudget {
    pub fn new(retry_percent: u32, min_retries_per_second: u32) -> Self {
        RetryBudget {
            retry_percent: retry_percent.into(),
            min_per_second: min_retries_per_second.into(),
            window: Mutex::new(Window {
                origin: Instant::now(),
                buckets: [(0, 0, 0); WINDOW_SECONDS],
            }),
        }
    }

    /// Counts a request (a first attempt) toward the budget.
    pub fn deposit(&self) {
        self.update(|bucket| bucket.1 += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = window.origin.elapsed().as_secs();
        let (mut requests, mut retries) = (0, 0);
        for (second, rq, rt) in &window.buckets {
            if now.saturating_sub(*second) < WINDOW_SECONDS as u64 {
                requests += rq;
                retries += rt;
            }
        }
        let allowed =
            self.min_per_second * WINDOW_SECONDS as u64 + requests * self.retry_percent / 100;
        if retries >= allowed {
            return false;
        }
        Self::bucket(&mut window, now).2 += 1;
        true
    }

    fn update(&self, f: impl FnOnce(&mut (u64, u64, u64))) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = window.origin.elapsed().as_secs();
        f(Self::bucket(&mut window, now));
    }

    fn bucket(window: &mut Window, now: u64) -> &mut (u64, u64, u64) {
        let bucket = &mut window.buckets[now as usize % WINDOW_SECONDS];
        if bucket.0 != now {
            *bucket = (now, 0, 0);
        }
        bucket
    }
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
}
