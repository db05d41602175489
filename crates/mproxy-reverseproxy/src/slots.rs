//! Who gives up a slot when a TCP listener is full
//!
//! A listener holds at most `--max-clients` connections, and a `tls://`
//! listener at most `--max-handshakes` of them in a TLS handshake. A
//! connection that would go over either limit is not refused while a
//! connection that has made less progress holds a slot: that one is
//! closed instead (evicted, counted and logged), so connections that never
//! read, never finish their handshake or never send cannot lock anyone
//! out. Who goes first ([`Class`], lowest first; within a class the one
//! that has been in it longest):
//!
//! 1. a TLS handshake not finished yet, the oldest first;
//! 2. an output client that data waits for and that has taken none of it
//!    lately (its socket is full), the one stuck longest first;
//! 3. a connection that has never taken (output) or sent (input) a byte,
//!    the oldest first: on an idle group every reader is one, so the
//!    slots turn over first in, first out;
//! 4. an output client that has half-closed its end, the oldest first;
//! 5. an output client that takes data (none of the above), the one that
//!    has taken the fewest bytes first: a newcomer is never refused by a
//!    TCP output, since a reader that has just connected cannot be told
//!    from one that will never read until its socket buffers are full.
//!
//! An input connection that has sent data is never evicted: when every
//! slot of a TCP input holds one of those, the newcomer is refused.

use std::time::{Duration, Instant};

/// How far a connection has come, lowest first in line for eviction
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    /// Its TLS handshake has not finished (since it connected)
    Handshaking,
    /// Data waits for it and its socket takes none (since it last took some)
    Stuck,
    /// It has never taken or sent a byte (since it connected)
    Unproven,
    /// It has half-closed its end (since then)
    HalfClosed,
    /// Taking (output) or sending (input) data: outputs evict the one
    /// that has taken the fewest bytes last, inputs never evict it
    Healthy,
}

/// A connection's class, since when it has been in it, and (for
/// [`Class::Healthy`]) the bytes it has taken
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Its class
    pub(crate) class: Class,
    /// Since when
    pub(crate) since: Instant,
    /// Bytes taken, which order [`Class::Healthy`] connections
    pub(crate) taken: u64,
}

impl Standing {
    /// A standing of `class` since `since`
    pub(crate) fn new(class: Class, since: Instant) -> Self {
        Self {
            class,
            since,
            taken: 0,
        }
    }

    /// A [`Class::Healthy`] standing: connected at `since`, `taken` bytes
    pub(crate) fn healthy(since: Instant, taken: u64) -> Self {
        Self {
            class: Class::Healthy,
            since,
            taken,
        }
    }

    /// Eviction order: class, then within [`Class::Healthy`] the bytes
    /// taken, then the oldest `since`
    fn key(&self) -> (Class, u64, Instant) {
        (self.class, self.taken, self.since)
    }

    /// Why it was chosen, for the log: "its TLS handshake unfinished after 2.0 s"
    pub(crate) fn describe(&self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        match self.class {
            Class::Handshaking => format!("its TLS handshake unfinished after {secs:.1} s"),
            Class::Stuck => format!("it has taken no data for {secs:.1} s"),
            Class::Unproven => format!("no byte either way in {secs:.1} s"),
            Class::HalfClosed => format!("half-closed {secs:.1} s ago"),
            Class::Healthy => format!(
                "the fewest bytes taken ({}) of all clients, every one taking data",
                self.taken
            ),
        }
    }
}

/// The connection to close for a newcomer: the lowest class, within it
/// the oldest `since` ([`Class::Healthy`]: the fewest bytes taken); with
/// `spare_healthy` (inputs) `None` if every one is [`Class::Healthy`]
pub(crate) fn victim<K>(
    all: impl IntoIterator<Item = (K, Standing)>,
    spare_healthy: bool,
) -> Option<(K, Standing)> {
    all.into_iter()
        .filter(|(_, s)| !(spare_healthy && s.class == Class::Healthy))
        .min_by_key(|(_, s)| s.key())
}

/// The handshake to close when `--max-handshakes` are running: the oldest
pub(crate) fn oldest_handshake<K>(
    all: impl IntoIterator<Item = (K, Standing)>,
) -> Option<(K, Standing)> {
    all.into_iter()
        .filter(|(_, s)| s.class == Class::Handshaking)
        .min_by_key(|(_, s)| s.since)
}

/// Default `--max-handshakes`: a quarter of the slots, at least 8, at most 64
pub(crate) fn default_max_handshakes(max_clients: usize) -> usize {
    (max_clients / 4).clamp(8, 64).min(max_clients)
}

/// Whether a handshake that began at `opened` is overdue at `now`
pub(crate) fn overdue(opened: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(opened) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_victim_order() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let all = [
            (0, Standing::new(Class::Healthy, at(0))),
            (1, Standing::new(Class::HalfClosed, at(1))),
            (2, Standing::new(Class::Unproven, at(5))),
            (3, Standing::new(Class::Unproven, at(2))),
            (4, Standing::new(Class::Stuck, at(9))),
        ];
        let pick = |v: &[(i32, Standing)], spare| victim(v.iter().copied(), spare).map(|(k, _)| k);
        assert_eq!(pick(&all, true), Some(4));
        assert_eq!(pick(&all[..4], true), Some(3));
        assert_eq!(pick(&all[..2], true), Some(1));
        assert_eq!(pick(&all[..1], true), None);
        assert_eq!(pick(&all[..1], false), Some(0));
        let hs = [
            (7, Standing::new(Class::Handshaking, at(3))),
            (8, Standing::new(Class::Handshaking, at(1))),
        ];
        let mixed: Vec<_> = all.iter().chain(&hs).copied().collect();
        assert_eq!(pick(&mixed, true), Some(8));
        // among readers that all take data: the fewest bytes, then the oldest
        let readers = [
            (1, Standing::healthy(at(1), 500)),
            (2, Standing::healthy(at(2), 100)),
            (3, Standing::healthy(at(0), 100)),
        ];
        assert_eq!(pick(&readers, false), Some(3));
        assert_eq!(pick(&readers, true), None);
        assert_eq!(oldest_handshake(all.iter().copied()), None);
        assert_eq!(oldest_handshake(hs).map(|(k, _)| k), Some(8));
    }

    #[test]
    fn test_describe_and_defaults() {
        let t = Instant::now();
        let s = Standing::new(Class::Handshaking, t);
        assert_eq!(
            s.describe(t + Duration::from_millis(2500)),
            "its TLS handshake unfinished after 2.5 s"
        );
        assert_eq!(default_max_handshakes(256), 64);
        assert_eq!(default_max_handshakes(1000), 64);
        assert_eq!(default_max_handshakes(40), 10);
        assert_eq!(default_max_handshakes(4), 4);
        assert!(overdue(
            t,
            t + Duration::from_secs(1),
            Duration::from_secs(1)
        ));
        assert!(!overdue(t, t, Duration::from_secs(1)));
    }
}
