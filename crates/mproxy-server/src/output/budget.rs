//! A token bucket for log lines that come in bursts (one per stream or
//! per file): a few pass at once, then a steady trickle, and the next line
//! that passes says how many were held back

use std::time::Instant;

/// Lets `burst` lines through at once and `per_sec` a second after that
#[derive(Debug)]
pub(crate) struct Budget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Budget {
    /// A full bucket
    pub(crate) fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now (`n` were held back since the
    /// last one that was), `None` if it is to be held back (and counted)
    pub(crate) fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Report the held-back lines elsewhere (a summary): returns and clears them
    pub(crate) fn take_pending(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_burst_then_trickle() {
        let mut b = Budget::new(3, 2);
        let t0 = b.last;
        for _ in 0..3 {
            assert_eq!(b.allow_at(t0), Some(0));
        }
        assert_eq!(b.allow_at(t0), None);
        assert_eq!(b.allow_at(t0), None);
        assert_eq!(b.suppressed, 2);
        // half a second at 2/s refills one token
        assert_eq!(b.allow_at(t0 + Duration::from_millis(500)), Some(2));
        assert_eq!(b.allow_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(b.take_pending(), 1);
        // a long pause refills at most the burst
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.allow_at(later).is_some());
        }
        assert_eq!(b.allow_at(later), None);
    }
}
