//! Behaviour of the balancers through the public seam: distributions over
//! large seeded samples, load awareness, ring stability, and randomized
//! properties over arbitrary endpoint sets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::peak_ewma::DEFAULT_RTT;
use super::*;

struct TestEndpoint {
    id: usize,
    weight: u32,
    load: Arc<Load>,
    healthy: AtomicBool,
}

impl Candidate for TestEndpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &Arc<Load> {
        &self.load
    }
    fn hash_key(&self) -> String {
        format!("10.0.{}.{}:8080", self.id / 256, self.id % 256)
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }
}

fn endpoint(id: usize, weight: u32) -> TestEndpoint {
    TestEndpoint {
        id,
        weight,
        load: Arc::new(Load::default()),
        healthy: AtomicBool::new(true),
    }
}

fn endpoints(weights: &[u32]) -> Vec<TestEndpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(id, &w)| endpoint(id, w))
        .collect()
}

const ALL_POLICIES: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::Random,
    Policy::LeastRequest,
    Policy::PeakEwma,
    Policy::RingHash {
        replicas_per_weight: DEFAULT_RING_REPLICAS_PER_WEIGHT,
    },
];

/// Picks `n` times with no request context and returns how often each
/// endpoint id was chosen.
fn counts(balancer: &dyn Balance<TestEndpoint>, n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut counts = vec![0; balancer.endpoints().len()];
    for _ in 0..n {
        let chosen = balancer
            .pick_with(&PickContext::new(), rng)
            .expect("a non-empty set");
        counts[chosen.id] += 1;
    }
    counts
}

fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
    let total: usize = counts.iter().sum();
    let weight_total: u32 = weights.iter().sum();
    for (i, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
        let share = count as f64 / total as f64;
        let expected = f64::from(weight) / f64::from(weight_total);
        assert!(
            (share - expected).abs() <= tolerance,
            "endpoint {i}: share {share:.4}, expected {expected:.4} (counts {counts:?})"
        );
    }
}

#[test]
fn an_empty_set_picks_nothing() {
    for policy in ALL_POLICIES {
        let balancer = build::<TestEndpoint>(policy, Vec::new());
        assert!(balancer.pick(&PickContext::new()).is_none(), "{policy:?}");
        assert!(
            balancer
                .pick(&PickContext::new().with_hash_key(b"k"))
                .is_none()
        );
    }
}

#[test]
fn round_robin_gives_exact_weighted_turns() {
    let weights = [1, 2, 3, 4];
    let balancer = build(Policy::RoundRobin, endpoints(&weights));
    let counts = counts(&*balancer, 10 * 1_000, &mut StdRng::seed_from_u64(1));
    assert_eq!(counts, vec![1_000, 2_000, 3_000, 4_000]);
}

#[test]
fn round_robin_interleaves_equal_weights() {
    let balancer = build(Policy::RoundRobin, endpoints(&[1, 1, 1]));
    let ids: Vec<usize> = (0..30)
        .map(|_| balancer.pick(&PickContext::new()).unwrap().id)
        .collect();
    for window in ids.windows(3) {
        let mut sorted = window.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2], "{ids:?}");
    }
}

#[test]
fn round_robin_keeps_healthy_proportions_when_one_is_down() {
    let weights = [1, 2, 3];
    let set = endpoints(&weights);
    set[1].healthy.store(false, Relaxed);
    let balancer = build(Policy::RoundRobin, set);
    let counts = counts(&*balancer, 4 * 1_000, &mut StdRng::seed_from_u64(2));
    assert_eq!(counts, vec![1_000, 0, 3_000]);
}

#[test]
fn random_respects_weights() {
    let weights = [1, 2, 3, 4];
    let balancer = build(Policy::Random, endpoints(&weights));
    let counts = counts(&*balancer, 200_000, &mut StdRng::seed_from_u64(3));
    assert_shares(&counts, &weights, 0.005);
}

#[test]
fn least_request_avoids_an_endpoint_with_a_backlog() {
    let set = endpoints(&[1, 1, 1, 1]);
    let _backlog: Vec<InFlight> = (0..10).map(|_| set[0].load.start()).collect();
    let balancer = build(Policy::LeastRequest, set);
    let counts = counts(&*balancer, 10_000, &mut StdRng::seed_from_u64(4));
    // Chosen only when both draws land on it: (1/4)^5 with the redraws.
    assert!(counts[0] < 20, "{counts:?}");
}

/// Requests that each stay in flight for the next `depth` picks: a closed
/// system in which in-flight counts follow what the balancer chose.
fn simulate_queue(
    balancer: &dyn Balance<TestEndpoint>,
    picks: usize,
    depth: usize,
    seed: u64,
) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0; balancer.endpoints().len()];
    let mut in_flight = VecDeque::new();
    for _ in 0..picks {
        let chosen = balancer.pick_with(&PickContext::new(), &mut rng).unwrap();
        counts[chosen.id] += 1;
        in_flight.push_back(chosen.load.start());
        if in_flight.len() > depth {
            in_flight.pop_front();
        }
    }
    counts
}

#[test]
fn least_request_spreads_load_by_weight() {
    let weights = [1, 3];
    let balancer = build(Policy::LeastRequest, endpoints(&weights));
    let counts = simulate_queue(&*balancer, 40_000, 32, 5);
    assert_shares(&counts, &weights, 0.03);
}

#[test]
fn least_request_balances_many_equal_endpoints() {
    let weights = [1; 8];
    let balancer = build(Policy::LeastRequest, endpoints(&weights));
    let counts = simulate_queue(&*balancer, 40_000, 64, 6);
    assert_shares(&counts, &weights, 0.01);
}

#[test]
fn peak_ewma_avoids_a_slow_endpoint() {
    let set = endpoints(&[1, 1, 1]);
    set[0].load.record_rtt(Duration::from_millis(500));
    set[1].load.record_rtt(Duration::from_millis(10));
    set[2].load.record_rtt(Duration::from_millis(10));
    let balancer = build(Policy::PeakEwma, set);
    let counts = counts(&*balancer, 10_000, &mut StdRng::seed_from_u64(7));
    assert!(counts[0] < 100, "{counts:?}");
}

#[test]
fn peak_ewma_weighs_latency_against_requests_in_flight() {
    let set = endpoints(&[1, 1]);
    set[0].load.record_rtt(Duration::from_millis(10));
    set[1].load.record_rtt(Duration::from_millis(40));
    // 10ms with 4 queued (cost 50) is worse than 40ms idle (cost 40).
    let _queued: Vec<InFlight> = (0..4).map(|_| set[0].load.start()).collect();
    let balancer = build(Policy::PeakEwma, set);
    let counts = counts(&*balancer, 1_000, &mut StdRng::seed_from_u64(8));
    assert!(counts[1] > 900, "{counts:?}");
}

#[test]
fn peak_ewma_tries_a_slow_endpoint_again_once_its_penalty_decays() {
    let decay = Duration::from_millis(20);
    let set: Vec<TestEndpoint> = (0..3)
        .map(|id| TestEndpoint {
            load: Arc::new(Load::new(decay, DEFAULT_RTT)),
            ..endpoint(id, 1)
        })
        .collect();
    set[0].load.record_rtt(Duration::from_millis(500));
    // The fast endpoints keep answering in 10ms while the slow one is left
    // alone, so their estimates stay put and the slow one's decays.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        set[1].load.record_rtt(Duration::from_millis(10));
        set[2].load.record_rtt(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    set[1].load.record_rtt(Duration::from_millis(10));
    set[2].load.record_rtt(Duration::from_millis(10));
    let balancer = build(Policy::PeakEwma, set);
    let counts = counts(&*balancer, 1_000, &mut StdRng::seed_from_u64(9));
    assert!(counts[0] > 300, "{counts:?}");
}

fn ring(endpoints: Vec<TestEndpoint>) -> Box<dyn Balance<TestEndpoint>> {
    ring_with(DEFAULT_RING_REPLICAS_PER_WEIGHT, endpoints)
}

fn ring_with(
    replicas_per_weight: u32,
    endpoints: Vec<TestEndpoint>,
) -> Box<dyn Balance<TestEndpoint>> {
    build(
        Policy::RingHash {
            replicas_per_weight,
        },
        endpoints,
    )
}

/// Which endpoint id each of `keys` session keys maps to.
fn key_owners(balancer: &dyn Balance<TestEndpoint>, keys: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(0);
    (0..keys)
        .map(|k| {
            let ctx = PickContext::new().with_hash_key(format!("session-{k}").as_bytes());
            balancer.pick_with(&ctx, &mut rng).unwrap().id
        })
        .collect()
}

#[test]
fn ring_hash_sends_a_key_to_the_same_endpoint_every_time() {
    let balancer = ring(endpoints(&[1; 5]));
    let ctx = PickContext::new().with_hash_key(b"user-42");
    let first = balancer.pick(&ctx).unwrap().id;
    for _ in 0..100 {
        assert_eq!(balancer.pick(&ctx).unwrap().id, first);
    }
}

#[test]
fn ring_hash_does_not_depend_on_endpoint_order() {
    let ordered = key_owners(&*ring(endpoints(&[1, 2, 1, 3, 1])), 5_000);
    let mut shuffled = endpoints(&[1, 2, 1, 3, 1]);
    shuffled.shuffle(&mut StdRng::seed_from_u64(10));
    assert_eq!(key_owners(&*ring(shuffled), 5_000), ordered);
}

#[test]
fn ring_hash_moves_only_the_removed_endpoints_keys() {
    let before = key_owners(&*ring(endpoints(&[1; 6])), 20_000);
    let mut remaining = endpoints(&[1; 6]);
    remaining.remove(3);
    let after = key_owners(&*ring(remaining), 20_000);
    for (key, (&was, &is)) in before.iter().zip(&after).enumerate() {
        if was != 3 {
            assert_eq!(was, is, "key {key} moved although its endpoint stayed");
        } else {
            assert_ne!(is, 3);
        }
    }
    let moved = before.iter().filter(|&&owner| owner == 3).count();
    assert!(
        (2_000..=5_000).contains(&moved),
        "endpoint 3 owned {moved} of 20000 keys"
    );
}

#[test]
fn ring_hash_moves_keys_only_to_an_added_endpoint() {
    let before = key_owners(&*ring(endpoints(&[1; 5])), 20_000);
    let after = key_owners(&*ring(endpoints(&[1; 6])), 20_000);
    for (&was, &is) in before.iter().zip(&after) {
        assert!(is == was || is == 5, "a key moved from {was} to {is}");
    }
}

#[test]
fn ring_hash_routes_around_an_unhealthy_owner_and_back() {
    let balancer = ring(endpoints(&[1; 5]));
    let before = key_owners(&*balancer, 5_000);
    balancer.endpoints()[2].healthy.store(false, Relaxed);
    let during = key_owners(&*balancer, 5_000);
    for (&was, &is) in before.iter().zip(&during) {
        if was == 2 {
            assert_ne!(is, 2);
        } else {
            assert_eq!(was, is);
        }
    }
    balancer.endpoints()[2].healthy.store(true, Relaxed);
    assert_eq!(key_owners(&*balancer, 5_000), before);
}

#[test]
fn ring_hash_shares_follow_weights() {
    let weights = [1, 2, 3, 2];
    // An endpoint's share of the ring varies by about 1/sqrt(its points)
    // around its weight's share: with 1024 points per unit of weight, about
    // 3% of the share, so 0.025 is over three standard deviations.
    let balancer = ring_with(1_024, endpoints(&weights));
    let owners = key_owners(&*balancer, 50_000);
    let mut counts = vec![0; weights.len()];
    for owner in owners {
        counts[owner] += 1;
    }
    assert_shares(&counts, &weights, 0.025);
}

#[test]
fn ring_hash_spreads_requests_without_a_key_at_random() {
    let weights = [1, 1, 1, 1];
    let balancer = ring_with(1_024, endpoints(&weights));
    let counts = counts(&*balancer, 40_000, &mut StdRng::seed_from_u64(11));
    assert_shares(&counts, &weights, 0.025);
}

#[test]
fn every_policy_skips_unhealthy_endpoints() {
    for policy in ALL_POLICIES {
        let set = endpoints(&[1, 5, 1, 2]);
        set[1].healthy.store(false, Relaxed);
        set[3].healthy.store(false, Relaxed);
        let balancer = build(policy, set);
        let mut rng = StdRng::seed_from_u64(12);
        for k in 0..2_000 {
            let ctx = PickContext::new().with_hash_key(format!("{k}").as_bytes());
            for ctx in [ctx, PickContext::new()] {
                let id = balancer.pick_with(&ctx, &mut rng).unwrap().id;
                assert!(id == 0 || id == 2, "{policy:?} picked unhealthy {id}");
            }
        }
    }
}

#[test]
fn every_policy_uses_all_endpoints_when_none_is_healthy() {
    for policy in ALL_POLICIES {
        let set = endpoints(&[1, 1, 1]);
        for e in &set {
            e.healthy.store(false, Relaxed);
        }
        let balancer = build(policy, set);
        let counts = counts(&*balancer, 3_000, &mut StdRng::seed_from_u64(13));
        assert!(counts.iter().all(|&c| c > 500), "{policy:?}: {counts:?}");
    }
}

#[test]
fn weight_zero_counts_as_one() {
    let weights = [0, 1, 2];
    let effective = [1, 1, 2];
    let rr = build(Policy::RoundRobin, endpoints(&weights));
    assert_eq!(
        counts(&*rr, 4_000, &mut StdRng::seed_from_u64(14)),
        vec![1_000, 1_000, 2_000]
    );
    let random = build(Policy::Random, endpoints(&weights));
    assert_shares(
        &counts(&*random, 100_000, &mut StdRng::seed_from_u64(15)),
        &effective,
        0.01,
    );
}

#[test]
fn round_robin_hands_out_every_turn_once_across_threads() {
    let balancer = build(Policy::RoundRobin, endpoints(&[1, 2, 3]));
    let per_thread = 6 * 2_000;
    let totals: Vec<HashMap<usize, usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = HashMap::new();
                    for _ in 0..per_thread {
                        *seen
                            .entry(balancer.pick(&PickContext::new()).unwrap().id)
                            .or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sum = |id| {
        totals
            .iter()
            .map(|t| t.get(&id).copied().unwrap_or(0))
            .sum::<usize>()
    };
    assert_eq!([sum(0), sum(1), sum(2)], [8_000, 16_000, 24_000]);
}

/// Randomized property: over arbitrary endpoint sets (empty, single, zero and
/// extreme weights, any health), every policy returns `Some` exactly when the
/// set is non-empty, the endpoint returned is a member of the set, and it is
/// healthy whenever any member is. Seeded, so a failure reproduces; the case
/// is printed.
#[test]
fn pick_always_returns_a_member() {
    let mut rng = StdRng::seed_from_u64(0x0ba1_a4ce);
    for case in 0..600 {
        let len = rng.random_range(0..12);
        let mut weights: Vec<u32> = (0..len)
            .map(|_| {
                if rng.random_bool(0.1) {
                    0
                } else {
                    rng.random_range(1..10)
                }
            })
            .collect();
        // Extreme weights make schedules and rings hit their size caps, which
        // is slow in debug builds: one case in ten.
        if len > 0 && rng.random_bool(0.1) {
            let extreme = if rng.random() { u32::MAX } else { rng.random() };
            weights[rng.random_range(0..len)] = extreme;
        }
        let healthy: Vec<bool> = (0..len).map(|_| rng.random_bool(0.6)).collect();
        let policy = match rng.random_range(0..5) {
            0 => Policy::RoundRobin,
            1 => Policy::Random,
            2 => Policy::LeastRequest,
            3 => Policy::PeakEwma,
            _ => Policy::RingHash {
                replicas_per_weight: match rng.random_range(0..20) {
                    0 => 1_024,
                    _ => rng.random_range(0..=64),
                },
            },
        };
        let set = endpoints(&weights);
        for (e, &h) in set.iter().zip(&healthy) {
            e.healthy.store(h, Relaxed);
            e.load
                .record_rtt(Duration::from_micros(rng.random_range(0..u64::MAX / 2)));
        }
        let balancer = build(policy, set);
        let label = format!("case {case}: {policy:?} weights {weights:?} healthy {healthy:?}");
        for _ in 0..20 {
            let ctx = if rng.random_bool(0.5) {
                PickContext::new().with_hash_key(&rng.random::<[u8; 8]>())
            } else {
                PickContext::new()
            };
            let picked = balancer.pick_with(&ctx, &mut rng);
            match picked {
                None => assert_eq!(len, 0, "{label}: nothing picked"),
                Some(e) => {
                    let members = balancer.endpoints();
                    assert!(
                        members.iter().any(|m| std::ptr::eq(m, e)),
                        "{label}: not a member"
                    );
                    if healthy.contains(&true) {
                        assert!(healthy[e.id], "{label}: picked unhealthy {}", e.id);
                    }
                }
            }
        }
    }
}
