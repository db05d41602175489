//! Sender-side flow control: pace a stream to the slowest receiver
//!
//! Receivers with flow control on send WINDOW frames (see
//! [`crate::wire::WindowAdvert`]): "I expect sequence number `next`, and
//! can hold `frames` frames / `bytes` bytes from there". [`FlowControl`]
//! keeps the latest window of every receiver it hears from and turns them
//! into one limit: the sequence number the sender must not reach yet,
//! the smallest `next + window` over the active receivers.
//!
//! - A receiver not heard from for `receiver_timeout` is no longer waited
//!   for (it was killed, or its path died): counted and reported as an
//!   event, so one dead receiver cannot stall the others.
//! - With `max_lag`, a receiver whose limit falls that many frames behind
//!   the most advanced one is cut off for good (counted, reported), so a
//!   slow receiver cannot slow the group below the rest's pace; its losses
//!   show up as exact gaps on its side.
//! - Until the first window arrives the sender may send `initial_window`
//!   frames (receivers answer the first frame they see); if none arrives
//!   within `first_wait`, the link is taken to be one-way and there is no
//!   limit. With no active receiver at all there is no limit either: a
//!   one-way sender falls back to its static rate.
//!
//! Sequence numbers are compared in 32-bit serial arithmetic (RFC 1982),
//! as they are on the wire.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{window_lost, WindowAdvert};

/// Settings of a [`FlowControl`]
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Stop waiting for a receiver silent this long
    pub receiver_timeout: Duration,
    /// Cut off a receiver this many frames behind the most advanced one
    /// (`None`: wait for the slowest)
    pub max_lag: Option<u32>,
    /// Most receivers tracked; windows from further ones are ignored
    /// (counted)
    pub max_receivers: usize,
    /// Frames that may be sent before any receiver has answered
    pub initial_window: u32,
    /// How long to hold to `initial_window` waiting for a first answer
    /// before taking the link to be one-way
    pub first_wait: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            receiver_timeout: Duration::from_secs(2),
            max_lag: None,
            max_receivers: 64,
            initial_window: 256,
            first_wait: Duration::from_millis(200),
        }
    }
}

/// Something about the receivers a driver should log
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// First window from a receiver (or the first after it timed out)
    Joined(SocketAddr),
    /// A receiver went silent for `receiver_timeout` and is no longer waited for
    TimedOut(SocketAddr),
    /// A receiver lagged more than `max_lag` frames and was cut off
    Cut {
        /// The receiver
        addr: SocketAddr,
        /// How many frames it was behind
        lag: u32,
    },
}

/// Counters of a [`FlowControl`]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// WINDOW frames taken into account
    pub windows: u64,
    /// WINDOW frames ignored (malformed, cut-off receiver, table full)
    pub ignored: u64,
    /// Receivers that timed out
    pub timed_out: u64,
    /// Receivers cut off for lagging
    pub cut: u64,
    /// Timed-out receivers forgotten to make room for new ones
    pub forgotten: u64,
}

/// Where a receiver stands
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Heard from within `receiver_timeout`: waited for
    Active,
    /// Silent for `receiver_timeout`: no longer waited for (back to
    /// active with its next window)
    TimedOut,
    /// Cut off for lagging (`max_lag`): never waited for again
    Cut,
}

/// What the sender knows of one receiver
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The receiver's random id (from its WINDOW frames)
    pub id: u64,
    /// Where its latest window came from
    pub addr: SocketAddr,
    /// Its `next` when it was first heard from (where it joined)
    pub joined: u32,
    /// Its latest `next`: every frame before it was delivered or given up
    pub next: u32,
    /// Frames it says it gave up on (lost) so far
    pub lost: u64,
    /// When it was first and last heard from
    pub first_heard: Instant,
    /// When it was last heard from
    pub last_heard: Instant,
    /// Whether it is waited for
    pub state: PeerState,
}

#[derive(Debug)]
struct Peer {
    status: PeerStatus,
    /// First sequence number the receiver cannot take yet (wire value)
    limit: u32,
}

/// Flow control of one sender over any number of receivers (sans-IO)
#[derive(Debug)]
pub struct FlowControl {
    config: FlowConfig,
    peers: Vec<Peer>,
    events: VecDeque<FlowEvent>,
    stats: FlowStats,
    /// The stream's first sequence number
    first_seq: u32,
    /// When [`FlowControl::limit`] was first asked
    started: Option<Instant>,
    /// Whether any receiver ever answered
    heard: bool,
    /// The wait for a first answer is over (answered, or timed out)
    first_wait_over: bool,
}

/// `a` is before `b` in 32-bit serial arithmetic
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl FlowControl {
    /// No receivers known yet; the stream starts at sequence number
    /// `first_seq`
    pub fn new(config: FlowConfig, first_seq: u32) -> Self {
        Self {
            config,
            peers: Vec::new(),
            events: VecDeque::new(),
            stats: FlowStats::default(),
            first_seq,
            started: None,
            heard: false,
            first_wait_over: false,
        }
    }

    /// A WINDOW frame from `from`: `next` is its header's sequence number,
    /// `payload` its payload; `max_payload` is the sender's largest frame
    /// payload, to turn the byte window into frames
    pub fn on_window(
        &mut self,
        now: Instant,
        from: SocketAddr,
        next: u32,
        payload: &[u8],
        max_payload: usize,
    ) {
        let Some(w) = WindowAdvert::parse(payload) else {
            self.stats.ignored += 1;
            return;
        };
        let by_bytes = u32::try_from(w.bytes as usize / max_payload.max(1)).unwrap_or(u32::MAX);
        // at least one frame, so a receiver that advertises a tiny byte
        // window still lets the stream crawl rather than deadlock
        let frames = w.frames.min(by_bytes).max(1);
        let limit = next.wrapping_add(frames);
        // By id alone: a multipath receiver answers over every path (from
        // several addresses), and receivers on one host share an address.
        if let Some(p) = self.peers.iter_mut().find(|p| p.status.id == w.receiver) {
            let st = &mut p.status;
            if st.state == PeerState::Cut {
                self.stats.ignored += 1;
                return;
            }
            if st.state == PeerState::TimedOut {
                st.state = PeerState::Active;
                self.events.push_back(FlowEvent::Joined(from));
            }
            // windows only move forward (a reordered old one is ignored)
            if before(p.limit, limit) {
                p.limit = limit;
            }
            if before(st.next, next) {
                st.next = next;
            }
            if let Some(l) = window_lost(payload) {
                st.lost = st.lost.max(l);
            }
            st.last_heard = now;
            st.addr = from;
        } else {
            if self.peers.len() >= self.config.max_receivers {
                // make room: forget the receiver silent the longest
                let oldest = self
                    .peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.status.state == PeerState::TimedOut)
                    .min_by_key(|(_, p)| p.status.last_heard)
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        self.peers.swap_remove(i);
                        self.stats.forgotten += 1;
                    }
                    None => {
                        self.stats.ignored += 1;
                        return;
                    }
                }
            }
            self.peers.push(Peer {
                status: PeerStatus {
                    id: w.receiver,
                    addr: from,
                    joined: next,
                    next,
                    lost: window_lost(payload).unwrap_or(0),
                    first_heard: now,
                    last_heard: now,
                    state: PeerState::Active,
                },
                limit,
            });
            self.events.push_back(FlowEvent::Joined(from));
        }
        self.stats.windows += 1;
        self.heard = true;
    }

    /// The first sequence number the sender must not send yet, or `None`
    /// when no receiver is waited for. Times out silent receivers and cuts
    /// laggards first (see [`FlowControl::poll_event`]).
    pub fn limit(&mut self, now: Instant) -> Option<u32> {
        let timeout = self.config.receiver_timeout;
        for p in &mut self.peers {
            let st = &mut p.status;
            if st.state == PeerState::Active
                && now.saturating_duration_since(st.last_heard) >= timeout
            {
                st.state = PeerState::TimedOut;
                self.events.push_back(FlowEvent::TimedOut(st.addr));
                self.stats.timed_out += 1;
            }
        }
        let started = *self.started.get_or_insert(now);
        if !self.heard && now.saturating_duration_since(started) < self.config.first_wait {
            return Some(
                self.first_seq
                    .wrapping_add(self.config.initial_window.max(1)),
            );
        }
        self.first_wait_over = true;
        let active = || {
            self.peers
                .iter()
                .filter(|p| p.status.state == PeerState::Active)
        };
        let lead = active()
            .map(|p| p.limit)
            .reduce(|a, b| if before(a, b) { b } else { a })?;
        if let Some(max_lag) = self.config.max_lag {
            for p in self
                .peers
                .iter_mut()
                .filter(|p| p.status.state == PeerState::Active)
            {
                let lag = lead.wrapping_sub(p.limit);
                if lag > max_lag && (lag as i32) > 0 {
                    p.status.state = PeerState::Cut;
                    self.stats.cut += 1;
                    self.events.push_back(FlowEvent::Cut {
                        addr: p.status.addr,
                        lag,
                    });
                }
            }
        }
        self.peers
            .iter()
            .filter(|p| p.status.state == PeerState::Active)
            .map(|p| p.limit)
            .reduce(|a, b| if before(a, b) { a } else { b })
    }

    /// Whether frame `seq` may be sent now
    pub fn allows(&mut self, now: Instant, seq: u32) -> bool {
        self.limit(now).is_none_or(|limit| before(seq, limit))
    }

    /// When the limit may change without a new window: a receiver waited
    /// for times out, or the wait for a first answer ends (call
    /// [`FlowControl::limit`] then)
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = self
            .started
            .filter(|_| !self.heard && !self.first_wait_over)
            .map(|t| t + self.config.first_wait);
        self.peers
            .iter()
            .filter(|p| p.status.state == PeerState::Active)
            .map(|p| p.status.last_heard + self.config.receiver_timeout)
            .chain(first)
            .min()
    }

    /// Next thing to log, if any
    pub fn poll_event(&mut self) -> Option<FlowEvent> {
        self.events.pop_front()
    }

    /// Receivers currently waited for
    pub fn active(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.status.state == PeerState::Active)
            .count()
    }

    /// Every receiver known, in the order they were first heard from
    /// (at most `max_receivers`)
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peers.iter().map(|p| p.status)
    }

    /// The counters
    pub fn stats(&self) -> FlowStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of receiver `id`
    fn win(id: u64, frames: u32) -> [u8; 16] {
        WindowAdvert {
            frames,
            bytes: u32::MAX,
            receiver: id,
        }
        .emit()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn test_initial_window_then_one_way_then_slowest_wins() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        // nobody answered yet: the initial window, for 200 ms
        assert_eq!(fc.limit(t), Some(256));
        assert_eq!(fc.poll_timeout(), Some(t + Duration::from_millis(200)));
        // still nobody: one-way, no limit
        let t = t + Duration::from_millis(200);
        assert_eq!(fc.limit(t), None);
        assert!(fc.allows(t, 1_000_000));
        fc.on_window(t, addr(1), 100, &win(1, 50), 1400);
        fc.on_window(t, addr(2), 120, &win(2, 50), 1400);
        assert_eq!(fc.limit(t), Some(150));
        assert!(fc.allows(t, 149) && !fc.allows(t, 150));
        assert_eq!(fc.poll_event(), Some(FlowEvent::Joined(addr(1))));
        assert_eq!(fc.poll_event(), Some(FlowEvent::Joined(addr(2))));
        // an old, reordered window does not move the limit back
        fc.on_window(t, addr(1), 90, &win(1, 50), 1400);
        assert_eq!(fc.limit(t), Some(150));
    }

    #[test]
    fn test_byte_window_and_minimum_of_one_frame() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        let w = WindowAdvert {
            frames: 1000,
            bytes: 14_000,
            receiver: 1,
        };
        fc.on_window(t, addr(1), 0, &w.emit(), 1400);
        assert_eq!(fc.limit(t), Some(10));
        let w = WindowAdvert {
            frames: 1000,
            bytes: 0,
            receiver: 2,
        };
        fc.on_window(t, addr(2), 0, &w.emit(), 1400);
        assert_eq!(fc.limit(t), Some(1));
        fc.on_window(t, addr(3), 0, &[1, 2, 3], 1400);
        assert_eq!(fc.stats().ignored, 1);
    }

    #[test]
    fn test_silent_receiver_times_out_and_can_rejoin() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        fc.on_window(t, addr(1), 0, &win(1, 10), 1400);
        fc.on_window(t, addr(2), 0, &win(2, 1000), 1400);
        let later = t + Duration::from_millis(1500);
        fc.on_window(later, addr(2), 500, &win(2, 1000), 1400);
        assert_eq!(fc.limit(later), Some(10));
        assert_eq!(fc.poll_timeout(), Some(t + Duration::from_secs(2)));
        let dead = t + Duration::from_secs(2);
        assert_eq!(fc.limit(dead), Some(1500));
        assert_eq!(fc.stats().timed_out, 1);
        let events: Vec<_> = std::iter::from_fn(|| fc.poll_event()).collect();
        assert!(events.contains(&FlowEvent::TimedOut(addr(1))), "{events:?}");
        assert_eq!(fc.active(), 1);
        fc.on_window(dead, addr(1), 20, &win(1, 10), 1400);
        assert_eq!(fc.limit(dead), Some(30));
    }

    #[test]
    fn test_laggard_is_cut_with_max_lag() {
        let t = Instant::now();
        let mut fc = FlowControl::new(
            FlowConfig {
                max_lag: Some(100),
                ..FlowConfig::default()
            },
            0,
        );
        fc.on_window(t, addr(1), 0, &win(1, 10), 1400);
        fc.on_window(t, addr(2), 50, &win(2, 10), 1400);
        assert_eq!(fc.limit(t), Some(10));
        fc.on_window(t, addr(2), 200, &win(2, 10), 1400);
        assert_eq!(fc.limit(t), Some(210));
        assert_eq!(fc.stats().cut, 1);
        let events: Vec<_> = std::iter::from_fn(|| fc.poll_event()).collect();
        assert!(
            events.contains(&FlowEvent::Cut {
                addr: addr(1),
                lag: 200
            }),
            "{events:?}"
        );
        // a cut receiver stays cut
        fc.on_window(t, addr(1), 205, &win(1, 10), 1400);
        assert_eq!(fc.limit(t), Some(210));
        assert_eq!(fc.active(), 1);
    }

    #[test]
    fn test_one_receiver_over_several_paths_is_one_peer() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        fc.on_window(t, addr(1), 0, &win(9, 10), 1400);
        fc.on_window(t, addr(2), 50, &win(9, 10), 1400);
        assert_eq!(fc.active(), 1);
        assert_eq!(fc.limit(t), Some(60));
    }

    #[test]
    fn test_receivers_sharing_an_address_are_told_apart_by_id() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        let mut w = WindowAdvert {
            frames: 10,
            bytes: u32::MAX,
            receiver: 7,
        };
        fc.on_window(t, addr(1), 0, &w.emit(), 1400);
        w.receiver = 8;
        fc.on_window(t, addr(1), 100, &w.emit(), 1400);
        assert_eq!(fc.active(), 2);
        assert_eq!(fc.limit(t), Some(10));
    }

    #[test]
    fn test_serial_arithmetic_across_wrap() {
        let t = Instant::now();
        let mut fc = FlowControl::new(FlowConfig::default(), 0);
        fc.on_window(t, addr(1), u32::MAX - 5, &win(1, 10), 1400);
        assert_eq!(fc.limit(t), Some(4));
        assert!(fc.allows(t, u32::MAX) && fc.allows(t, 3) && !fc.allows(t, 4));
    }
}
