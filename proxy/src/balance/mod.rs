//! Choosing the endpoint of a cluster that a request goes to.
//!
//! A balancer is built for one immutable endpoint set, off the request path,
//! whenever the set changes (config, xDS, DNS), and swapped in whole; requests
//! only ever call [`Balance::pick`]. The router sees the [`Balance`] trait and
//! nothing else, so new ways of choosing (a model-aware balancer fed by ORCA
//! load reports, a wasm policy choosing among healthy endpoints) are new
//! implementations of it, with what they need carried in [`PickContext`] and
//! [`Load`].
//!
//! Balancers are generic over the endpoint type through [`Candidate`], so
//! they do not depend on the proxy's endpoint struct and tests use their own.
//!
//! # Weights
//! An endpoint's share of traffic is proportional to its weight. Weight 0 is
//! proto3's "unset" and counts as the documented default, 1: the config
//! validator already maps it so, and a balancer handed one anyway must
//! neither divide by it nor silently drop the endpoint.
//!
//! # Panic mode
//! Unhealthy endpoints are skipped. When none is healthy, balancers pick among
//! all of them as if all were healthy (Envoy's "panic mode"): every endpoint
//! failing its health check at once is more often a fault of the checking
//! (a partition between this sidecar and the endpoints, a bad probe rolled
//! out) than a real total outage, and failing every request guarantees an
//! outage, while trying the endpoints lets the ones that work still answer.
//! Retries and circuit breakers bound the cost when they really are down.

mod endpoint_set;
mod load;
mod p2c;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use rand::Rng;

use self::endpoint_set::EndpointSet;
use self::p2c::{LoadSignal, P2c};
use self::random::Random;
use self::ring_hash::{RING_SEED, RingHash};
use self::round_robin::RoundRobin;

pub use self::load::{InFlight, Load};

/// Ring entries per unit of weight when the cluster does not say.
pub const DEFAULT_RING_REPLICAS_PER_WEIGHT: u32 = 64;

/// What a balancer needs to know about an endpoint.
pub trait Candidate {
    /// Relative share of traffic; 0 counts as 1.
    fn weight(&self) -> u32;
    /// The endpoint's load signals, shared with the request path.
    fn load(&self) -> &Arc<Load>;
    /// A stable identity that is the same in every sidecar and across
    /// restarts, e.g. the endpoint's `ip:port`: ring positions derive from it.
    fn hash_key(&self) -> String;
    /// Read on every pick, so health changes apply without a rebuild.
    fn is_healthy(&self) -> bool;
}

/// How a cluster spreads requests (the proto's `Cluster.LbPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Weighted round robin, turns interleaved.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on requests in flight per unit of weight.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency times requests in flight,
    /// per unit of weight.
    PeakEwma,
    /// Consistent hashing on [`PickContext::with_hash_key`]; requests without
    /// a key go to a random point. 0 replicas counts as the default.
    RingHash { replicas_per_weight: u32 },
}

/// Per-request input to a pick. Built by the router; fields are added here as
/// new balancers need them, so callers construct it with [`PickContext::new`]
/// and the `with_` methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PickContext {
    request_hash: Option<u64>,
}

impl PickContext {
    pub fn new() -> Self {
        PickContext::default()
    }

    /// The request's affinity key (for RING_HASH, the configured header's
    /// value): requests with equal keys go to the same endpoint while the
    /// endpoint set is unchanged. Hashed with XXH64, which every sidecar and
    /// every release computes alike.
    #[must_use]
    pub fn with_hash_key(mut self, key: &[u8]) -> Self {
        self.request_hash = Some(twox_hash::XxHash64::oneshot(RING_SEED, key));
        self
    }

    pub fn request_hash(&self) -> Option<u64> {
        self.request_hash
    }
}

/// A way of choosing endpoints from one fixed set.
pub trait Balance<E>: Send + Sync {
    /// Chooses an endpoint, drawing any randomness from `rng` (tests and
    /// simulations pass a seeded one). `None` only when the set is empty.
    fn pick_with(&self, ctx: &PickContext, rng: &mut dyn Rng) -> Option<&E>;

    /// Chooses an endpoint using the thread's random number generator.
    fn pick(&self, ctx: &PickContext) -> Option<&E> {
        self.pick_with(ctx, &mut rand::rng())
    }

    /// The set this balancer chooses from, in the order it was given.
    fn endpoints(&self) -> &[E];
}

/// Builds the balancer for `policy` over `endpoints`. Costs time and memory in
/// proportion to the total weight (round robin's schedule, the hash ring), so
/// call it off the request path when the endpoint set changes.
pub fn build<E>(policy: Policy, endpoints: Vec<E>) -> Box<dyn Balance<E>>
where
    E: Candidate + Send + Sync + 'static,
{
    let set = EndpointSet::new(endpoints);
    match policy {
        Policy::RoundRobin => Box::new(RoundRobin::new(set)),
        Policy::Random => Box::new(Random::new(set)),
        Policy::LeastRequest => Box::new(P2c::new(set, LoadSignal::InFlight)),
        Policy::PeakEwma => Box::new(P2c::new(set, LoadSignal::PeakEwma)),
        Policy::RingHash {
            replicas_per_weight,
        } => {
            let replicas = if replicas_per_weight == 0 {
                DEFAULT_RING_REPLICAS_PER_WEIGHT
            } else {
                replicas_per_weight
            };
            Box::new(RingHash::new(set, replicas))
        }
    }
}

#[cfg(test)]
mod tests;
