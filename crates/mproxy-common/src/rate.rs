//! Rates (`--rate 100mbit`) and a token-bucket pacer (sans-IO)
//!
//! Rate syntax: a number (decimals allowed) with an optional prefix and
//! unit. The unit says bytes or bits:
//!
//! - **bytes** per second: no unit, `B`, `B/s`, `Bps` (capital `B`), or
//!   the words `byte`, `bytes`, `byte/s`, `bytes/s` (any case);
//! - **bits** per second: `b`, `b/s`, `bps` (small `b`), or the words
//!   `bit`, `bits`, `bit/s`, `bits/s` (any case).
//!
//! So `2MB`, `2MBps` and `2MB/s` are 2 megabytes (16 megabits) per
//! second, and `2Mb`, `2Mbps` and `2mbit` are 2 megabits. A unit that is
//! neither (`BPS`, `bPs`) is refused rather than guessed.
//!
//! Prefixes: decimal `k`, `M`, `G`, `T` (powers of 1000, either case:
//! `m` is mega, there are no fractions of a bit) and binary `Ki`, `Mi`,
//! `Gi`, `Ti` (powers of 1024).
//!
//! | input | bytes/s |
//! |---|---|
//! | `125000` | 125 000 |
//! | `500kB` | 500 000 |
//! | `2MB`, `2MBps`, `2MB/s` | 2 000 000 (16 Mbit/s) |
//! | `2MiB` | 2 097 152 |
//! | `100mbit`, `100Mbps`, `100Mb/s` | 12 500 000 |
//! | `1gbit` | 125 000 000 |
//!
//! ```
//! use mproxy_common::rate::Rate;
//! assert_eq!("100mbit".parse::<Rate>().unwrap().bytes_per_sec(), 12_500_000);
//! assert_eq!("2MBps".parse::<Rate>().unwrap().bytes_per_sec(), 2_000_000);
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A data rate in bytes per second (never zero)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    /// A rate of `n` bytes per second; `None` for zero
    pub fn from_bytes_per_sec(n: u64) -> Option<Self> {
        (n > 0).then_some(Self(n))
    }

    /// Bytes per second
    pub fn bytes_per_sec(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            crate::stats::human_rate(self.0, Duration::from_secs(1))
        )
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid rate '{s}' (examples: 125000, 500kB, 2MBps, 2MiB, 100mbit, 100Mbps, 1gbit; B is bytes, b is bits)"
            )
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let (prefix, rest) = match unit.chars().next() {
            Some(c) if "kKmMgGtT".contains(c) => {
                let (p, r) = unit.split_at(1);
                match r.strip_prefix('i') {
                    Some(r) => (binary(p), r),
                    None => (decimal(p), r),
                }
            }
            _ => (1.0, unit),
        };
        let per_byte = unit_scale(rest).ok_or_else(bad)?;
        let bytes = num * prefix * per_byte;
        if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
            return Err(bad());
        }
        Ok(Self(bytes.round() as u64))
    }
}

/// Bytes per unit: 1 for byte units, 1/8 for bit units, `None` for
/// anything else (the case of `B`/`b` decides in the short forms)
fn unit_scale(unit: &str) -> Option<f64> {
    match unit {
        "" | "B" | "B/s" | "Bps" => return Some(1.0),
        "b" | "b/s" | "bps" => return Some(1.0 / 8.0),
        _ => {}
    }
    match unit.to_ascii_lowercase().as_str() {
        "byte" | "bytes" | "byte/s" | "bytes/s" => Some(1.0),
        "bit" | "bits" | "bit/s" | "bits/s" => Some(1.0 / 8.0),
        _ => None,
    }
}

fn decimal(p: &str) -> f64 {
    match p.to_ascii_lowercase().as_str() {
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        _ => 1e12,
    }
}

fn binary(p: &str) -> f64 {
    match p.to_ascii_lowercase().as_str() {
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => 1024.0f64.powi(4),
    }
}

/// Token bucket: how long to wait before sending the next datagram
///
/// Time is passed in, so the pacer is deterministic under test. The bucket
/// holds at most `burst` bytes of credit, so an idle sender does not earn
/// the right to blast a huge burst later.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    credit: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` with a bucket of `burst` bytes
    pub fn new(rate: Rate, burst: usize) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate: rate.bytes_per_sec() as f64,
            burst,
            credit: burst,
            last: None,
        }
    }

    /// How long from `now` until `bytes` could go out without debt
    /// (a look-ahead: nothing is accounted)
    pub fn ready_in(&self, now: Instant, bytes: usize) -> Duration {
        let credit = match self.last {
            Some(last) => (self.credit
                + now.saturating_duration_since(last).as_secs_f64() * self.rate)
                .min(self.burst),
            None => self.credit,
        };
        let after = credit - bytes as f64;
        if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / self.rate)
        }
    }

    /// Account for sending `bytes` at `now`; returns how long the caller
    /// must wait before sending them (zero if credit was available)
    pub fn delay(&mut self, now: Instant, bytes: usize) -> Duration {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.credit = (self.credit + earned).min(self.burst);
        }
        self.last = Some(now);
        self.credit -= bytes as f64;
        if self.credit >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.credit / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse() {
        for (s, want) in [
            ("125000", 125_000),
            ("500kB", 500_000),
            ("500k", 500_000),
            ("2MiB", 2 << 20),
            ("100mbit", 12_500_000),
            ("100Mbit", 12_500_000),
            ("1gbit", 125_000_000),
            ("1.5Gbit", 187_500_000),
            ("8bit", 1),
        ] {
            assert_eq!(s.parse::<Rate>().unwrap().bytes_per_sec(), want, "{s}");
        }
        for bad in ["", "0", "fast", "10 parsecs", "-5", "1e3", "4bit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    /// Every accepted unit, with every prefix: `2<prefix><unit>`
    #[test]
    fn test_every_unit() {
        const BYTES: [&str; 9] = [
            "", "B", "B/s", "Bps", "byte", "bytes", "byte/s", "bytes/s", "BYTES/S",
        ];
        const BITS: [&str; 10] = [
            "b", "b/s", "bps", "bit", "bits", "bit/s", "bits/s", "Bit", "BITS", "Bits/s",
        ];
        let prefixes: [(&str, u64); 12] = [
            ("", 1),
            ("k", 1_000),
            ("K", 1_000),
            ("m", 1_000_000),
            ("M", 1_000_000),
            ("g", 1_000_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
        ];
        for (prefix, mult) in prefixes {
            for unit in BYTES {
                let s = format!("2{prefix}{unit}");
                assert_eq!(
                    s.parse::<Rate>().map(Rate::bytes_per_sec),
                    Ok(2 * mult),
                    "{s}"
                );
            }
            for unit in BITS {
                // 8 bits make one byte: 16<prefix>bit = 2<prefix>B
                let s = format!("16{prefix}{unit}");
                assert_eq!(
                    s.parse::<Rate>().map(Rate::bytes_per_sec),
                    Ok(2 * mult),
                    "{s}"
                );
            }
        }
        // the case that used to be read as bits
        let mbps = |s: &str| s.parse::<Rate>().map(|r| r.bytes_per_sec() * 8);
        assert_eq!(mbps("2MBps"), Ok(16_000_000));
        assert_eq!(mbps("2MB"), Ok(16_000_000));
        assert_eq!(mbps("2MB/s"), Ok(16_000_000));
        assert_eq!(mbps("16Mbps"), Ok(16_000_000));
        assert_eq!(mbps("16mbit"), Ok(16_000_000));
        // ambiguous or unknown units are refused, not guessed
        for bad in [
            "2BPS",
            "2bPs",
            "2Bit/S/s",
            "2MBs",
            "2Mbyte/sec",
            "2KIB",
            "2x",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn test_pacer_long_run_rate() {
        let rate = Rate::from_bytes_per_sec(1_000_000).unwrap();
        let mut p = Pacer::new(rate, 10_000);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        // send 1000-byte datagrams as fast as the pacer allows, for 5 MB
        while sent < 5_000_000 {
            now += p.delay(now, 1000);
            sent += 1000;
        }
        let secs = (now - t0).as_secs_f64();
        // 5 MB at 1 MB/s minus the initial 10 kB burst
        assert!((secs - 4.99).abs() < 0.01, "{secs}");
    }

    #[test]
    fn test_pacer_idle_does_not_accumulate() {
        let rate = Rate::from_bytes_per_sec(1000).unwrap();
        let mut p = Pacer::new(rate, 500);
        let t0 = Instant::now();
        assert_eq!(p.delay(t0, 500), Duration::ZERO);
        // an hour idle earns at most the burst
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(p.delay(later, 500), Duration::ZERO);
        assert_eq!(p.delay(later, 500), Duration::from_millis(500));
    }
}
