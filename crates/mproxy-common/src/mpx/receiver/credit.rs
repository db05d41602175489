//! No reflection: what a receiver may send to an address is earned by
//! what arrives from it
//!
//! Every valid frame from an address earns it credit for one reply
//! datagram of up to the frame's own length; every NACK, WINDOW and
//! FEEDBACK sent there spends it. An address that spoofs nothing can
//! therefore get back no more datagrams, and no more bytes, than it sent:
//! a frame with a forged source reflects at most itself. Once an address
//! has delivered [`VERIFY`] frames of a stream in order (the frame at the
//! stream's `next`, or a heartbeat at it) it is *verified* and earns
//! [`GAIN`] times as much, so a live sender's idle heartbeats can still
//! be answered with a WINDOW and a FEEDBACK each, and a burst of losses
//! with NACK retries. Credit is banked up to a small cap, so a long
//! stream cannot save up a flood either.
//!
//! The table holds at most [`ADDRESSES`] addresses (about 64 bytes
//! each); beyond that the oldest unverified or idle address is forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::keyed::KeyedState;

/// Frames delivered in order that make an address verified
pub(super) const VERIFY: u32 = 16;
/// Credit a verified address earns per frame, in datagrams and bytes
/// (multiples of the frame's length)
pub(super) const GAIN: u32 = 4;
/// Addresses tracked
pub(super) const ADDRESSES: usize = 4096;
/// Most credit banked: unverified (datagrams, bytes) ...
const BANK: (u32, u32) = (4, 4 * 1500);
/// ... and verified
const BANK_VERIFIED: (u32, u32) = (256, 256 * 1500);
/// An address without frames for this long may be forgotten first
const IDLE: Duration = Duration::from_secs(10);
/// Entries looked at per eviction
const EVICT_SCAN: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    datagrams: u32,
    bytes: u32,
    in_order: u32,
    last: Instant,
}

impl Entry {
    fn verified(&self) -> bool {
        self.in_order >= VERIFY
    }
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
            in_order: 0,
            last: now,
        });
        let (gain, bank) = if e.verified() {
            (GAIN, BANK_VERIFIED)
        } else {
            (1, BANK)
        };
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        e.datagrams = e.datagrams.saturating_add(gain).min(bank.0);
        e.bytes = e.bytes.saturating_add(len.saturating_mul(gain)).min(bank.1);
        e.last = now;
    }

    /// `from` delivered a frame of a stream in order
    pub(super) fn in_order(&mut self, from: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&from) {
            e.in_order = e.in_order.saturating_add(1);
        }
    }

    /// Spend credit for a reply of `len` bytes to `to`; false: not owed
    pub(super) fn spend(&mut self, to: SocketAddr, len: usize) -> bool {
        let Some(e) = self.entries.get_mut(&to) else {
            return false;
        };
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if e.datagrams == 0 || e.bytes < len {
            return false;
        }
        e.datagrams -= 1;
        e.bytes -= len;
        true
    }

    /// Is `from` verified?
    #[cfg(test)]
    pub(super) fn verified(&self, from: SocketAddr) -> bool {
        self.entries.get(&from).is_some_and(Entry::verified)
    }

    /// Forget one address: the first unverified or idle one among the
    /// oldest few; verified live ones go to the back of the queue
    fn evict(&mut self, now: Instant, work: &mut u64) {
        for _ in 0..EVICT_SCAN {
            *work += 1;
            let Some(addr) = self.order.pop_front() else {
                return;
            };
            let keep = self
                .entries
                .get(&addr)
                .is_some_and(|e| e.verified() && now.saturating_duration_since(e.last) < IDLE);
            if !keep {
                self.entries.remove(&addr);
                return;
            }
            self.order.push_back(addr);
        }
        // all verified and live: the oldest goes anyway
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
        let a: SocketAddr = "192.0.2.7:9".parse().unwrap_or_else(|_| unreachable!());
        let mut c = Credit::default();
        let mut w = 0;
        assert!(!c.spend(a, 10), "nothing arrived: nothing owed");
        c.earn(t, a, 30, &mut w);
        assert!(!c.spend(a, 31), "not more bytes than arrived");
        assert!(c.spend(a, 30));
        assert!(!c.spend(a, 1), "one datagram per datagram");
        for _ in 0..10 {
            c.earn(t, a, 1000, &mut w);
        }
        let mut sent = 0;
        while c.spend(a, 40) {
            sent += 1;
        }
        assert_eq!(sent, BANK.0, "banked credit is capped");
        for _ in 0..VERIFY {
            c.in_order(a);
        }
        assert!(c.verified(a));
        c.earn(t, a, 40, &mut w);
        let mut sent = 0;
        while c.spend(a, 40) {
            sent += 1;
        }
        assert_eq!(sent, GAIN);
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
