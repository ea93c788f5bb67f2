//! Weighted random choice: no shared state at all, so the cheapest policy
//! under contention, at the price of uneven short-term spread.

use rand::Rng;

use super::endpoint_set::EndpointSet;
use super::{Balance, Candidate, PickContext};

pub(super) struct Random<E> {
    set: EndpointSet<E>,
}

impl<E> Random<E> {
    pub(super) fn new(set: EndpointSet<E>) -> Self {
        Random { set }
    }
}

impl<E: Candidate + Send + Sync> Balance<E> for Random<E> {
    fn pick_with(&self, _ctx: &PickContext, rng: &mut dyn Rng) -> Option<&E> {
        if self.set.is_empty() {
            return None;
        }
        Some(&self.set.as_slice()[self.set.sample_healthy(rng)])
    }

    fn endpoints(&self) -> &[E] {
        self.set.as_slice()
    }
}
