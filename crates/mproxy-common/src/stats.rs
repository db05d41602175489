//! Counters and rate-limited logging
//!
//! Nothing received may be lost silently: every drop, truncation and error
//! lands in a counter that the binaries print in their summaries, and the
//! log line that goes with it is rate-limited so a fault storm cannot flood
//! stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a rate-limited message may be logged
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Lets one message through per [`LOG_INTERVAL`], counting the ones held back
#[derive(Debug)]
pub struct LogLimiter {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last message let through, plus one (0: never)
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    /// `Some(n)` if a message may be logged now (`n` were held back since
    /// the last one), `None` if it should be suppressed
    pub fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_INTERVAL.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A monotonically increasing counter shared between threads
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Add one
    pub fn inc(&self) {
        self.add(1);
    }

    /// Current value
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Raise to `v` if `v` is larger (for cumulative kernel counters)
    pub fn max(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// Format a byte count with a binary unit, e.g. `20.0 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Format a rate in bits per second, e.g. `812.4 Mbit/s`
pub fn human_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let bits = bytes as f64 * 8.0 / secs;
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else {
        format!("{:.1} kbit/s", bits / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_limiter() {
        let l = LogLimiter::default();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        // pretend the last message was long ago
        l.last.store(1, Ordering::Relaxed);
        let now = l.epoch.elapsed().as_millis() as u64;
        if now < LOG_INTERVAL.as_millis() as u64 {
            // epoch too recent to rewind: shift the epoch instead
            let l2 = LogLimiter {
                epoch: Instant::now() - LOG_INTERVAL * 2,
                last: AtomicU64::new(1),
                suppressed: AtomicU64::new(2),
            };
            assert_eq!(l2.allow(), Some(2));
        }
    }

    #[test]
    fn test_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
        assert_eq!(
            human_rate(125_000_000, Duration::from_secs(1)),
            "1.00 Gbit/s"
        );
        assert_eq!(human_rate(1_000, Duration::from_secs(1)), "8.0 kbit/s");
    }
}
