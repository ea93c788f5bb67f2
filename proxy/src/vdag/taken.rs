//! The hops a sidecar has taken, for deduplication: a hop is remembered
//! while it runs and for a short while after — long enough for the retry of
//! a sender that lost its stream just as the hop finished (it retries within
//! a round trip or a connect timeout) — but not until the request's
//! deadline, so that memory grows with the hop rate times that window, not
//! times the vDAGs' timeouts.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::HopKey;
use super::wire::Status;
use crate::grpc::Code;

/// How long a finished hop is remembered (its request's deadline, if
/// sooner).
pub const REMEMBER_FINISHED: Duration = Duration::from_secs(10);
/// Hops remembered at once; beyond this a new hop is refused as overload.
/// At 10,000 hops a second, finished ones take a tenth of it.
const MAX_REMEMBERED: usize = 1 << 20;

#[derive(Default)]
pub struct Taken {
    keys: HashSet<HopKey>,
    /// Finished hops, by when to forget them. Finish times only grow, so
    /// the queue is in order but for deadlines that cut a window short;
    /// those are forgotten a little late, never early.
    forget: VecDeque<(Instant, HopKey)>,
}

impl Taken {
    /// Takes `key` unless it is remembered: `Ok(false)` for a duplicate.
    pub fn take(&mut self, key: HopKey, now: Instant) -> Result<bool, Status> {
        while let Some((at, _)) = self.forget.front()
            && *at <= now
        {
            let (_, key) = self.forget.pop_front().expect("just looked");
            self.keys.remove(&key);
        }
        if self.keys.contains(&key) {
            return Ok(false);
        }
        if self.keys.len() >= MAX_REMEMBERED {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("this sidecar remembers {MAX_REMEMBERED} vDAG hops"),
            ));
        }
        self.keys.insert(key);
        Ok(true)
    }

    /// `key` finished: it is forgotten at `forget_at`.
    pub fn finished(&mut self, key: HopKey, forget_at: Instant) {
        self.forget.push_back((forget_at, key));
    }

    /// `key` failed: forgotten at once, so that a retry may run it again.
    pub fn failed(&mut self, key: &HopKey) {
        self.keys.remove(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(request: &str) -> HopKey {
        HopKey {
            request_id: request.into(),
            node: "n".into(),
            from: "m".into(),
        }
    }

    #[test]
    fn a_hop_is_remembered_while_it_runs_and_a_while_after() {
        let mut taken = Taken::default();
        let t0 = Instant::now();
        assert_eq!(taken.take(key("r1"), t0), Ok(true));
        assert_eq!(taken.take(key("r1"), t0), Ok(false), "running");
        assert_eq!(taken.take(key("r2"), t0), Ok(true), "another request");
        let later = t0 + Duration::from_secs(100);
        assert_eq!(taken.take(key("r1"), later), Ok(false), "still running");
        taken.finished(key("r1"), later + REMEMBER_FINISHED);
        assert_eq!(
            taken.take(key("r1"), later + Duration::from_secs(1)),
            Ok(false)
        );
        let after = later + REMEMBER_FINISHED;
        assert_eq!(taken.take(key("r1"), after), Ok(true), "forgotten");
        assert_eq!(taken.len(), 2, "r1 (again) and r2, which still runs");
        taken.failed(&key("r2"));
        assert_eq!(
            taken.take(key("r2"), after),
            Ok(true),
            "a failed hop may run again"
        );
    }
}
