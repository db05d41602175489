//! Repair requests: NACK scheduling, suppression by overheard NACKs, the
//! gap timeout
//!
//! Per stream a receiver keeps, beside the missing frames (from the
//! reorder buffer) and when each run of them was noticed (`holes`), the
//! ranges already asked for (`asked`: by whom, when, how often), as
//! disjoint intervals. A check at time `now` walks the missing runs
//! against both, so its work is bounded by the runs (at most 128), the
//! holes and the intervals, never by how many sequence numbers a range
//! spans. An overheard NACK marks its ranges as asked (interval
//! arithmetic: at most 128 ranges, each a logarithmic lookup plus the
//! intervals it replaces).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{extend_seq, Receiver, StreamKey, Transmit};
use crate::wire::{
    emit_nack, parse_nack, Flags, FrameType, NackRange, Repr, HEADER_LEN, NACK_MAX_RANGES,
    NACK_RANGE_LEN,
};

/// Most asked-for intervals kept per stream (the highest are forgotten
/// first: at worst they are asked for once more)
const ASKED: usize = 512;
/// Fingerprints of the stream's own recent NACKs, to recognise them when
/// the group hands them back (multicast loopback)
const OWN: usize = 8;

/// Frames `start..end` were asked for at `at` (by this receiver or, not
/// `ours`, by another one that was overheard)
#[derive(Debug, Clone, Copy)]
struct Asked {
    end: u64,
    at: Instant,
    /// Our requests for them since `epoch`
    tries: u32,
    epoch: u64,
    ours: bool,
}

/// NACK state of one stream
#[derive(Debug)]
pub(super) struct NackState {
    /// When to check next
    pub(super) at: Option<Instant>,
    /// Bumped when the stream's head advances: fresh tries for what is
    /// missing then
    epoch: u64,
    base: u64,
    asked: BTreeMap<u64, Asked>,
    /// Another receiver's NACK for this stream was overheard: a group,
    /// so first requests wait a random backoff
    pub(super) group: bool,
    own: [u64; OWN],
    own_next: usize,
}

impl NackState {
    pub(super) fn new(next: u64) -> Self {
        Self {
            at: None,
            epoch: 0,
            base: next,
            asked: BTreeMap::new(),
            group: false,
            own: [0; OWN],
            own_next: 0,
        }
    }

    /// The stream starts over at `next` (a join moved its start)
    pub(super) fn reset(&mut self, next: u64) {
        self.asked.clear();
        self.base = next;
        self.epoch += 1;
    }

    /// The head is at `next`: progress earns fresh tries
    pub(super) fn progress(&mut self, next: u64) -> bool {
        if next == self.base {
            return false;
        }
        self.base = next;
        self.epoch += 1;
        true
    }

    /// Make sure a check is scheduled no later than `at`
    pub(super) fn check_by(&mut self, at: Instant) {
        self.at = Some(self.at.map_or(at, |t| t.min(at)));
    }

    /// Nothing is missing any more
    pub(super) fn clear(&mut self) {
        self.at = None;
        self.asked.clear();
    }

    /// Mark `a..b` as asked at `now` (by us: one more try), keeping the
    /// tries of what was asked before; work: the intervals visited
    fn mark(&mut self, a: u64, b: u64, now: Instant, ours: bool, work: &mut u64) {
        if a >= b {
            return;
        }
        let epoch = self.epoch;
        let mut pieces: Vec<(u64, Asked)> = Vec::new();
        let fresh = |end| Asked {
            end,
            at: now,
            tries: u32::from(ours),
            epoch,
            ours,
        };
        let renew = |old: &Asked, end| {
            if !ours && !old.ours {
                // others' NACKs postpone ours once, not again and again
                // (a forged NACK every interval would silence us)
                return Asked { end, ..*old };
            }
            Asked {
                end,
                at: now,
                tries: if old.epoch == epoch { old.tries } else { 0 } + u32::from(ours),
                epoch,
                ours,
            }
        };
        // the interval reaching into `a` from the left is cut there
        if let Some((&s, &e)) = self.asked.range(..a).next_back() {
            *work += 1;
            if e.end > a {
                self.asked.insert(s, Asked { end: a, ..e });
                self.asked.insert(a, e);
            }
        }
        let mut t = a;
        let inside: Vec<(u64, Asked)> = self.asked.range(a..b).map(|(k, v)| (*k, *v)).collect();
        for (s, e) in inside {
            *work += 1;
            self.asked.remove(&s);
            if s > t {
                pieces.push((t, fresh(s)));
            }
            if e.end > b {
                // the part beyond `b` stays as it was
                self.asked.insert(b, e);
            }
            pieces.push((s, renew(&e, e.end.min(b))));
            t = e.end.min(b);
        }
        if t < b {
            pieces.push((t, fresh(b)));
        }
        for (s, e) in pieces {
            *work += 1;
            self.asked.insert(s, e);
        }
        while self.asked.len() > ASKED {
            self.asked.pop_last();
        }
    }

    /// Forget what lies before `next`
    fn prune(&mut self, next: u64, work: &mut u64) {
        while let Some(e) = self.asked.first_entry() {
            *work += 1;
            if e.get().end > next {
                break;
            }
            e.remove();
        }
    }
}

/// NORM's random backoff (RFC 5401, "RandomBackoff"): a truncated
/// exponential on `[0, max]` for a group of about `group` receivers, so
/// that of the receivers missing a frame one is likely to ask well before
/// the others. `u` is uniform in `[0, 1)`.
pub(super) fn norm_backoff(max: Duration, group: u32, u: f64) -> Duration {
    let lambda = f64::from(group.max(2)).ln() + 1.0;
    let t = (1.0 + u * (lambda.exp() - 1.0)).ln() / lambda;
    max.mul_f64(t.clamp(0.0, 1.0))
}

/// A cheap fingerprint of a NACK's header sequence number and payload
fn fingerprint(seq: u32, payload: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ u64::from(seq);
    for b in payload {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Receiver {
    /// A uniform random number in `[0, 1)` (SplitMix64: well mixed from
    /// the first draw, even for small seeds such as simulations use)
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When frames of `key` noticed missing at `now` may first be asked
    /// for: after `nack_delay` (so reordering is not taken for loss) plus
    /// a random part: up to `nack_delay` again, or in a group NORM's
    /// backoff up to `nack_backoff`
    pub(super) fn ask_after(&mut self, now: Instant, key: StreamKey) -> Instant {
        if !self.config.nack {
            return now;
        }
        let group = self.streams.get(&key).is_some_and(|s| s.nack.group);
        let u = self.uniform();
        let random = if group && !self.config.nack_backoff.is_zero() {
            norm_backoff(self.config.nack_backoff, self.config.nack_group_size, u)
        } else {
            self.config.nack_delay.mul_f64(u)
        };
        now + self.config.nack_delay + random
    }

    /// Another receiver's NACK for a stream we receive: the frames it
    /// asks for count as asked (ours waits `nack_interval` for their
    /// repair), and the stream is in a group from now on
    pub(super) fn overhear_nack(&mut self, now: Instant, key: StreamKey, seq: u32, payload: &[u8]) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let print = fingerprint(seq, payload);
        if stream.nack.own.contains(&print) {
            // our own, handed back by the group
            return;
        }
        stream.nack.group = true;
        let mut work = 0;
        let (next, high) = (stream.next, stream.high);
        let mut covered = false;
        for r in parse_nack(payload) {
            work += 1;
            let Some(a) = extend_seq(r.start, next) else {
                continue;
            };
            let (a, b) = (a.max(next), (a + u64::from(r.count)).min(high));
            if a < b {
                stream.nack.mark(a, b, now, false, &mut work);
                covered = true;
            }
        }
        if covered {
            self.stats.nacks_overheard += 1;
        }
        self.stats.work += work;
    }

    /// Queue the NACK of `key` that is due at `now`, if any, and schedule
    /// the next check
    ///
    /// A missing frame is asked for once its hole's `ask_after` has
    /// passed, unless someone asked for it less than `nack_interval`
    /// ago; asked again every `nack_interval`, at most `nack_tries` times
    /// while the head of the stream makes no progress.
    pub(super) fn send_nack(&mut self, now: Instant, key: StreamKey) {
        let tries = self.config.nack_tries;
        let interval = self.config.nack_interval;
        let delay = self.config.nack_delay;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let mut work = 0;
        stream.nack.prune(stream.next, &mut work);
        let missing = stream.missing(NACK_MAX_RANGES, &mut work);
        let truncated = missing.len() == NACK_MAX_RANGES;
        let epoch = stream.nack.epoch;
        let mut ask: Vec<(u64, u64)> = Vec::new();
        let mut due: Option<Instant> = truncated.then_some(now + delay);
        let mut suppressed = false;
        let soonest = |t: Instant, due: &mut Option<Instant>| {
            *due = Some(due.map_or(t, |d| d.min(t)));
        };
        let mut hole = 0;
        for &(first, n) in &missing {
            let end = first + n;
            let mut s = first;
            while s < end {
                work += 1;
                while hole + 1 < stream.holes.len() && stream.holes[hole + 1].start <= s {
                    hole += 1;
                }
                let (ask_after, seg_end) = match stream.holes.get(hole) {
                    Some(h) if h.start <= s => (
                        h.ask_after,
                        stream.holes.get(hole + 1).map_or(end, |n| n.start.min(end)),
                    ),
                    // before the first hole (a join's start): no wait
                    _ => (now, stream.holes.front().map_or(end, |h| h.start.min(end))),
                };
                // the asked intervals over s..seg_end
                let mut t = s;
                while t < seg_end {
                    work += 1;
                    let cover = stream
                        .nack
                        .asked
                        .range(..=t)
                        .next_back()
                        .filter(|(_, e)| e.end > t)
                        .map(|(_, e)| *e);
                    match cover {
                        Some(e) => {
                            let piece_end = e.end.min(seg_end);
                            let done = if e.epoch == epoch { e.tries } else { 0 };
                            if done >= tries {
                                // given up asking: the gap timeout decides
                            } else if now >= e.at + interval {
                                ask.push((t, piece_end));
                            } else {
                                suppressed |= !e.ours;
                                soonest(e.at + interval, &mut due);
                            }
                            t = piece_end;
                        }
                        None => {
                            let piece_end = stream
                                .nack
                                .asked
                                .range(t..seg_end)
                                .next()
                                .map_or(seg_end, |(k, _)| *k);
                            if now >= ask_after {
                                ask.push((t, piece_end));
                            } else {
                                soonest(ask_after, &mut due);
                            }
                            t = piece_end;
                        }
                    }
                }
                s = seg_end;
            }
        }
        // merge adjacent pieces, then cut into wire ranges
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ask {
            match merged.last_mut() {
                Some((_, e)) if *e == a => *e = b,
                _ => merged.push((a, b)),
            }
        }
        let mut wire = Vec::with_capacity(merged.len());
        let mut asked_upto = Vec::with_capacity(merged.len());
        'out: for &(a, b) in &merged {
            let mut first = a;
            while first < b {
                if wire.len() == NACK_MAX_RANGES {
                    soonest(now + delay, &mut due);
                    break 'out;
                }
                let c = (b - first).min(u64::from(u16::MAX));
                wire.push(NackRange {
                    start: first as u32,
                    count: c as u16,
                });
                first += c;
            }
            asked_upto.push((a, first));
        }
        for &(a, b) in &asked_upto {
            stream.nack.mark(a, b, now, true, &mut work);
        }
        if !asked_upto.is_empty() {
            // what was asked now is asked again after the interval
            soonest(now + interval, &mut due);
        }
        stream.nack.at = due;
        self.stats.work += work;
        if wire.is_empty() {
            if suppressed {
                self.stats.nacks_suppressed += 1;
            }
            return;
        }
        let repr = Repr {
            frame_type: FrameType::Nack,
            flags: Flags::NONE,
            session: key.session,
            stream: key.stream,
            seq: stream.next as u32,
        };
        let mut payload = Vec::with_capacity(wire.len() * NACK_RANGE_LEN);
        emit_nack(&wire, &mut payload);
        let own = fingerprint(repr.seq, &payload);
        stream.nack.own[stream.nack.own_next] = own;
        stream.nack.own_next = (stream.nack.own_next + 1) % OWN;
        let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
        if repr.emit_with_payload(&mut bytes, &payload).is_ok() {
            let (to, listener) = (stream.from, stream.listener);
            self.queue_reply(FrameType::Nack, listener, to, bytes, 0);
        }
    }

    /// How long a gap is waited for before it is skipped and counted as
    /// lost: `reorder_timeout`, but with NACKs on never less than the
    /// time every try needs (twice `nack_delay`, for the jitter, plus
    /// `nack_tries` x `nack_interval`, plus `nack_backoff` for a stream
    /// on a group), so the last request is not asked in vain for a gap
    /// already given up
    #[must_use]
    pub fn gap_timeout(&self) -> Duration {
        self.gap_timeout_for(false)
    }

    /// [`Receiver::gap_timeout`] for a stream on a group (`group`) or not
    pub(super) fn gap_timeout_for(&self, group: bool) -> Duration {
        let c = &self.config;
        if c.nack {
            let tries = c.nack_interval.saturating_mul(c.nack_tries);
            let backoff = if group {
                c.nack_backoff
            } else {
                Duration::ZERO
            };
            c.reorder_timeout.max(
                c.nack_delay
                    .saturating_mul(2)
                    .saturating_add(tries)
                    .saturating_add(backoff),
            )
        } else {
            c.reorder_timeout
        }
    }

    /// Queue a reply (NACK or WINDOW) to `to` if its source has earned
    /// it with more than `reserve` to spare (see `credit`), else count it
    /// withheld
    pub(super) fn queue_reply(
        &mut self,
        frame_type: FrameType,
        listener: usize,
        to: SocketAddr,
        bytes: Vec<u8>,
        reserve: u32,
    ) -> bool {
        if !self.credit.spend(to, bytes.len(), reserve) {
            self.stats.replies_withheld += 1;
            return false;
        }
        match frame_type {
            FrameType::Nack => self.stats.nacks_sent += 1,
            _ => self.stats.windows_sent += 1,
        }
        self.transmits.push_back(Transmit {
            frame_type,
            listener,
            to,
            bytes,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_norm_backoff_range_and_shape() {
        let max = Duration::from_millis(100);
        assert_eq!(norm_backoff(max, 1000, 0.0), Duration::ZERO);
        assert!(norm_backoff(max, 1000, 0.999_999) <= max);
        // most receivers wait long: the median is well past the middle
        assert!(norm_backoff(max, 1000, 0.5) > Duration::from_millis(80));
        // a few ask early: 1 % of draws fall in the first fifth or so
        assert!(norm_backoff(max, 1000, 0.01) < Duration::from_millis(45));
    }

    #[test]
    fn test_mark_keeps_intervals_disjoint_and_counts_tries() {
        let t0 = Instant::now();
        let mut n = NackState::new(0);
        let mut w = 0;
        n.mark(10, 20, t0, true, &mut w);
        n.mark(15, 30, t0, false, &mut w);
        n.mark(5, 12, t0, true, &mut w);
        let v: Vec<(u64, u64, u32)> = n.asked.iter().map(|(s, e)| (*s, e.end, e.tries)).collect();
        assert_eq!(
            v,
            vec![
                (5, 10, 1),
                (10, 12, 2),
                (12, 15, 1),
                (15, 20, 1),
                (20, 30, 0)
            ]
        );
        n.prune(13, &mut w);
        assert_eq!(n.asked.first_key_value().map(|(s, _)| *s), Some(12));
        assert!(w < 40, "{w}");
    }
}
