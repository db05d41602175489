//! The reorder buffer: per-stream state, buffering, in-order delivery and
//! skipping of gaps given up on

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::{CloseReason, Event, Receiver, StreamKey, StreamStats};
use crate::wire::Flags;

/// Remember this many lost ranges per stream, to tell late frames from duplicates
const LOST_RANGES: usize = 32;

pub(super) struct Stream {
    /// Next sequence number to deliver
    pub(super) next: u64,
    /// One past the highest sequence number known to have been sent
    pub(super) high: u64,
    /// One past the FIN frame's sequence number
    pub(super) end: Option<u64>,
    /// Frames waiting; index 0 is `next` (always `None` there)
    pub(super) ring: VecDeque<Option<Vec<u8>>>,
    pub(super) buffered_frames: usize,
    pub(super) buffered_bytes: usize,
    /// Since when the frame at `next` has been awaited
    pub(super) gap_since: Option<Instant>,
    /// When runs of missing frames were first noticed: `(start, time)`
    /// means the frames missing from `start` (up to the next entry) were
    /// noticed missing at `time`; pruned as `next` advances
    pub(super) holes: VecDeque<(u64, Instant)>,
    pub(super) last_active: Instant,
    pub(super) lost_ranges: VecDeque<(u64, u64)>,
    /// Where the stream's frames come from, and on which socket
    pub(super) from: SocketAddr,
    pub(super) listener: usize,
    /// When to (re)send a NACK for what is missing
    pub(super) nack_at: Option<Instant>,
    pub(super) nack_tries: u32,
    /// `next` when the tries were last reset: progress earns fresh tries
    pub(super) nack_base: u64,
    /// Missing frames below this were seen missing at the previous check
    pub(super) seen_upto: u64,
    /// Frames below this have been asked for at least once...
    pub(super) nacked_upto: u64,
    /// ...the last time at this moment
    pub(super) nacked_at: Option<Instant>,
    /// `next` at the last window advertisement, and when it was sent
    pub(super) window_next: u64,
    pub(super) window_at: Option<Instant>,
    pub(super) stats: StreamStats,
}

impl Stream {
    pub(super) fn is_lost(&self, seq: u64) -> bool {
        self.lost_ranges.iter().any(|&(a, b)| (a..b).contains(&seq))
    }

    /// Runs of missing sequence numbers as (first, count), oldest first
    pub(super) fn missing(&self, limit: usize) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let push = |seq: u64, n: u64, out: &mut Vec<(u64, u64)>| match out.last_mut() {
            Some((a, c)) if *a + *c == seq => *c += n,
            _ => out.push((seq, n)),
        };
        for (i, slot) in self.ring.iter().enumerate() {
            if slot.is_none() {
                push(self.next + i as u64, 1, &mut out);
                if out.len() > limit {
                    out.truncate(limit);
                    return out;
                }
            }
        }
        let tail = self.next + self.ring.len() as u64;
        if self.high > tail {
            push(tail, self.high - tail, &mut out);
        }
        out.truncate(limit);
        out
    }
}

impl Receiver {
    /// A DATA frame with extended number `seq`, received or (`rebuilt`)
    /// rebuilt from FEC
    pub(super) fn handle_data(
        &mut self,
        now: Instant,
        key: StreamKey,
        seq: u64,
        flags: Flags,
        payload: &[u8],
        rebuilt: bool,
    ) {
        let window = self.config.reorder_window as u64;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.end.is_some_and(|end| seq >= end) || seq > stream.next + (1 << 30) {
            if !rebuilt {
                self.stats.out_of_range += 1;
            }
            return;
        }
        if rebuilt
            && (seq < stream.next
                || stream
                    .ring
                    .get((seq - stream.next) as usize)
                    .is_some_and(Option::is_some))
        {
            // given up on already, or arrived meanwhile: not a network copy
            return;
        }
        if flags.contains(Flags::FIN) {
            stream.end = Some(seq + 1);
        }
        if seq < stream.next {
            if stream.is_lost(seq) {
                stream.stats.late += 1;
            } else {
                stream.stats.duplicates += 1;
            }
            return;
        }
        if rebuilt {
            stream.stats.fec_repaired += 1;
            self.stats.fec_repaired += 1;
        }
        if seq > stream.high {
            stream.holes.push_back((stream.high, now));
        }
        stream.high = stream.high.max(seq + 1);
        if flags.contains(Flags::RETRANSMIT) {
            let offset = (seq - stream.next) as usize;
            if stream.ring.get(offset).is_none_or(Option::is_none) {
                stream.stats.repaired += 1;
            }
        }
        if seq >= stream.next + window {
            // Too far ahead: frames must be given up so it fits in the
            // window. Skip to the first frame that did arrive at or
            // after the minimum, so a run of missing frames is never
            // cut in two (and does not wait a second timeout).
            let min = seq + 1 - window;
            let from = (min - stream.next) as usize;
            let target = stream
                .ring
                .iter()
                .skip(from)
                .position(Option::is_some)
                .map_or(seq, |i| min + i as u64);
            self.skip_to(key, target);
        }
        self.insert(now, key, seq, payload);
        self.settle(now, key);
    }

    pub(super) fn take_buf(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.extend_from_slice(payload);
        buf
    }

    /// Deliver or buffer frame `seq` (already known to be >= next and in the window)
    pub(super) fn insert(&mut self, now: Instant, key: StreamKey, seq: u64, payload: &[u8]) {
        let Some(stream) = self.streams.get(&key) else {
            return;
        };
        if seq == stream.next {
            let buf = self.take_buf(payload);
            let Some(stream) = self.streams.get_mut(&key) else {
                return;
            };
            deliver(&mut self.events, key, stream, Some(buf));
            return;
        }
        let offset = (seq - stream.next) as usize;
        if stream.ring.get(offset).is_some_and(Option::is_some) {
            if let Some(s) = self.streams.get_mut(&key) {
                s.stats.duplicates += 1;
            }
            return;
        }
        // make room under the byte limits by skipping the oldest gap
        loop {
            let Some(stream) = self.streams.get(&key) else {
                return;
            };
            let over_stream = stream.buffered_bytes + payload.len() > self.config.reorder_bytes;
            let over_total = self.buffered_bytes + payload.len() > self.config.memory_limit;
            if !(over_stream || over_total) || stream.buffered_frames == 0 {
                break;
            }
            let first_buffered = stream
                .ring
                .iter()
                .position(Option::is_some)
                .map_or(stream.next, |i| stream.next + i as u64);
            self.skip_to(key, first_buffered);
            self.drain_ready(key);
        }
        let buf = self.take_buf(payload);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if seq < stream.next {
            // unreachable: skipping stops at the first buffered frame, before `seq`
            self.recycle(buf);
            return;
        }
        if seq == stream.next {
            deliver(&mut self.events, key, stream, Some(buf));
            return;
        }
        let offset = (seq - stream.next) as usize;
        if stream.ring.len() <= offset {
            stream.ring.resize_with(offset + 1, || None);
        }
        stream.buffered_frames += 1;
        stream.buffered_bytes += buf.len();
        self.buffered_bytes += buf.len();
        stream.stats.reordered += 1;
        stream.ring[offset] = Some(buf);
        stream.gap_since.get_or_insert(now);
    }

    /// Deliver buffered frames that are now in order
    pub(super) fn drain_ready(&mut self, key: StreamKey) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        while let Some(Some(_)) = stream.ring.front() {
            let buf = stream.ring.pop_front().flatten();
            if let Some(b) = &buf {
                stream.buffered_frames -= 1;
                stream.buffered_bytes -= b.len();
                self.buffered_bytes -= b.len();
            }
            // deliver() pops the slot for `next`; put a placeholder back
            stream.ring.push_front(None);
            deliver(&mut self.events, key, stream, buf);
        }
    }

    /// Declare everything before `target` that has not arrived lost,
    /// delivering what did arrive, in order (work is bounded by the
    /// buffered frames, however far `target` is)
    pub(super) fn skip_to(&mut self, key: StreamKey, target: u64) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let mut run_start: Option<u64> = None;
        while stream.next < target {
            match stream.ring.pop_front() {
                Some(Some(buf)) => {
                    if let Some(first) = run_start.take() {
                        record_gap(&mut self.events, key, stream, first, stream.next - first);
                    }
                    stream.buffered_frames -= 1;
                    stream.buffered_bytes -= buf.len();
                    self.buffered_bytes -= buf.len();
                    stream.ring.push_front(None);
                    deliver(&mut self.events, key, stream, Some(buf));
                }
                Some(None) => {
                    run_start.get_or_insert(stream.next);
                    stream.next += 1;
                }
                None => {
                    // nothing buffered beyond: the rest is one run
                    run_start.get_or_insert(stream.next);
                    stream.next = target;
                }
            }
        }
        if let Some(first) = run_start {
            record_gap(&mut self.events, key, stream, first, stream.next - first);
        }
    }

    /// Deliver what is buffered, count what is missing, then close
    pub(super) fn flush_and_close(&mut self, key: StreamKey, reason: CloseReason) {
        if let Some(stream) = self.streams.get(&key) {
            let target = stream.high.max(stream.next + stream.ring.len() as u64);
            self.skip_to(key, target);
        }
        self.close(key, reason);
    }
}

/// Deliver the frame at `next` (a `None` buffer means an empty FIN or gap slot)
pub(super) fn deliver(
    events: &mut VecDeque<Event>,
    key: StreamKey,
    stream: &mut Stream,
    buf: Option<Vec<u8>>,
) {
    stream.ring.pop_front();
    stream.next += 1;
    if let Some(buf) = buf {
        stream.stats.datagrams += 1;
        stream.stats.bytes += buf.len() as u64;
        if !buf.is_empty() {
            events.push_back(Event::Data { key, payload: buf });
        }
    }
}

pub(super) fn record_gap(
    events: &mut VecDeque<Event>,
    key: StreamKey,
    stream: &mut Stream,
    first: u64,
    count: u64,
) {
    stream.stats.gaps += 1;
    stream.stats.lost += count;
    if stream.lost_ranges.len() == LOST_RANGES {
        stream.lost_ranges.pop_front();
    }
    stream.lost_ranges.push_back((first, first + count));
    events.push_back(Event::Gap { key, first, count });
}
