//! Consistent hashing on a ring (Karger et al.; Envoy's RING_HASH): every
//! endpoint owns `replicas_per_weight * weight` points on a 64-bit ring and a
//! request goes to the owner of the first point at or after its hash.
//!
//! Points depend only on the endpoint's `hash_key`, never on its position in
//! the list, so every sidecar builds the same ring and removing an endpoint
//! moves only the keys that it owned.

use rand::{Rng, RngExt};

use super::endpoint_set::EndpointSet;
use super::{Balance, Candidate, PickContext};
use twox_hash::XxHash64;

/// The most points a ring holds (16 bytes each: 4 MiB). Above it every
/// endpoint's share is scaled down alike, which keeps the proportions but
/// means that adding or removing an endpoint can then move a few other keys.
const MAX_RING_POINTS: u64 = 1 << 18;

/// Seed of the point hashes; also used for request keys so that both live in
/// one hash space.
pub(super) const RING_SEED: u64 = 0;

pub(super) struct RingHash<E> {
    set: EndpointSet<E>,
    /// (point, endpoint index), sorted by point.
    ring: Box<[(u64, u32)]>,
}

impl<E: Candidate> RingHash<E> {
    pub(super) fn new(set: EndpointSet<E>, replicas_per_weight: u32) -> Self {
        let desired: Vec<u64> = (0..set.len())
            .map(|i| u64::from(replicas_per_weight) * u64::from(set.weight(i)))
            .collect();
        let total: u64 = desired.iter().sum();
        let mut ring = Vec::with_capacity(total.min(MAX_RING_POINTS) as usize + set.len());
        for ((endpoint, points), index) in set.as_slice().iter().zip(desired).zip(0u32..) {
            let points = if total > MAX_RING_POINTS {
                (points * MAX_RING_POINTS / total).max(1)
            } else {
                points
            };
            // Each endpoint's points are the hashes of 0, 1, 2... seeded
            // with the hash of its key: a function of the key alone.
            let seed = XxHash64::oneshot(RING_SEED, endpoint.hash_key().as_bytes());
            ring.extend(
                (0..points).map(|replica| (XxHash64::oneshot(seed, &replica.to_le_bytes()), index)),
            );
        }
        // Index breaks ties only between equal 64-bit hashes, which a ring of
        // this size essentially never has.
        ring.sort_unstable();
        RingHash {
            set,
            ring: ring.into_boxed_slice(),
        }
    }

    /// Position of the first point at or after `hash`, wrapping to the start.
    fn position(&self, hash: u64) -> usize {
        self.ring.partition_point(|&(point, _)| point < hash) % self.ring.len()
    }
}

impl<E: Candidate + Send + Sync> Balance<E> for RingHash<E> {
    fn pick_with(&self, ctx: &PickContext, rng: &mut dyn Rng) -> Option<&E> {
        if self.ring.is_empty() {
            return None;
        }
        let hash = ctx.request_hash().unwrap_or_else(|| rng.random());
        let start = self.position(hash);
        let owner = self.ring[start].1 as usize;
        if self.set.is_healthy(owner) || !self.set.any_healthy() {
            return Some(&self.set.as_slice()[owner]);
        }
        // Walking on to the next healthy owner sends this endpoint's keys to
        // their neighbours on the ring and leaves everyone else's in place.
        let next_healthy = (1..self.ring.len())
            .map(|step| self.ring[(start + step) % self.ring.len()].1 as usize)
            .find(|&i| self.set.is_healthy(i))
            .unwrap_or(owner);
        Some(&self.set.as_slice()[next_healthy])
    }

    fn endpoints(&self) -> &[E] {
        self.set.as_slice()
    }
}
