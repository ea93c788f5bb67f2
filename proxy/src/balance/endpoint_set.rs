//! The immutable endpoint list every policy works over, with the weighted and
//! health-aware sampling they share.

use rand::{Rng, RngExt};

use super::Candidate;

/// Rejection sampling draws this many times before counting healthy weight
/// exactly. With half the endpoints down, 8 draws all miss 0.4% of the time.
const REJECTION_DRAWS: usize = 8;

pub(super) struct EndpointSet<E> {
    endpoints: Box<[E]>,
    /// `cumulative[i]` is the total effective weight of endpoints `0..=i`.
    cumulative: Box<[u64]>,
}

/// Weight 0 is proto3's "unset", whose documented default is 1.
pub(super) fn effective_weight(endpoint: &impl Candidate) -> u32 {
    endpoint.weight().max(1)
}

impl<E: Candidate> EndpointSet<E> {
    pub(super) fn new(endpoints: Vec<E>) -> Self {
        let cumulative = endpoints
            .iter()
            .scan(0u64, |total, e| {
                *total += u64::from(effective_weight(e));
                Some(*total)
            })
            .collect();
        EndpointSet {
            endpoints: endpoints.into_boxed_slice(),
            cumulative,
        }
    }

    pub(super) fn as_slice(&self) -> &[E] {
        &self.endpoints
    }

    pub(super) fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub(super) fn weight(&self, index: usize) -> u32 {
        effective_weight(&self.endpoints[index])
    }

    pub(super) fn is_healthy(&self, index: usize) -> bool {
        self.endpoints[index].is_healthy()
    }

    pub(super) fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(Candidate::is_healthy)
    }

    /// An index drawn with probability proportional to weight, ignoring health.
    /// The set must not be empty.
    pub(super) fn sample(&self, rng: &mut dyn Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let point = rng.random_range(0..total.max(1));
        self.cumulative.partition_point(|&upto| upto <= point)
    }

    /// An index drawn by weight among the healthy endpoints, or among all of
    /// them when none is healthy (see "panic mode" in the module docs).
    /// The set must not be empty.
    ///
    /// Rejection keeps the common case (most endpoints healthy) at one
    /// binary search and no allocation, and is exact: redrawing until a
    /// healthy one comes up gives each healthy endpoint probability
    /// weight / healthy weight.
    pub(super) fn sample_healthy(&self, rng: &mut dyn Rng) -> usize {
        for _ in 0..REJECTION_DRAWS {
            let index = self.sample(rng);
            if self.is_healthy(index) {
                return index;
            }
        }
        self.sample_healthy_exactly(rng)
            .unwrap_or_else(|| self.sample(rng))
    }

    /// Weighted draw over the endpoints healthy right now; `None` when there
    /// are none, or when health changed between the two passes.
    fn sample_healthy_exactly(&self, rng: &mut dyn Rng) -> Option<usize> {
        let healthy = || (0..self.len()).filter(|&i| self.is_healthy(i));
        let total: u64 = healthy().map(|i| u64::from(self.weight(i))).sum();
        if total == 0 {
            return None;
        }
        let mut point = rng.random_range(0..total);
        for index in healthy() {
            let weight = u64::from(self.weight(index));
            if point < weight {
                return Some(index);
            }
            point -= weight;
        }
        None
    }
}
