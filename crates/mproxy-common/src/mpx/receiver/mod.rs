//! The receiving side: demultiplex streams, reorder, deliver, count losses
//!
//! Split along responsibilities: [`types`] (settings, keys, counters,
//! events), `input` (DATA, HEARTBEAT and FEC frames), `reorder`
//! (per-stream buffer and in-order delivery), `nack` (repair requests),
//! `window` (flow control adverts), `table` (the stream table: admission,
//! eviction, closing), `credit` (what replies an address is owed) and
//! `timers`. This file holds the [`Receiver`] itself and its public
//! interface.
//!
//! Work per datagram is bounded by a constant (the reorder window, the
//! NACK's 128 ranges, a few table slots) or by the datagram's length,
//! never by numbers a datagram chooses: no frame moves a stream more than
//! [`JUMP_WINDOWS`] reorder windows ahead, NACK ranges are handled as
//! intervals, and timers sit in a heap.

mod credit;
mod input;
mod nack;
mod reorder;
mod table;
mod timers;
mod types;
mod window;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::extend_seq;
use super::fec::FecDecoder;
use super::keyed::KeyedState;
use crate::wire::{classify, Datagram, Error as WireError};
use credit::Credit;
use reorder::Stream;
use table::{Closed, Waiting};
pub use types::{
    CloseReason, Event, Join, ReceiverConfig, ReceiverStats, StreamKey, StreamStats, Transmit,
};

/// How far one frame may move a stream ahead of its next expected
/// sequence number, in reorder windows; frames beyond are dropped (and a
/// verified sender that really is that far ahead is followed after a gap
/// timeout of nothing closer)
pub const JUMP_WINDOWS: u64 = 4;

/// Keep at most this many spare payload buffers
const POOL: usize = 256;

/// Most early echo tokens remembered (see `Receiver::early_tokens`)
const EARLY_TOKENS: usize = 256;

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
    closed: HashMap<StreamKey, Closed, KeyedState>,
    closed_order: VecDeque<StreamKey>,
    /// Echo tokens of heartbeats that came before their stream's first
    /// DATA frame (the sender's opening heartbeat), by stream, with their
    /// source: a stream that opens from the same source takes the token,
    /// so its first WINDOW already shows the sender it gets the stream
    /// (bounded by [`EARLY_TOKENS`], oldest replaced)
    early_tokens: HashMap<StreamKey, (SocketAddr, u64), KeyedState>,
    early_order: VecDeque<StreamKey>,
    /// Streams with few frames yet, by (frames, admission order)
    probation: BTreeSet<(u32, u64, StreamKey)>,
    /// Admission counter
    order: u64,
    /// Refused newcomers ([`table::WAITING`] slots, allocated when the
    /// table first fills)
    waiting: Vec<Option<Waiting>>,
    /// Established streams with the fewest recent frames, and when found
    candidates: Vec<StreamKey>,
    candidates_at: Option<Instant>,
    /// Stream timers: (deadline, stream), stale entries skipped
    timers: BinaryHeap<Reverse<(Instant, StreamKey)>>,
    credit: Credit,
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
            closed: HashMap::default(),
            closed_order: VecDeque::new(),
            early_tokens: HashMap::default(),
            early_order: VecDeque::new(),
            probation: BTreeSet::new(),
            order: 0,
            waiting: Vec::new(),
            candidates: Vec::new(),
            candidates_at: None,
            timers: BinaryHeap::new(),
            credit: Credit::default(),
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
        let mut v: Vec<_> = self
            .streams
            .iter()
            .map(|(k, s)| (*k, s.final_stats()))
            .collect();
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

    /// Spend the credit `to` has earned (see the `credit` module) for a
    /// reply of `len` bytes the driver sends on its own (FEEDBACK); false:
    /// `to` has not sent enough to be owed it, do not send. A FEEDBACK
    /// report is only useful (path health for multipath senders): it
    /// leaves one credit for a NACK or WINDOW, which are needed
    pub fn allow_reply(&mut self, to: SocketAddr, len: usize) -> bool {
        if self.credit.spend(to, len, 1) {
            true
        } else {
            self.stats.replies_withheld += 1;
            false
        }
    }

    /// Next datagram to send (NACK or WINDOW), if any
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event, if any (call until `None` after each input)
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Deliver what is buffered, count what is missing, and close every stream
    pub fn close_all(&mut self) {
        let keys: Vec<StreamKey> = self.streams.keys().copied().collect();
        for key in keys {
            // a stream lingering after its FIN ended by it
            let done = self.streams.get(&key).is_some_and(|s| s.finished.is_some());
            let reason = if done {
                CloseReason::Fin
            } else {
                CloseReason::Shutdown
            };
            self.flush_and_close(key, reason);
        }
    }
}
