//! The receiving side: demultiplex streams, reorder, deliver, count losses
//!
//! Split along responsibilities: [`types`] (settings, keys, counters,
//! events), `reorder` (per-stream buffer and in-order delivery), `nack`
//! (repair requests), `window` (flow control adverts) and `table` (the
//! stream table: admission, eviction, closing). This file holds the
//! [`Receiver`] itself: input dispatch and timers.

mod nack;
mod reorder;
mod table;
mod types;
mod window;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::extend_seq;
use super::fec::{FecDecoder, Rebuilt};
use super::keyed::KeyedState;
use crate::wire::{classify, Datagram, Error as WireError, FecRepr, Flags, FrameType, Repr};
use reorder::Stream;
pub use types::{
    CloseReason, Event, ReceiverConfig, ReceiverStats, StreamKey, StreamStats, Transmit,
};
use window::{WINDOW_ACTIVE, WINDOW_REFRESH};

/// Keep at most this many spare payload buffers
const POOL: usize = 256;

/// Demultiplexes mpx streams from datagrams and delivers each in order
///
/// Memory is bounded: per stream by `reorder_window` frames and
/// `reorder_bytes`, over all streams by `memory_limit`, and the number of
/// streams by `max_streams`. When a bound is hit the oldest gap is skipped
/// (counted as lost) rather than memory growing.
pub struct Receiver {
    config: ReceiverConfig,
    streams: HashMap<StreamKey, Stream, KeyedState>,
    /// Recently closed streams, so their stragglers do not reopen them
    /// (bounded by `max_streams`, oldest first)
    closed: HashSet<StreamKey, KeyedState>,
    closed_order: VecDeque<StreamKey>,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    listener: usize,
    rng: u64,
    /// Random id in WINDOW frames
    id: u64,
    pool: Vec<Vec<u8>>,
    buffered_bytes: usize,
    fec: FecDecoder,
    stats: ReceiverStats,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("streams", &self.streams.len())
            .field("buffered_bytes", &self.buffered_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Receiver {
    /// A receiver with `config`
    pub fn new(config: ReceiverConfig) -> Self {
        let mut config = config;
        config.reorder_window = config.reorder_window.clamp(1, 1 << 20);
        config.max_streams = config.max_streams.max(1);
        let rng = match config.jitter_seed {
            0 => super::new_session_id(),
            seed => seed,
        } | 1;
        Self {
            fec: FecDecoder::new(config.fec_memory),
            config,
            streams: HashMap::default(),
            closed: HashSet::default(),
            closed_order: VecDeque::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            listener: 0,
            rng,
            id: super::new_session_id(),
            pool: Vec::new(),
            buffered_bytes: 0,
            stats: ReceiverStats::default(),
        }
    }

    /// Receiver-wide counters
    pub fn stats(&self) -> ReceiverStats {
        let f = self.fec.stats();
        ReceiverStats {
            fec_frames: f.fec_frames,
            fec_blocks: f.blocks,
            fec_recovered_blocks: f.recovered_blocks,
            fec_unrecoverable_blocks: f.unrecoverable_blocks,
            fec_dropped_symbols: f.dropped_symbols,
            ..self.stats
        }
    }

    /// Bytes of FEC symbols held for decoding over all streams
    pub fn fec_bytes(&self) -> usize {
        self.fec.bytes()
    }

    /// Number of live streams
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Payload bytes held for reordering over all streams
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Counters of every live stream
    pub fn stream_stats(&self) -> Vec<(StreamKey, StreamStats)> {
        let mut v: Vec<_> = self.streams.iter().map(|(k, s)| (*k, s.stats)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Return a payload buffer from [`Event::Data`] for reuse
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Like [`Receiver::handle_classified`], for a datagram that arrived
    /// on receiving socket `listener` (NACKs for its streams go out there)
    pub fn handle_classified_on<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        listener: usize,
        datagram: Datagram<'a>,
    ) -> Option<&'a [u8]> {
        self.listener = listener;
        self.handle_classified(now, from, datagram)
    }

    /// Handle a datagram the caller already classified (see
    /// [`Receiver::handle_datagram`]); returns raw payloads back
    pub fn handle_classified<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: Datagram<'a>,
    ) -> Option<&'a [u8]> {
        match datagram {
            Datagram::Raw(raw) => {
                self.stats.raw += 1;
                Some(raw)
            }
            // auto mode: far likelier a binary raw datagram that happens to
            // begin with the magic (1 in 65536) than a damaged frame (UDP
            // has its own checksum), so it is delivered, not dropped
            Datagram::Invalid(_, bytes) if self.config.invalid_as_raw => {
                self.stats.raw_lookalike += 1;
                Some(bytes)
            }
            Datagram::Invalid(e, _) => {
                match e {
                    WireError::UnknownVersion(_) => self.stats.unknown_version += 1,
                    WireError::Checksum => self.stats.checksum_errors += 1,
                    _ => self.stats.truncated += 1,
                }
                None
            }
            Datagram::Mpx(repr, payload) => {
                self.handle_frame(now, from, repr, payload);
                None
            }
        }
    }

    /// Handle one received datagram
    ///
    /// Returns the datagram back as `Some` if it is raw (not mpx), for the
    /// caller to deliver as is; mpx frames are consumed (see
    /// [`Receiver::poll_event`]) and invalid ones counted and dropped (or,
    /// with [`ReceiverConfig::invalid_as_raw`], returned as raw).
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<&'a [u8]> {
        self.handle_classified(now, from, classify(bytes))
    }

    /// Handle one parsed frame
    pub fn handle_frame(&mut self, now: Instant, from: SocketAddr, repr: Repr, payload: &[u8]) {
        self.stats.frames += 1;
        let key = StreamKey {
            session: repr.session,
            stream: repr.stream,
        };
        match repr.frame_type {
            FrameType::Data | FrameType::Heartbeat => {}
            FrameType::Nack => {
                self.overhear_nack(now, key, payload);
                return;
            }
            FrameType::Fec if self.config.fec => {
                self.handle_fec(now, key, repr.seq, payload);
                return;
            }
            _ => {
                self.stats.unknown_type += 1;
                return;
            }
        }
        if self.closed.contains(&key) {
            self.stats.after_close += 1;
            return;
        }
        if !self.streams.contains_key(&key) && !self.open(now, from, key, repr.seq) {
            self.stats.rejected_frames += 1;
            return;
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        stream.last_active = now;
        stream.from = from;
        stream.listener = self.listener;
        let Some(seq) = extend_seq(repr.seq, stream.next) else {
            self.stats.out_of_range += 1;
            return;
        };
        if repr.frame_type == FrameType::Heartbeat {
            // answered with a window at once: a sender held back by a lost
            // WINDOW frame pokes with heartbeats
            stream.window_at = None;
            // seq is the next sequence number the sender will use; with
            // FIN it is also the end of the stream
            if seq <= stream.next + (1 << 30) {
                if seq > stream.high {
                    stream.holes.push_back((stream.high, now));
                }
                stream.high = stream.high.max(seq);
                if repr.flags.contains(Flags::FIN) && stream.end.is_none() && seq >= stream.next {
                    stream.end = Some(seq);
                }
            }
        } else {
            if stream.end.is_some_and(|end| seq >= end) || seq > stream.next + (1 << 30) {
                self.stats.out_of_range += 1;
                return;
            }
            let mut rebuilt = Vec::new();
            if self.config.fec && repr.flags.contains(Flags::FEC) {
                self.fec
                    .on_source(key, seq, repr.flags, payload, &mut rebuilt);
            }
            self.handle_data(now, key, seq, repr.flags, payload, false);
            self.feed_rebuilt(now, key, rebuilt);
            return;
        }
        self.settle(now, key);
    }

    /// An FEC frame of block `base` (wire sequence number): hand it to the
    /// decoder and feed what it rebuilds as if it had arrived
    fn handle_fec(&mut self, now: Instant, key: StreamKey, base: u32, payload: &[u8]) {
        if self.closed.contains(&key) {
            self.stats.after_close += 1;
            return;
        }
        let Ok((fec, symbol)) = FecRepr::parse(payload) else {
            self.stats.fec_invalid += 1;
            return;
        };
        // FEC frames never open a stream: they follow DATA frames
        let Some(stream) = self.streams.get_mut(&key) else {
            self.stats.fec_unknown_stream += 1;
            return;
        };
        let Some(base) = extend_seq(base, stream.next) else {
            self.stats.out_of_range += 1;
            return;
        };
        if base > stream.next + (1 << 30) {
            self.stats.out_of_range += 1;
            return;
        }
        stream.last_active = now;
        let mut rebuilt = Vec::new();
        self.fec.on_repair(key, base, fec, symbol, &mut rebuilt);
        self.feed_rebuilt(now, key, rebuilt);
    }

    fn feed_rebuilt(&mut self, now: Instant, key: StreamKey, rebuilt: Vec<Rebuilt>) {
        for (seq, flags, payload) in rebuilt {
            self.handle_data(now, key, seq, flags, &payload, true);
        }
    }

    /// After a change: deliver what is ready, close on FIN, manage the gap timer
    fn settle(&mut self, now: Instant, key: StreamKey) {
        self.drain_ready(key);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.end.is_some_and(|end| stream.next >= end) {
            self.close(key, CloseReason::Fin);
            return;
        }
        let waiting = stream.buffered_frames > 0 || stream.next < stream.high;
        if waiting {
            if stream.next != stream.nack_base {
                // the head moved: fresh NACK tries for what is missing now
                stream.nack_base = stream.next;
                stream.nack_tries = 0;
            }
            // the frame at `next` has been awaited since its hole was
            // noticed, so each gap times out on its own clock, not behind
            // the gaps before it
            while stream.holes.len() >= 2 && stream.holes[1].0 <= stream.next {
                stream.holes.pop_front();
            }
            let noticed = stream
                .holes
                .front()
                .filter(|(start, _)| *start <= stream.next)
                .map_or(now, |(_, t)| *t);
            stream.gap_since = Some(noticed);
            if self.config.nack && stream.nack_at.is_none() {
                // a random part so receivers of one group do not all ask at once
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let jitter_us = self.config.nack_delay.as_micros() as u64;
                let jitter = Duration::from_micros(self.rng % (jitter_us + 1));
                stream.nack_at = Some(now + self.config.nack_delay + jitter);
            }
        } else {
            stream.gap_since = None;
            stream.holes.clear();
            stream.nack_at = None;
            stream.nack_tries = 0;
        }
        if self.config.window {
            self.advertise(now, key, false);
        }
    }

    /// Next datagram to send (NACKs), if any
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event, if any (call until `None` after each input)
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    /// When [`Receiver::handle_timeout`] should next be called
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams
            .values()
            .map(|s| {
                let idle = s.last_active + self.config.idle_timeout;
                let gap = s.gap_since.map(|g| g + self.gap_timeout());
                // refreshes are due while the stream is active
                let window = s
                    .window_at
                    .map(|t| t + WINDOW_REFRESH)
                    .filter(|t| self.config.window && *t < s.last_active + WINDOW_ACTIVE);
                [Some(idle), gap, s.nack_at, window]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(idle)
            })
            .min()
    }

    /// Send due NACKs, skip gaps that waited `reorder_timeout`, close idle streams
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.config.nack {
            self.send_nacks(now);
        }
        if self.config.window {
            let due: Vec<StreamKey> = self
                .streams
                .iter()
                .filter(|(_, s)| now < s.last_active + WINDOW_ACTIVE)
                .map(|(k, _)| *k)
                .collect();
            for key in due {
                self.advertise(now, key, true);
            }
        }
        let due: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.gap_since.is_some_and(|g| now >= g + self.gap_timeout())
                    || now >= s.last_active + self.config.idle_timeout
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(stream) = self.streams.get(&key) else {
                continue;
            };
            if now >= stream.last_active + self.config.idle_timeout {
                self.flush_and_close(key, CloseReason::Idle);
                continue;
            }
            // skip the first gap: up to the first buffered frame, or to
            // `high` if the missing frames are the tail
            let target = stream
                .ring
                .iter()
                .position(Option::is_some)
                .map_or(stream.high, |i| stream.next + i as u64);
            self.skip_to(key, target);
            if let Some(s) = self.streams.get_mut(&key) {
                s.gap_since = None;
                s.nack_at = None;
                s.nack_tries = 0;
            }
            self.settle(now, key);
        }
    }

    /// Deliver what is buffered, count what is missing, and close every stream
    pub fn close_all(&mut self) {
        let keys: Vec<StreamKey> = self.streams.keys().copied().collect();
        for key in keys {
            self.flush_and_close(key, CloseReason::Shutdown);
        }
    }
}
