//! Power of two choices: draw two endpoints by weight, send to the one whose
//! load signal is lower. Nearly as good as always choosing the least loaded
//! endpoint, without scanning them all or sharing a sorted structure, and it
//! avoids the herd that "least loaded" causes when every proxy sees the same
//! idle endpoint at once.

use std::time::Instant;

use rand::Rng;

use super::endpoint_set::EndpointSet;
use super::{Balance, Candidate, PickContext};

/// Redraws for a second endpoint distinct from the first. With two equally
/// weighted endpoints a single draw repeats half the time, which would make
/// every other pick blind to load.
const DISTINCT_DRAWS: usize = 4;

/// What the two candidates are compared on. Both costs are divided by the
/// endpoint's weight, so an endpoint of weight 3 is expected to carry three
/// times the load of one of weight 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoadSignal {
    /// LEAST_REQUEST: requests in flight, plus the one being placed (so that
    /// idle endpoints still differ by weight).
    InFlight,
    /// PEAK_EWMA: latency estimate times (requests in flight + 1).
    PeakEwma,
}

pub(super) struct P2c<E> {
    set: EndpointSet<E>,
    signal: LoadSignal,
}

impl<E: Candidate> P2c<E> {
    pub(super) fn new(set: EndpointSet<E>, signal: LoadSignal) -> Self {
        P2c { set, signal }
    }

    fn cost(&self, index: usize, now: Instant) -> f64 {
        let load = self.set.as_slice()[index].load();
        let cost = match self.signal {
            LoadSignal::InFlight => load.in_flight() as f64 + 1.0,
            LoadSignal::PeakEwma => load.peak_ewma_cost(now),
        };
        cost / f64::from(self.set.weight(index))
    }
}

impl<E: Candidate + Send + Sync> Balance<E> for P2c<E> {
    fn pick_with(&self, _ctx: &PickContext, rng: &mut dyn Rng) -> Option<&E> {
        if self.set.is_empty() {
            return None;
        }
        let first = self.set.sample_healthy(rng);
        let second = (0..DISTINCT_DRAWS)
            .map(|_| self.set.sample_healthy(rng))
            .find(|&other| other != first)
            .unwrap_or(first);
        let now = Instant::now();
        let chosen = if self.cost(second, now) < self.cost(first, now) {
            second
        } else {
            first
        };
        Some(&self.set.as_slice()[chosen])
    }

    fn endpoints(&self) -> &[E] {
        self.set.as_slice()
    }
}
