//! The reorder buffer: per-stream state, buffering, in-order delivery and
//! skipping of gaps given up on

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::nack::NackState;
use super::table::Activity;
use super::{Event, Receiver, StreamKey, StreamStats};
use crate::wire::Flags;

/// Remember this many lost ranges per stream, to tell late frames from duplicates
const LOST_RANGES: usize = 32;
/// Most runs of missing frames whose first-noticed time a stream keeps; a
/// run noticed after that shares the time of the run before it
const HOLES: usize = 256;
/// Sources remembered per stream as verified
const SOURCES: usize = 4;

/// Where a DATA frame comes from
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Received
    Received,
    /// Rebuilt from FEC symbols
    Rebuilt,
}

/// A run of missing frames starting at `start` (up to the next hole),
/// first noticed at `noticed`, to be asked for no earlier than `ask_after`
#[derive(Debug, Clone, Copy)]
pub(super) struct Hole {
    pub(super) start: u64,
    pub(super) noticed: Instant,
    pub(super) ask_after: Instant,
}

/// Sources that have delivered a frame of the stream in order (a frame
/// at `next` as it arrived): only they move the stream's return address,
/// its position (heartbeats) and its end; most recent first
#[derive(Debug, Default)]
pub(super) struct Sources {
    addrs: [Option<SocketAddr>; SOURCES],
}

impl Sources {
    pub(super) fn contains(&self, from: SocketAddr) -> bool {
        self.addrs.contains(&Some(from))
    }

    /// Remember `from` as verified (most recent first, the oldest dropped)
    pub(super) fn add(&mut self, from: SocketAddr) {
        let i = self
            .addrs
            .iter()
            .position(|a| *a == Some(from))
            .unwrap_or(SOURCES - 1);
        self.addrs[..=i].rotate_right(1);
        self.addrs[0] = Some(from);
    }
}

/// Byte accounting from the stream offsets senders put in heartbeats
/// (bytes 8..16 of the payload: the stream bytes sent before frame `seq`)
#[derive(Debug, Default)]
pub(super) struct Offsets {
    /// Stream offset of `next`, while it is known
    pub(super) at_next: Option<u64>,
    /// Where the offset was last known: (offset, bytes delivered then),
    /// kept while frames lost since then have not been measured
    pub(super) last_known: Option<(u64, u64)>,
    /// An offset for a sequence number not reached yet: (seq, offset)
    pub(super) pending: Option<(u64, u64)>,
    /// Bytes of lost frames measured so far
    pub(super) lost: u64,
    /// Frames were lost whose bytes cannot be measured any more
    pub(super) unknown: bool,
}

impl Offsets {
    /// The offset of `next` (`seq`) is `offset`; `delivered` bytes so far
    fn anchor(&mut self, delivered: u64, offset: u64) {
        match (self.at_next, self.last_known) {
            (Some(known), _) => {
                if known != offset {
                    // the sender's count and ours disagree: trust neither
                    self.unknown = true;
                }
            }
            (None, Some((o, d))) => {
                match (offset.checked_sub(o)).and_then(|span| span.checked_sub(delivered - d)) {
                    Some(lost) => self.lost += lost,
                    None => self.unknown = true,
                }
            }
            // the first offset of a stream joined mid-way
            (None, None) => {}
        }
        self.at_next = Some(offset);
        self.last_known = None;
    }

    /// Frames before `next` were declared lost
    fn lost_frames(&mut self, delivered: u64) {
        match self.at_next.take() {
            Some(o) => self.last_known = Some((o, delivered)),
            // lost before any offset was known: never measurable
            None if self.last_known.is_none() => self.unknown = true,
            None => {}
        }
    }

    /// A frame of `len` bytes was delivered at `next`
    fn delivered(&mut self, len: usize) {
        if let Some(o) = self.at_next.as_mut() {
            *o += len as u64;
        }
    }

    /// Bytes lost, if every lost frame was measured
    pub(super) fn bytes_lost(&self, lost_frames: u64) -> Option<u64> {
        if lost_frames == 0 {
            return Some(0);
        }
        (!self.unknown && self.last_known.is_none()).then_some(self.lost)
    }
}

pub(super) struct Stream {
    /// Next sequence number to deliver
    pub(super) next: u64,
    /// One past the highest sequence number known to have been sent
    pub(super) high: u64,
    /// One past the highest DATA frame received
    pub(super) data_high: u64,
    /// One past the FIN frame's sequence number
    pub(super) end: Option<u64>,
    /// When `next` reached `end`: everything is delivered and confirmed,
    /// and the stream lingers a gap timeout (longer while frames beyond
    /// the FIN keep coming) before it closes, so a forged FIN cannot cut
    /// a stream whose sender goes on
    pub(super) finished: Option<Instant>,
    /// When the latest frame beyond `end` arrived
    pub(super) beyond_at: Option<Instant>,
    /// Frames waiting; index 0 is `next` (always `None` there)
    pub(super) ring: VecDeque<Option<Vec<u8>>>,
    pub(super) buffered_frames: usize,
    pub(super) buffered_bytes: usize,
    /// Since when the frame at `next` has been awaited
    pub(super) gap_since: Option<Instant>,
    /// When a new frame last arrived at `next`: the head's wait restarts,
    /// so frames still arriving in order are never given up on
    pub(super) progress_at: Option<Instant>,
    /// Runs of missing frames by when they were noticed, oldest first;
    /// pruned as `next` advances
    pub(super) holes: VecDeque<Hole>,
    pub(super) last_active: Instant,
    pub(super) lost_ranges: VecDeque<(u64, u64)>,
    /// Where replies (NACK, WINDOW) go, and from which socket
    pub(super) from: SocketAddr,
    pub(super) listener: usize,
    pub(super) sources: Sources,
    /// Joining mid-stream: delivery held until then
    pub(super) joining: Option<Instant>,
    /// Frames from a verified source beyond the jump limit: the lowest
    /// sequence number and since when (a sender that really is that far
    /// ahead is followed after a gap timeout without closer frames)
    pub(super) far: Option<(u64, Instant)>,
    pub(super) nack: NackState,
    /// `next` at the last window advertisement, and when it was sent
    pub(super) window_next: u64,
    pub(super) window_at: Option<Instant>,
    /// DATA frames received since the last advertisement
    pub(super) since_window: u32,
    /// A verified heartbeat asked for a window: its sequence number
    pub(super) poked: Option<u64>,
    /// The sender's newest echo token (from a verified source's
    /// heartbeat), returned in WINDOW frames to show this receiver gets
    /// the stream
    pub(super) token: Option<u64>,
    pub(super) offsets: Offsets,
    pub(super) activity: Activity,
    /// The time this stream's timer is armed for
    pub(super) armed: Option<Instant>,
    pub(super) stats: StreamStats,
}

impl Stream {
    /// A stream starting at `first`, its frames coming from `from`
    pub(super) fn new(
        now: Instant,
        first: u64,
        from: SocketAddr,
        listener: usize,
        activity: Activity,
    ) -> Self {
        let mut sources = Sources::default();
        sources.add(from);
        Self {
            next: first,
            high: first,
            data_high: first,
            end: None,
            finished: None,
            beyond_at: None,
            ring: VecDeque::new(),
            buffered_frames: 0,
            buffered_bytes: 0,
            gap_since: None,
            progress_at: None,
            holes: VecDeque::new(),
            last_active: now,
            lost_ranges: VecDeque::new(),
            from,
            listener,
            sources,
            joining: None,
            far: None,
            nack: NackState::new(first),
            window_next: 0,
            window_at: None,
            since_window: 0,
            poked: None,
            token: None,
            offsets: Offsets {
                at_next: (first == 0).then_some(0),
                ..Offsets::default()
            },
            activity,
            armed: None,
            stats: StreamStats {
                first_seq: first,
                bytes_lost: Some(0),
                ..StreamStats::default()
            },
        }
    }

    pub(super) fn is_lost(&self, seq: u64) -> bool {
        self.lost_ranges.iter().any(|&(a, b)| (a..b).contains(&seq))
    }

    /// Runs of missing sequence numbers as (first, count), oldest first
    /// (work: the ring slots visited)
    pub(super) fn missing(&self, limit: usize, work: &mut u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let push = |seq: u64, n: u64, out: &mut Vec<(u64, u64)>| match out.last_mut() {
            Some((a, c)) if *a + *c == seq => *c += n,
            _ => out.push((seq, n)),
        };
        // past the last buffered frame everything up to `high` is one run
        let mut remaining = self.buffered_frames;
        let mut tail = self.next;
        for (i, slot) in self.ring.iter().enumerate() {
            if remaining == 0 {
                break;
            }
            *work += 1;
            match slot {
                None => push(self.next + i as u64, 1, &mut out),
                Some(_) => remaining -= 1,
            }
            tail = self.next + i as u64 + 1;
            if out.len() > limit {
                out.truncate(limit);
                return out;
            }
        }
        if self.high > tail {
            push(tail, self.high - tail, &mut out);
        }
        out.truncate(limit);
        out
    }

    /// Position of the first buffered frame (`next` if none)
    pub(super) fn first_buffered(&self, work: &mut u64) -> Option<u64> {
        let i = self.ring.iter().position(Option::is_some);
        *work += i.map_or(self.ring.len(), |i| i + 1) as u64;
        i.map(|i| self.next + i as u64)
    }

    /// Frames wait for something: a gap before buffered frames or the tail
    pub(super) fn waiting(&self) -> bool {
        self.buffered_frames > 0 || self.next < self.high
    }

    /// Missing frames from the old `high` up to `new_high` were noticed
    pub(super) fn raise_high(&mut self, new_high: u64, now: Instant, ask_after: Instant) {
        let new_high = self.end.map_or(new_high, |end| new_high.min(end));
        if new_high <= self.high {
            return;
        }
        if self.holes.len() < HOLES {
            self.holes.push_back(Hole {
                start: self.high,
                noticed: now,
                ask_after,
            });
        }
        self.nack.check_by(ask_after);
        self.high = new_high;
    }

    /// The FIN says the stream ends before `end`: nothing from there on
    /// exists, whatever a heartbeat claimed
    pub(super) fn set_end(&mut self, end: u64) {
        self.end = Some(end);
        self.stats.end = Some(end);
        if self.high > end {
            self.high = end.max(self.next);
            while self.holes.back().is_some_and(|h| h.start >= self.high) {
                self.holes.pop_back();
            }
        }
    }

    /// A verified heartbeat says nothing from `claim` on was sent yet
    pub(super) fn lower_high(&mut self, claim: u64) {
        let new_high = claim.max(self.data_high).max(self.next);
        if new_high >= self.high || self.end.is_some() {
            return;
        }
        self.high = new_high;
        while self.holes.back().is_some_and(|h| h.start >= new_high) {
            self.holes.pop_back();
        }
    }

    /// Joining: start at `seq`, below the current start; the frames
    /// between, noticed missing now, are asked for from `ask_after`
    pub(super) fn lower_start(&mut self, seq: u64, now: Instant, ask_after: Instant) {
        if self.ring.front().is_some_and(Option::is_some) {
            // the frame held at the old start turns out to be ahead of a gap
            self.stats.reordered += 1;
        }
        for _ in seq..self.next {
            self.ring.push_front(None);
        }
        if let Some(h) = self.holes.front_mut().filter(|h| h.start == self.next) {
            h.start = seq;
        } else {
            self.holes.push_front(Hole {
                start: seq,
                noticed: now,
                ask_after,
            });
        }
        self.next = seq;
        self.stats.first_seq = seq;
        self.nack.reset(seq);
        self.nack.check_by(ask_after);
    }

    /// The byte offset of sequence number `seq` is `offset` (from a heartbeat)
    pub(super) fn offset_at(&mut self, seq: u64, offset: u64) {
        if seq == self.next {
            self.offsets.anchor(self.stats.bytes, offset);
            self.offsets.pending = None;
        } else if seq > self.next {
            self.offsets.pending = Some((seq, offset));
        }
    }

    /// Apply a pending offset once `next` reached it
    pub(super) fn settle_offsets(&mut self) {
        match self.offsets.pending {
            Some((seq, o)) if seq == self.next => {
                self.offsets.anchor(self.stats.bytes, o);
                self.offsets.pending = None;
            }
            Some((seq, _)) if seq < self.next => self.offsets.pending = None,
            _ => {}
        }
    }

    /// Final counters
    pub(super) fn final_stats(&self) -> StreamStats {
        StreamStats {
            bytes_lost: self.offsets.bytes_lost(self.stats.lost),
            ..self.stats
        }
    }
}

impl Receiver {
    /// A DATA frame with extended number `seq` that passed the checks of
    /// its source, received or rebuilt from FEC
    pub(super) fn accept_data(
        &mut self,
        now: Instant,
        key: StreamKey,
        seq: u64,
        flags: Flags,
        payload: &[u8],
        origin: Origin,
    ) {
        let rebuilt = matches!(origin, Origin::Rebuilt);
        let window = self.config.reorder_window as u64;
        // a random draw only when a new hole may open
        let ask_after = match self.streams.get(&key) {
            Some(s) if seq > s.high => self.ask_after(now, key),
            _ => now,
        };
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.end.is_some_and(|end| seq >= end) {
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
        if seq < stream.next {
            if stream.is_lost(seq) {
                stream.stats.late += 1;
            } else {
                stream.stats.duplicates += 1;
            }
            return;
        }
        if flags.contains(Flags::FIN) {
            if seq + 1 < stream.data_high {
                // frames beyond this FIN already arrived: not the end
                self.stats.fin_refused += 1;
            } else if stream.end.is_none() {
                stream.set_end(seq + 1);
            }
        }
        if rebuilt {
            stream.stats.fec_repaired += 1;
            self.stats.fec_repaired += 1;
        }
        stream.far = None;
        // frames between the old high and this one were noticed missing
        stream.raise_high(seq, now, ask_after);
        stream.high = stream.high.max(seq + 1);
        stream.data_high = stream.data_high.max(seq + 1);
        stream.stats.last_seq = stream.stats.last_seq.max(Some(seq));
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
            let found = stream.ring.iter().skip(from).position(Option::is_some);
            self.stats.work +=
                found.map_or(stream.ring.len().saturating_sub(from), |i| i + 1) as u64;
            let target = found.map_or(seq, |i| min + i as u64);
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
        // joining: even the frame at `next` waits until the hold ends
        if seq == stream.next && stream.joining.is_none() {
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
        self.make_room(key, payload.len());
        let buf = self.take_buf(payload);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if seq < stream.next {
            // unreachable: skipping stops at the first buffered frame, before `seq`
            self.recycle(buf);
            return;
        }
        if seq == stream.next && stream.joining.is_none() {
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
        if offset > 0 {
            // (at `next` it only waits for a join's hold to end)
            stream.stats.reordered += 1;
        }
        stream.ring[offset] = Some(buf);
        stream.gap_since.get_or_insert(now);
    }

    /// Make room for `len` more bytes in `key` under the byte limits by
    /// skipping oldest gaps: of this stream when it is over its own limit
    /// or holds at least its share of the total; else of the stream that
    /// holds the most, so one stream (or a flood of them) cannot make
    /// the others give up their gaps
    fn make_room(&mut self, key: StreamKey, len: usize) {
        loop {
            let Some(stream) = self.streams.get(&key) else {
                return;
            };
            let over_stream = stream.buffered_bytes + len > self.config.reorder_bytes;
            let over_total = self.buffered_bytes + len > self.config.memory_limit;
            if !(over_stream || over_total) {
                return;
            }
            let share = self.config.memory_limit / self.streams.len().max(1);
            let victim = if over_stream || stream.buffered_bytes >= share {
                key
            } else {
                self.stats.work += self.streams.len() as u64;
                self.streams
                    .iter()
                    .max_by_key(|(_, s)| s.buffered_bytes)
                    .map_or(key, |(k, _)| *k)
            };
            let Some(v) = self.streams.get(&victim) else {
                return;
            };
            if v.buffered_frames == 0 {
                return;
            }
            let mut work = 0;
            let first = v.first_buffered(&mut work).unwrap_or(v.next);
            self.stats.work += work;
            self.skip_to(victim, first);
            self.drain_ready(victim);
        }
    }

    /// Deliver buffered frames that are now in order
    pub(super) fn drain_ready(&mut self, key: StreamKey) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.joining.is_some() {
            return;
        }
        while let Some(Some(_)) = stream.ring.front() {
            self.stats.work += 1;
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
            self.stats.work += 1;
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
        stream.high = stream.high.max(stream.next);
        stream.data_high = stream.data_high.max(stream.next);
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
        stream.offsets.delivered(buf.len());
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
    stream.offsets.lost_frames(stream.stats.bytes);
    if stream.lost_ranges.len() == LOST_RANGES {
        stream.lost_ranges.pop_front();
    }
    stream.lost_ranges.push_back((first, first + count));
    events.push_back(Event::Gap { key, first, count });
}
