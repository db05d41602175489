//! No reflection: what a receiver may send to an address is earned by
//! what arrives from it
//!
//! Every valid frame (DATA, HEARTBEAT, FEC) from an address earns it
//! credit for one reply datagram of up to the frame's own length; every
//! NACK, WINDOW and FEEDBACK sent there spends it. So, over any span of
//! time, an address gets back no more datagrams and no more bytes than it
//! sent: a frame with a forged source reflects at most itself.
//!
//! There is no exception for *verified* sources (those that delivered a
//! stream in order, see `reorder::Sources`): without a key a blind
//! spoofer can deliver its own made-up stream in order, so no keyless
//! test tells it from a sender. Instead credit is banked (up to [`BANK`]),
//! so a sender that sent much is still answered through idle spells in
//! which its heartbeats alone would not pay for a WINDOW and a FEEDBACK
//! each; replies that are only useful (a WINDOW refresh, the answer to
//! the heartbeat of a sender that is not held back) leave one credit for
//! the others.
//!
//! The table holds at most [`ADDRESSES`] addresses (about 48 bytes
//! each); beyond that the oldest idle address is forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::keyed::KeyedState;

/// Addresses tracked
pub(super) const ADDRESSES: usize = 4096;
/// Most credit banked per address: (datagrams, bytes)
pub(super) const BANK: (u32, u32) = (4096, 1 << 20);
/// An address without frames for this long may be forgotten first
const IDLE: Duration = Duration::from_secs(10);
/// Entries looked at per eviction
const EVICT_SCAN: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    datagrams: u32,
    bytes: u32,
    last: Instant,
}

/// The credit ledger
#[derive(Debug, Default)]
pub(super) struct Credit {
    entries: HashMap<SocketAddr, Entry, KeyedState>,
    order: VecDeque<SocketAddr>,
}

impl Credit {
    /// A frame of `len` bytes arrived from `from`; work: entries visited
    pub(super) fn earn(&mut self, now: Instant, from: SocketAddr, len: usize, work: &mut u64) {
        if !self.entries.contains_key(&from) {
            if self.entries.len() >= ADDRESSES {
                self.evict(now, work);
            }
            self.order.push_back(from);
        }
        let e = self.entries.entry(from).or_insert(Entry {
            datagrams: 0,
            bytes: 0,
            last: now,
        });
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        e.datagrams = e.datagrams.saturating_add(1).min(BANK.0);
        e.bytes = e.bytes.saturating_add(len).min(BANK.1);
        e.last = now;
    }

    /// Spend credit for a reply of `len` bytes to `to`, if more than
    /// `reserve` datagrams' credit is left; false: not owed
    pub(super) fn spend(&mut self, to: SocketAddr, len: usize, reserve: u32) -> bool {
        let Some(e) = self.entries.get_mut(&to) else {
            return false;
        };
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if e.datagrams <= reserve || e.bytes < len {
            return false;
        }
        e.datagrams -= 1;
        e.bytes -= len;
        true
    }

    /// Forget one address: the first idle one among the oldest few (live
    /// ones go to the back of the queue), else the oldest
    fn evict(&mut self, now: Instant, work: &mut u64) {
        for _ in 0..EVICT_SCAN {
            *work += 1;
            let Some(addr) = self.order.pop_front() else {
                return;
            };
            let keep = self
                .entries
                .get(&addr)
                .is_some_and(|e| now.saturating_duration_since(e.last) < IDLE);
            if !keep {
                self.entries.remove(&addr);
                return;
            }
            self.order.push_back(addr);
        }
        // all live: the oldest goes anyway
        if let Some(addr) = self.order.pop_front() {
            self.entries.remove(&addr);
        }
    }

    /// Addresses tracked
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reflection_is_bounded_by_what_arrived() {
        let t = Instant::now();
        let a: SocketAddr = "192.0.2.7:9".parse().unwrap();
        let mut c = Credit::default();
        let mut w = 0;
        assert!(!c.spend(a, 10, 0), "nothing arrived: nothing owed");
        c.earn(t, a, 30, &mut w);
        assert!(!c.spend(a, 31, 0), "not more bytes than arrived");
        assert!(
            !c.spend(a, 30, 1),
            "a reserve is kept for necessary replies"
        );
        assert!(c.spend(a, 30, 0));
        assert!(!c.spend(a, 1, 0), "one datagram per datagram");
        for _ in 0..10 {
            c.earn(t, a, 1000, &mut w);
        }
        let mut sent = 0;
        while c.spend(a, 40, 0) {
            sent += 1;
        }
        assert_eq!(sent, 10, "as many datagrams as arrived");
        for _ in 0..BANK.0 + 10 {
            c.earn(t, a, 1000, &mut w);
        }
        let mut sent = 0;
        while c.spend(a, 40, 0) {
            sent += 1;
        }
        assert_eq!(sent, BANK.0, "banked credit is capped");
    }

    #[test]
    fn test_table_is_bounded() {
        let t = Instant::now();
        let mut c = Credit::default();
        let mut w = 0;
        for i in 0..(ADDRESSES as u32 + 100) {
            let a = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9));
            c.earn(t, a, 24, &mut w);
        }
        assert_eq!(c.len(), ADDRESSES);
        assert!(w <= 100 * EVICT_SCAN as u64);
    }
}
