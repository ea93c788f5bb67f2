//! A peak-sensitive moving average of an endpoint's latency (Finagle's and
//! linkerd's "peak EWMA").
//!
//! A sample slower than the estimate replaces it at once, so an endpoint that
//! turns slow is avoided from its first slow answer. Faster samples pull the
//! estimate down with time constant `decay`, and silence decays it toward
//! zero, so an endpoint that was slow is tried again once it has been left
//! alone for a while instead of being starved for ever.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Time constant of the decay (Finagle's and linkerd's default).
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint that has not answered yet (linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// No sample yet. Its upper half is an f32 NaN, which a real estimate never is.
const UNSEEDED: u64 = u64::MAX;

/// The estimate and when it was last updated live in one atomic word: the
/// request path reads them on every pick and every response updates them, so a
/// lock here would be taken twice per request by every worker thread, while a
/// single word gives readers a consistent pair with one load and writers a
/// short compare-and-swap loop.
///
/// Layout: high 32 bits, the estimate in microseconds as `f32` bits (24 bits
/// of precision is plenty for a cost heuristic); low 32 bits, milliseconds
/// since `epoch`, compared with wrapping arithmetic. That clock wraps after
/// 49 days; gaps between updates are read as signed, so a gap longer than 24
/// days (an endpoint that answered nothing for that long) reads as no decay,
/// which merely keeps its last estimate until its next answer.
pub(super) struct PeakEwma {
    word: AtomicU64,
    epoch: Instant,
    decay_ms: f64,
    default_rtt_us: f64,
}

impl PeakEwma {
    pub(super) fn new(decay: Duration, default_rtt: Duration) -> Self {
        PeakEwma {
            word: AtomicU64::new(UNSEEDED),
            epoch: Instant::now(),
            // A zero decay would divide by zero; one millisecond is "no memory".
            decay_ms: (decay.as_secs_f64() * 1e3).max(1.0),
            default_rtt_us: micros(default_rtt),
        }
    }

    /// The estimate at `now`, in microseconds.
    pub(super) fn estimate_us(&self, now: Instant) -> f64 {
        let word = self.word.load(Relaxed);
        if word == UNSEEDED {
            return self.default_rtt_us;
        }
        let (estimate, stamp) = unpack(word);
        estimate * self.retained(self.millis(now), stamp)
    }

    pub(super) fn observe(&self, rtt: Duration, now: Instant) {
        let sample = micros(rtt);
        let now_ms = self.millis(now);
        let update = |word: u64| {
            if word == UNSEEDED {
                // Real data beats the guess outright.
                return Some(pack(sample, now_ms));
            }
            let (estimate, stamp) = unpack(word);
            let retained = self.retained(now_ms, stamp);
            let decayed = estimate * retained;
            let next = if sample > decayed {
                sample
            } else {
                decayed + sample * (1.0 - retained)
            };
            // Another thread may have stamped a later instant than ours.
            let stamp = if elapsed_ms(now_ms, stamp) > 0 {
                now_ms
            } else {
                stamp
            };
            Some(pack(next, stamp))
        };
        // The closure always returns Some, so the update always lands.
        let _ = self.word.fetch_update(Relaxed, Relaxed, update);
    }

    /// The share of the estimate that survives from `stamp` to `now_ms`.
    fn retained(&self, now_ms: u32, stamp: u32) -> f64 {
        let elapsed = elapsed_ms(now_ms, stamp).max(0);
        (-f64::from(elapsed) / self.decay_ms).exp()
    }

    fn millis(&self, now: Instant) -> u32 {
        // Truncation is the wrapping clock described on the type.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }
}

fn elapsed_ms(now_ms: u32, stamp: u32) -> i32 {
    now_ms.wrapping_sub(stamp) as i32
}

fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).min(f64::from(f32::MAX))
}

fn pack(estimate_us: f64, stamp: u32) -> u64 {
    (u64::from((estimate_us as f32).to_bits()) << 32) | u64::from(stamp)
}

fn unpack(word: u64) -> (f64, u32) {
    (f64::from(f32::from_bits((word >> 32) as u32)), word as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unseeded_endpoint_reports_the_default_guess() {
        let ewma = PeakEwma::new(DEFAULT_DECAY, ms(30));
        assert_eq!(ewma.estimate_us(Instant::now() + ms(60_000)), 30_000.0);
    }

    #[test]
    fn first_sample_replaces_the_guess() {
        let ewma = PeakEwma::new(DEFAULT_DECAY, ms(30));
        let now = Instant::now();
        ewma.observe(ms(5), now);
        assert!((ewma.estimate_us(now) - 5_000.0).abs() < 1.0);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let ewma = PeakEwma::new(DEFAULT_DECAY, ms(30));
        let now = Instant::now();
        ewma.observe(ms(5), now);
        ewma.observe(ms(400), now + ms(10));
        assert!((ewma.estimate_us(now + ms(10)) - 400_000.0).abs() < 1.0);
    }

    #[test]
    fn faster_samples_pull_the_estimate_down_with_the_time_constant() {
        let ewma = PeakEwma::new(ms(1_000), ms(30));
        let start = Instant::now();
        ewma.observe(ms(100), start);
        // One time constant later a 10ms sample keeps e^-1 of the old estimate.
        let later = start + ms(1_000);
        ewma.observe(ms(10), later);
        let expected = 100_000.0 * (-1f64).exp() + 10_000.0 * (1.0 - (-1f64).exp());
        // Millisecond stamps make the decay exact to about 0.1%.
        assert!(
            (ewma.estimate_us(later) - expected).abs() < 100.0,
            "{}",
            ewma.estimate_us(later)
        );
    }

    #[test]
    fn silence_decays_the_estimate_toward_zero() {
        let ewma = PeakEwma::new(ms(1_000), ms(30));
        let start = Instant::now();
        ewma.observe(ms(100), start);
        let estimate = ewma.estimate_us(start + ms(2_000));
        let expected = 100_000.0 * (-2f64).exp();
        assert!((estimate - expected).abs() < 100.0, "{estimate}");
    }

    #[test]
    fn a_read_from_before_the_last_update_does_not_wrap() {
        let ewma = PeakEwma::new(DEFAULT_DECAY, ms(30));
        let before = Instant::now();
        ewma.observe(ms(50), before + ms(500));
        assert!((ewma.estimate_us(before) - 50_000.0).abs() < 1.0);
    }

    #[test]
    fn absurd_samples_stay_finite() {
        let ewma = PeakEwma::new(Duration::ZERO, Duration::MAX);
        let now = Instant::now();
        assert!(ewma.estimate_us(now).is_finite());
        ewma.observe(Duration::MAX, now);
        ewma.observe(Duration::ZERO, now + ms(5));
        assert!(ewma.estimate_us(now + ms(5)).is_finite());
    }
}
