//! The receiving side: demultiplex streams, reorder, deliver, count losses

use std::collections::{HashMap, HashSet, VecDeque};

use super::keyed::KeyedState;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::extend_seq;
use super::fec::{FecDecoder, Rebuilt};
use crate::wire::{
    classify, emit_nack, parse_nack, Datagram, Error as WireError, FecRepr, Flags, FrameType,
    HeartbeatInfo, NackRange, Repr, WindowAdvert, HEADER_LEN, NACK_MAX_RANGES, NACK_RANGE_LEN,
};

/// Settings of a [`Receiver`]
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Most frames a stream may hold while waiting for a missing one
    pub reorder_window: usize,
    /// Most payload bytes a stream may hold while waiting
    pub reorder_bytes: usize,
    /// How long to wait for a missing frame before declaring it lost
    /// (with `nack`, at least as long as every NACK try takes: see
    /// [`Receiver::gap_timeout`])
    pub reorder_timeout: Duration,
    /// Close a stream after this long without any frame (no FIN seen)
    pub idle_timeout: Duration,
    /// Most streams tracked at once
    pub max_streams: usize,
    /// Most payload bytes held for reordering over all streams
    pub memory_limit: usize,
    /// Ask senders to re-send missing frames (NACK frames, [`Receiver::poll_transmit`])
    pub nack: bool,
    /// Wait this long (plus a random part up to as long again, so
    /// receivers of a group do not all ask at once) before asking
    pub nack_delay: Duration,
    /// Ask again after this long if the frames are still missing
    pub nack_interval: Duration,
    /// Ask at most this many times per gap
    pub nack_tries: u32,
    /// Flow control: advertise each stream's window to its sender (WINDOW
    /// frames, [`Receiver::poll_transmit`]) so it never sends more than the
    /// reorder window can hold, and not faster than this receiver delivers
    pub window: bool,
    /// Frames advertised (at most `reorder_window`; 0: `reorder_window`):
    /// also keep it within what the socket's receive buffer holds, or a
    /// burst of a full window overflows the kernel queue
    pub window_frames: usize,
    /// Hand datagrams that start with the mpx magic but are no valid frame
    /// back as raw (counted in [`ReceiverStats::raw_lookalike`]) instead
    /// of dropping them: for receivers that accept raw and mpx alike
    pub invalid_as_raw: bool,
    /// Seed of the NACK-delay jitter; 0 picks a random one. Simulations
    /// set it so a run can be replayed exactly.
    pub jitter_seed: u64,
    /// Rebuild lost DATA frames from FEC frames (off: count FEC frames as
    /// unknown type and drop them, as receivers without FEC do)
    pub fec: bool,
    /// Most bytes of FEC symbols held over all streams
    pub fec_memory: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            reorder_window: 1024,
            reorder_bytes: 4 << 20,
            reorder_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(10),
            max_streams: 1024,
            memory_limit: 64 << 20,
            nack: false,
            nack_delay: Duration::from_millis(5),
            nack_interval: Duration::from_millis(50),
            nack_tries: 5,
            window: false,
            window_frames: 0,
            invalid_as_raw: false,
            jitter_seed: 0,
            fec: true,
            fec_memory: 64 << 20,
        }
    }
}

/// A stream: the sender's session id and its stream id
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Random id of the sending process
    pub session: u64,
    /// Stream within that session
    pub stream: u32,
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.session, self.stream)
    }
}

/// Counters of one stream
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Sequence number the receiver started at (0 unless it joined late)
    pub first_seq: u64,
    /// Payload bytes delivered
    pub bytes: u64,
    /// DATA frames delivered
    pub datagrams: u64,
    /// Gaps skipped (each a run of consecutive lost frames)
    pub gaps: u64,
    /// Frames declared lost
    pub lost: u64,
    /// Copies of frames already received (dropped)
    pub duplicates: u64,
    /// Frames that arrived ahead of a missing one and waited
    pub reordered: u64,
    /// Frames that arrived after they had been declared lost (dropped)
    pub late: u64,
    /// Missing frames that arrived as retransmissions and were used
    pub repaired: u64,
    /// Missing frames rebuilt from FEC frames and used
    pub fec_repaired: u64,
}

impl StreamStats {
    /// Add `other`'s counters to these (for totals over streams);
    /// `first_seq` is left alone
    pub fn add(&mut self, other: &Self) {
        // Destructured so that a new counter cannot be forgotten here.
        let Self {
            first_seq: _,
            bytes,
            datagrams,
            gaps,
            lost,
            duplicates,
            reordered,
            late,
            repaired,
            fec_repaired,
        } = *other;
        self.bytes += bytes;
        self.datagrams += datagrams;
        self.gaps += gaps;
        self.lost += lost;
        self.duplicates += duplicates;
        self.reordered += reordered;
        self.late += late;
        self.repaired += repaired;
        self.fec_repaired += fec_repaired;
    }
}

impl fmt::Display for StreamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes, {} datagrams, {} gaps ({} lost), {} dups, {} reordered, {} late, {} repaired, {} fec-repaired",
            self.bytes,
            self.datagrams,
            self.gaps,
            self.lost,
            self.duplicates,
            self.reordered,
            self.late,
            self.repaired,
            self.fec_repaired
        )
    }
}

/// Why a stream ended
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The sender finished it (FIN) and everything before FIN was handled
    Fin,
    /// No frame for `idle_timeout`
    Idle,
    /// Evicted to make room for a new stream (`max_streams`)
    Evicted,
    /// The receiver was shut down ([`Receiver::close_all`])
    Shutdown,
}

/// What a [`Receiver`] reports
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new stream was seen
    Opened {
        /// The stream
        key: StreamKey,
        /// Where its first frame came from
        from: SocketAddr,
        /// Sequence number it starts at (0 unless joined late)
        first_seq: u64,
    },
    /// In-order payload of one frame (recycle the buffer with [`Receiver::recycle`])
    Data {
        /// The stream
        key: StreamKey,
        /// Payload bytes
        payload: Vec<u8>,
    },
    /// Frames `first..first+count` were lost and skipped
    Gap {
        /// The stream
        key: StreamKey,
        /// First lost sequence number
        first: u64,
        /// Number of lost frames
        count: u64,
    },
    /// The stream ended; nothing more will be delivered for it
    Closed {
        /// The stream
        key: StreamKey,
        /// Why
        reason: CloseReason,
        /// Final counters
        stats: StreamStats,
    },
}

/// Counters of a [`Receiver`] as a whole
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Datagrams passed through as raw (not mpx)
    pub raw: u64,
    /// Datagrams that began with the mpx magic but were no valid frame,
    /// passed through as raw (`invalid_as_raw`)
    pub raw_lookalike: u64,
    /// Valid mpx frames
    pub frames: u64,
    /// Frames shorter than the header
    pub truncated: u64,
    /// Frames with a version this receiver does not speak
    pub unknown_version: u64,
    /// Frames whose checksum did not match
    pub checksum_errors: u64,
    /// Frames of a known version but unknown or unsupported type
    pub unknown_type: u64,
    /// Frames beyond a stream's FIN, or before its start
    pub out_of_range: u64,
    /// Streams opened
    pub streams_opened: u64,
    /// Streams closed
    pub streams_closed: u64,
    /// New streams refused because `max_streams` were live and none idle
    pub streams_rejected: u64,
    /// Frames dropped because their stream was refused
    pub rejected_frames: u64,
    /// Streams evicted to make room
    pub streams_evicted: u64,
    /// Frames for a stream that already closed (late duplicates, closing heartbeats)
    pub after_close: u64,
    /// NACK frames sent
    pub nacks_sent: u64,
    /// NACKs not sent because another receiver's NACK covered them
    pub nacks_suppressed: u64,
    /// WINDOW frames sent (flow control)
    pub windows_sent: u64,
    /// Valid FEC frames handled by the decoder
    pub fec_frames: u64,
    /// FEC frames with a malformed FEC header (dropped)
    pub fec_invalid: u64,
    /// FEC frames for a stream the receiver does not know (dropped)
    pub fec_unknown_stream: u64,
    /// FEC blocks settled (their FEC frames were seen)
    pub fec_blocks: u64,
    /// Blocks with lost frames that FEC rebuilt
    pub fec_recovered_blocks: u64,
    /// Blocks with more lost frames than repair symbols arrived
    pub fec_unrecoverable_blocks: u64,
    /// Lost DATA frames rebuilt from FEC and used (all streams)
    pub fec_repaired: u64,
    /// FEC symbols not kept because of the memory limit
    pub fec_dropped_symbols: u64,
}

/// A datagram the receiver wants sent (a NACK or a WINDOW frame)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// What it is: [`FrameType::Nack`] (on a multicast group, worth sending
    /// to the group too, for suppression) or [`FrameType::Window`]
    pub frame_type: FrameType,
    /// Index of the receiving socket the stream arrived on (send from it)
    pub listener: usize,
    /// The sender's address
    pub to: SocketAddr,
    /// The whole frame
    pub bytes: Vec<u8>,
}

/// Streams idle for this long may be evicted when the stream table is full
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);
/// Remember this many lost ranges per stream, to tell late frames from duplicates
const LOST_RANGES: usize = 32;
/// Keep at most this many spare payload buffers
const POOL: usize = 256;
/// With flow control, re-advertise a stream's window at least this often
/// (a sender held back by a lost WINDOW frame also pokes with a heartbeat,
/// which is answered at once)...
const WINDOW_REFRESH: Duration = Duration::from_millis(500);
/// ...while it had a frame this recently
const WINDOW_ACTIVE: Duration = Duration::from_secs(2);

struct Stream {
    /// Next sequence number to deliver
    next: u64,
    /// One past the highest sequence number known to have been sent
    high: u64,
    /// One past the FIN frame's sequence number
    end: Option<u64>,
    /// Frames waiting; index 0 is `next` (always `None` there)
    ring: VecDeque<Option<Vec<u8>>>,
    buffered_frames: usize,
    buffered_bytes: usize,
    /// Since when the frame at `next` has been awaited
    gap_since: Option<Instant>,
    /// When runs of missing frames were first noticed: `(start, time)`
    /// means the frames missing from `start` (up to the next entry) were
    /// noticed missing at `time`; pruned as `next` advances
    holes: VecDeque<(u64, Instant)>,
    last_active: Instant,
    lost_ranges: VecDeque<(u64, u64)>,
    /// Where the stream's frames come from, and on which socket
    from: SocketAddr,
    listener: usize,
    /// When to (re)send a NACK for what is missing
    nack_at: Option<Instant>,
    nack_tries: u32,
    /// `next` when the tries were last reset: progress earns fresh tries
    nack_base: u64,
    /// Missing frames below this were seen missing at the previous check
    seen_upto: u64,
    /// Frames below this have been asked for at least once...
    nacked_upto: u64,
    /// ...the last time at this moment
    nacked_at: Option<Instant>,
    /// `next` at the last window advertisement, and when it was sent
    window_next: u64,
    window_at: Option<Instant>,
    /// The sender's newest echo token (from its heartbeats), returned in
    /// WINDOW frames to show that this receiver gets the stream
    token: Option<u64>,
    stats: StreamStats,
}

/// A WINDOW payload: the version-1 advert, then the echo token (0: none
/// seen yet) and the frames this receiver gave up on so far, so the
/// sender's confirmation of the end says whether anything was lost
fn window_payload(advert: &WindowAdvert, token: Option<u64>, lost: u64) -> Vec<u8> {
    let mut p = advert.emit().to_vec();
    p.extend_from_slice(&token.unwrap_or(0).to_be_bytes());
    p.extend_from_slice(&lost.to_be_bytes());
    p
}

/// What a stream closed by FIN needs to confirm its end again
#[derive(Debug, Clone, Copy)]
struct FinalWindow {
    lost: u64,
    next: u32,
    to: SocketAddr,
    listener: usize,
    token: Option<u64>,
}

impl Stream {
    fn is_lost(&self, seq: u64) -> bool {
        self.lost_ranges.iter().any(|&(a, b)| (a..b).contains(&seq))
    }

    /// Runs of missing sequence numbers as (first, count), oldest first
    fn missing(&self, limit: usize) -> Vec<(u64, u64)> {
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
    /// Streams that ended by FIN with flow control on: their final window
    /// (next = end), sent at close and again for each FIN heartbeat that
    /// comes after, so the sender learns the end was delivered
    finals: HashMap<StreamKey, FinalWindow, KeyedState>,
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
            finals: HashMap::default(),
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
            if repr.frame_type == FrameType::Heartbeat {
                // the sender still waits for the end to be confirmed
                let token = HeartbeatInfo::parse(payload).and_then(|h| h.token);
                if let Some(f) = self.finals.get_mut(&key) {
                    f.token = token.or(f.token);
                    let f = *f;
                    self.final_window(key, &f);
                }
            }
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
            if let Some(t) = HeartbeatInfo::parse(payload).and_then(|h| h.token) {
                stream.token = Some(t);
            }
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

    /// A DATA frame with extended number `seq`, received or (`rebuilt`)
    /// rebuilt from FEC
    fn handle_data(
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

    /// Create a stream for `key`; false if the table is full
    fn open(&mut self, now: Instant, from: SocketAddr, key: StreamKey, seq: u32) -> bool {
        if self.streams.len() >= self.config.max_streams {
            let lru = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.last_active)
                .map(|(k, s)| (*k, s.last_active));
            match lru {
                Some((k, at)) if now.saturating_duration_since(at) >= EVICTABLE_AFTER => {
                    self.stats.streams_evicted += 1;
                    self.flush_and_close(k, CloseReason::Evicted);
                }
                _ => {
                    self.stats.streams_rejected += 1;
                    return false;
                }
            }
        }
        // A young stream whose first frames were reordered or lost starts
        // at 0, so they are awaited (and counted if lost); a receiver that
        // joins a long-running stream starts where it joined.
        let seq = u64::from(seq);
        let first = if seq < self.config.reorder_window as u64 {
            0
        } else {
            seq
        };
        self.streams.insert(
            key,
            Stream {
                next: first,
                high: first,
                end: None,
                ring: VecDeque::new(),
                buffered_frames: 0,
                buffered_bytes: 0,
                gap_since: None,
                holes: VecDeque::new(),
                last_active: now,
                lost_ranges: VecDeque::new(),
                from,
                listener: self.listener,
                nack_at: None,
                nack_tries: 0,
                nack_base: first,
                seen_upto: first,
                nacked_upto: first,
                nacked_at: None,
                window_next: 0,
                window_at: None,
                token: None,
                stats: StreamStats {
                    first_seq: first,
                    ..StreamStats::default()
                },
            },
        );
        self.stats.streams_opened += 1;
        self.events.push_back(Event::Opened {
            key,
            from,
            first_seq: first,
        });
        true
    }

    fn take_buf(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.extend_from_slice(payload);
        buf
    }

    /// Deliver or buffer frame `seq` (already known to be >= next and in the window)
    fn insert(&mut self, now: Instant, key: StreamKey, seq: u64, payload: &[u8]) {
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
    fn drain_ready(&mut self, key: StreamKey) {
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
    fn skip_to(&mut self, key: StreamKey, target: u64) {
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
    fn flush_and_close(&mut self, key: StreamKey, reason: CloseReason) {
        if let Some(stream) = self.streams.get(&key) {
            let target = stream.high.max(stream.next + stream.ring.len() as u64);
            self.skip_to(key, target);
        }
        self.close(key, reason);
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

    /// Queue the final WINDOW of a stream closed by FIN
    fn final_window(&mut self, key: StreamKey, f: &FinalWindow) {
        let advert = WindowAdvert {
            frames: u32::try_from(self.config.reorder_window).unwrap_or(u32::MAX),
            bytes: u32::try_from(self.config.reorder_bytes).unwrap_or(u32::MAX),
            receiver: self.id,
        };
        let repr = Repr {
            frame_type: FrameType::Window,
            flags: Flags::NONE,
            session: key.session,
            stream: key.stream,
            seq: f.next,
        };
        let payload = window_payload(&advert, f.token, f.lost);
        let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
        if repr.emit_with_payload(&mut bytes, &payload).is_ok() {
            self.stats.windows_sent += 1;
            self.transmits.push_back(Transmit {
                frame_type: FrameType::Window,
                listener: f.listener,
                to: f.to,
                bytes,
            });
        }
    }

    /// Queue a WINDOW frame for `key` if it is due: the head moved a
    /// quarter window since the last one, none was sent yet, or
    /// `refresh` and [`WINDOW_REFRESH`] has passed
    fn advertise(&mut self, now: Instant, key: StreamKey, refresh: bool) {
        let frames = match self.config.window_frames {
            0 => self.config.reorder_window,
            n => n.min(self.config.reorder_window),
        } as u64;
        let global = self.buffered_bytes;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let moved = stream.next.saturating_sub(stream.window_next) >= (frames / 4).max(1);
        let stale = refresh && stream.window_at.is_none_or(|t| now >= t + WINDOW_REFRESH);
        if !(moved || stale || stream.window_at.is_none()) {
            return;
        }
        let others = global.saturating_sub(stream.buffered_bytes);
        let bytes = self
            .config
            .reorder_bytes
            .min(self.config.memory_limit.saturating_sub(others));
        let advert = WindowAdvert {
            frames: u32::try_from(frames).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            receiver: self.id,
        };
        let repr = Repr {
            frame_type: FrameType::Window,
            flags: Flags::NONE,
            session: key.session,
            stream: key.stream,
            seq: stream.next as u32,
        };
        let payload = window_payload(&advert, stream.token, stream.stats.lost);
        let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
        if repr.emit_with_payload(&mut bytes, &payload).is_ok() {
            stream.window_next = stream.next;
            stream.window_at = Some(now);
            self.stats.windows_sent += 1;
            self.transmits.push_back(Transmit {
                frame_type: FrameType::Window,
                listener: stream.listener,
                to: stream.from,
                bytes,
            });
        }
    }

    /// Another receiver's NACK for a stream we also miss frames of: if it
    /// asks for everything we miss, ours is not needed now
    fn overhear_nack(&mut self, now: Instant, key: StreamKey, payload: &[u8]) {
        let interval = self.config.nack_interval;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.nack_at.is_none() {
            return;
        }
        let asked: Vec<(u64, u64)> = parse_nack(payload)
            .filter_map(|r| Some((extend_seq(r.start, stream.next)?, u64::from(r.count))))
            .collect();
        let covered = stream.missing(NACK_MAX_RANGES).iter().all(|&(first, n)| {
            (first..first + n).all(|q| asked.iter().any(|&(a, c)| (a..a + c).contains(&q)))
        });
        if covered {
            stream.nack_at = Some(now + interval);
            self.stats.nacks_suppressed += 1;
        }
    }

    /// Build and queue NACKs that are due
    ///
    /// A frame is asked for once it has been seen missing at two checks
    /// `nack_delay` apart (so mere reordering is not mistaken for loss),
    /// and asked for again every `nack_interval` (at most `nack_tries`
    /// times while the head of the stream makes no progress).
    fn send_nacks(&mut self, now: Instant) {
        let tries = self.config.nack_tries;
        let interval = self.config.nack_interval;
        let delay = self.config.nack_delay;
        for (key, stream) in self.streams.iter_mut() {
            if stream.nack_at.is_none_or(|t| now < t) {
                continue;
            }
            let missing = stream.missing(NACK_MAX_RANGES);
            let reask =
                stream.nacked_at.is_some_and(|t| now >= t + interval) && stream.nack_tries < tries;
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            let mut asked_new_upto = stream.nacked_upto;
            for &(first, n) in &missing {
                let end = first + n;
                // asked before: again only when it is time to re-ask
                let old_end = end.min(stream.nacked_upto);
                if reask && first < old_end {
                    ranges.push((first, old_end - first));
                }
                // seen missing at the previous check, never asked: ask now
                let new_start = first.max(stream.nacked_upto);
                let new_end = end.min(stream.seen_upto);
                if new_start < new_end {
                    ranges.push((new_start, new_end - new_start));
                    asked_new_upto = asked_new_upto.max(new_end);
                }
            }
            stream.seen_upto = missing.last().map_or(stream.next, |&(f, n)| f + n);
            stream.nack_at = (!missing.is_empty()).then_some(now + delay);
            if ranges.is_empty() {
                continue;
            }
            if reask || stream.nacked_at.is_none() {
                stream.nacked_at = Some(now);
            }
            if reask {
                stream.nack_tries += 1;
            }
            stream.nacked_upto = asked_new_upto;
            let mut wire = Vec::with_capacity(ranges.len());
            for (mut first, mut n) in ranges {
                while n > 0 && wire.len() < NACK_MAX_RANGES {
                    let c = n.min(u64::from(u16::MAX));
                    wire.push(NackRange {
                        start: first as u32,
                        count: c as u16,
                    });
                    first += c;
                    n -= c;
                }
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
            let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
            if repr.emit_with_payload(&mut bytes, &payload).is_ok() {
                self.stats.nacks_sent += 1;
                self.transmits.push_back(Transmit {
                    frame_type: FrameType::Nack,
                    listener: stream.listener,
                    to: stream.from,
                    bytes,
                });
            }
        }
    }

    /// Next datagram to send (NACKs), if any
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn close(&mut self, key: StreamKey, reason: CloseReason) {
        self.fec.close(key);
        if let Some(stream) = self.streams.remove(&key) {
            for buf in stream.ring.into_iter().flatten() {
                self.buffered_bytes -= buf.len();
            }
            self.stats.streams_closed += 1;
            if self.closed_order.len() >= self.config.max_streams {
                if let Some(old) = self.closed_order.pop_front() {
                    self.closed.remove(&old);
                    self.finals.remove(&old);
                }
            }
            self.closed.insert(key);
            self.closed_order.push_back(key);
            if reason == CloseReason::Fin && self.config.window {
                let f = FinalWindow {
                    lost: stream.stats.lost,
                    next: stream.next as u32,
                    to: stream.from,
                    listener: stream.listener,
                    token: stream.token,
                };
                self.final_window(key, &f);
                self.finals.insert(key, f);
            }
            self.events.push_back(Event::Closed {
                key,
                reason,
                stats: stream.stats,
            });
        }
    }

    /// Next event, if any (call until `None` after each input)
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// How long a gap is waited for before it is skipped and counted as
    /// lost: `reorder_timeout`, but with NACKs on never less than the
    /// time every try needs (twice `nack_delay`, for the jitter, plus
    /// `nack_tries` x `nack_interval`), so the last request is not asked
    /// in vain for a gap already given up
    #[must_use]
    pub fn gap_timeout(&self) -> Duration {
        let c = &self.config;
        if c.nack {
            let tries = c.nack_interval.saturating_mul(c.nack_tries);
            c.reorder_timeout
                .max(c.nack_delay.saturating_mul(2).saturating_add(tries))
        } else {
            c.reorder_timeout
        }
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

/// Deliver the frame at `next` (a `None` buffer means an empty FIN or gap slot)
fn deliver(
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

fn record_gap(
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
