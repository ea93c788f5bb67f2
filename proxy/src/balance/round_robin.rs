//! Weighted round robin over a schedule computed when the balancer is built,
//! so that a pick is one atomic increment and an array read.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rand::{Rng, RngExt};

use super::endpoint_set::EndpointSet;
use super::{Balance, Candidate, PickContext};

/// Longest schedule kept (256 KiB of indices). Weight sets whose reduced
/// total exceeds it are scaled down, which approximates extreme weight
/// ratios; the config validator's weight bound keeps ordinary sets far below.
const MAX_SCHEDULE_LEN: u64 = 1 << 16;

/// Further slots taken past unhealthy endpoints before falling back to a
/// weighted random healthy pick, which bounds a pick's cost when most of the
/// schedule belongs to endpoints that are down.
const MAX_SLOTS_SKIPPED: usize = 8;

pub(super) struct RoundRobin<E> {
    set: EndpointSet<E>,
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

impl<E: Candidate> RoundRobin<E> {
    pub(super) fn new(set: EndpointSet<E>) -> Self {
        let schedule = schedule(&(0..set.len()).map(|i| set.weight(i)).collect::<Vec<_>>());
        // Sidecars that all start at slot 0 after a config push would all
        // send their first requests to the same endpoint.
        let cursor = AtomicUsize::new(rand::rng().random_range(0..schedule.len().max(1)));
        RoundRobin {
            set,
            schedule,
            cursor,
        }
    }

    fn next_in_schedule(&self) -> usize {
        let slot = self.cursor.fetch_add(1, Relaxed) % self.schedule.len();
        self.schedule[slot] as usize
    }
}

impl<E: Candidate + Send + Sync> Balance<E> for RoundRobin<E> {
    fn pick_with(&self, _ctx: &PickContext, rng: &mut dyn Rng) -> Option<&E> {
        if self.set.is_empty() {
            return None;
        }
        let first = self.next_in_schedule();
        if self.set.is_healthy(first) || !self.set.any_healthy() {
            return Some(&self.set.as_slice()[first]);
        }
        // Taking further slots (rather than scanning ahead locally) removes
        // the unhealthy endpoints from the rotation, so the healthy ones keep
        // their relative weights.
        let healthy = (0..MAX_SLOTS_SKIPPED)
            .map(|_| self.next_in_schedule())
            .find(|&i| self.set.is_healthy(i))
            .unwrap_or_else(|| self.set.sample_healthy(rng));
        Some(&self.set.as_slice()[healthy])
    }

    fn endpoints(&self) -> &[E] {
        self.set.as_slice()
    }
}

/// One cycle of indices in which endpoint `i` appears `weights[i]` times (after
/// reduction), its turns spread evenly: turn `k` of endpoint `i` is placed at
/// the midpoint `(k + 1/2) / weight` of its share of the cycle, earliest
/// first. For weights 3:1 that gives `a a b a` rather than `a a a b`.
fn schedule(weights: &[u32]) -> Box<[u32]> {
    let weights = reduce(weights);
    let mut turns: Vec<(u64, u64, u32)> = weights
        .iter()
        .zip(0u32..)
        .flat_map(|(&weight, index)| (0..weight).map(move |turn| (2 * turn + 1, 2 * weight, index)))
        .collect();
    turns.sort_unstable_by(|&(num_a, den_a, a), &(num_b, den_b, b)| {
        // num/den compared exactly; both products fit easily in u64.
        match (num_a * den_b).cmp(&(num_b * den_a)) {
            Ordering::Equal => a.cmp(&b),
            unequal => unequal,
        }
    });
    turns.into_iter().map(|(_, _, index)| index).collect()
}

/// The smallest integer weights with the same ratios, scaled down (each at
/// least 1) when their total is longer than a schedule may be.
fn reduce(weights: &[u32]) -> Vec<u64> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE_LEN {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| (w * MAX_SCHEDULE_LEN / total).max(1))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_take_turns_in_order() {
        assert_eq!(&*schedule(&[1, 1, 1]), &[0, 1, 2]);
        assert_eq!(&*schedule(&[5, 5]), &[0, 1]);
    }

    #[test]
    fn turns_are_spread_over_the_cycle() {
        assert_eq!(&*schedule(&[3, 1]), &[0, 0, 1, 0]);
        assert_eq!(&*schedule(&[2, 1]), &[0, 1, 0]);
    }

    #[test]
    fn each_endpoint_appears_as_often_as_its_reduced_weight() {
        let weights = [6, 4, 2];
        let cycle = schedule(&weights);
        assert_eq!(cycle.len(), 6);
        for (index, expected) in [3, 2, 1].into_iter().enumerate() {
            assert_eq!(
                cycle.iter().filter(|&&i| i as usize == index).count(),
                expected
            );
        }
    }

    #[test]
    fn huge_weight_sets_are_bounded_and_keep_every_endpoint() {
        let weights: Vec<u32> = (0..300)
            .map(|i| if i == 0 { u32::MAX } else { 9_999 - i })
            .collect();
        let cycle = schedule(&weights);
        assert!(cycle.len() as u64 <= MAX_SCHEDULE_LEN + weights.len() as u64);
        for index in 0..weights.len() as u32 {
            assert!(cycle.contains(&index), "endpoint {index} lost");
        }
    }
}
