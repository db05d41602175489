//! Reconnect delays: exponential backoff with jitter (sans-IO)
//!
//! Each failed attempt doubles the ceiling, from `min` up to `max`; the delay
//! actually used is drawn uniformly from the upper half of the ceiling
//! ("equal jitter"), so many proxies that lost the same upstream at the same
//! moment do not reconnect in lockstep. [`Backoff::reset`] after a
//! connection that worked.
//!
//! ```
//! use std::time::Duration;
//! use mproxy_common::backoff::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30), 7);
//! let first = b.next_delay();
//! assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
//! ```

use std::time::Duration;

/// Exponential backoff state with its own small PRNG
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays start at `min` and double up to `max`; `seed` drives the jitter
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// A seed that differs between processes and threads
    pub fn entropy_seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    }

    /// The delay before the next attempt
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = self.next_u64() % (half.as_micros().max(1) as u64 + 1);
        half + Duration::from_micros(jitter)
    }

    /// Start again from `min` (call after a connection that delivered data)
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let mut last_ceiling = Duration::ZERO;
        for i in 0..10 {
            let d = b.next_delay();
            let ceiling = (Duration::from_millis(100) * (1 << i)).min(Duration::from_secs(2));
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{i}: {d:?} vs {ceiling:?}"
            );
            assert!(ceiling >= last_ceiling);
            last_ceiling = ceiling;
        }
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn test_jitter_spreads() {
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|seed| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1), seed * 2 + 1)
                    .next_delay()
            })
            .collect();
        assert!(delays.len() > 10);
    }
}
