//! Public types of the receiver: settings, stream keys, counters, events

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::FrameType;

#[cfg(doc)]
use super::Receiver;

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
    /// Where a stream starts whose first frame seen is not its OPEN frame
    /// (a receiver started, or restarted, while the stream was running)
    pub join: Join,
    /// On a multicast group (once another receiver's NACK for a stream
    /// was overheard): the longest random wait before a first NACK, drawn
    /// from a truncated exponential (NORM's backoff) so that of the
    /// receivers missing a frame usually one asks and the rest overhear
    /// it. Zero: the unicast rule (`nack_delay` plus up to as long again).
    pub nack_backoff: Duration,
    /// How many receivers are expected to miss the same frame (NORM's
    /// group size `G`; λ = ln G + 1): the group size where losses are
    /// shared (near the sender), loss rate × group size where they are
    /// independent
    pub nack_group_size: u32,
}

/// Where a stream starts whose first frame seen is not its OPEN frame
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Join {
    /// At the current position: delivery is held for `reorder_timeout`,
    /// then starts at the lowest sequence number seen meanwhile; nothing
    /// before it is asked for. A restarted receiver appending to what an
    /// earlier one wrote gets no duplicates.
    #[default]
    Current,
    /// As far back as the reorder window reaches: the frames before the
    /// first one seen are asked for (NACK), so the sender re-sends what
    /// its repair buffer still holds; the rest is counted lost
    Earliest,
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
            join: Join::Current,
            nack_backoff: Duration::from_millis(100),
            nack_group_size: 10,
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
    /// Frames at or beyond the stream's FIN (a protocol violation: forged
    /// or confused senders), dropped
    pub beyond_fin: u64,
    /// Highest sequence number of a DATA frame received (`None`: none yet)
    pub last_seq: Option<u64>,
    /// One past the FIN frame, once the end is known
    pub end: Option<u64>,
    /// Payload bytes of the frames declared lost, when the sender's
    /// heartbeats carried the byte offsets that tell (`None`: frames were
    /// lost and their size is unknown)
    pub bytes_lost: Option<u64>,
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
            beyond_fin,
            last_seq: _,
            end: _,
            bytes_lost,
        } = *other;
        self.bytes += bytes;
        self.datagrams += datagrams;
        self.gaps += gaps;
        self.duplicates += duplicates;
        self.reordered += reordered;
        self.late += late;
        self.repaired += repaired;
        self.fec_repaired += fec_repaired;
        self.beyond_fin += beyond_fin;
        // known only while every part is known (a stream without losses
        // lost 0 bytes)
        let known = |b: Option<u64>, lost: u64| b.or((lost == 0).then_some(0));
        self.bytes_lost = match (known(self.bytes_lost, self.lost), known(bytes_lost, lost)) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.lost += lost;
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
        )?;
        if self.lost > 0 {
            if let Some(b) = self.bytes_lost {
                write!(f, ", {b} bytes lost")?;
            }
        }
        if self.beyond_fin > 0 {
            write!(f, ", {} beyond FIN", self.beyond_fin)?;
        }
        Ok(())
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
    /// Other receivers' NACKs overheard that asked for frames we miss
    pub nacks_overheard: u64,
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
    /// Frames that would have moved a stream's position further than one
    /// frame may (a few reorder windows; from a source that has not
    /// delivered the stream in order: past the reorder window), dropped
    pub too_far: u64,
    /// Frames at or beyond a stream's FIN (also in `out_of_range`)
    pub beyond_fin: u64,
    /// FIN flags not accepted because frames beyond them had arrived
    pub fin_refused: u64,
    /// HEARTBEAT frames of a stream not live (they open none)
    pub orphan_heartbeats: u64,
    /// HEARTBEAT frames from a source that has not delivered the stream
    /// in order: they keep it alive but do not move its position
    pub unverified_heartbeats: u64,
    /// Replies (NACK, WINDOW, FEEDBACK) not sent because their destination
    /// had not sent enough to be owed them (no reflection)
    pub replies_withheld: u64,
    /// New streams admitted by displacing a live one (counted in
    /// `streams_evicted` too)
    pub streams_displaced: u64,
    /// Operations done (slots, ranges and entries visited), so tests can
    /// bound the work per datagram without timing it
    pub work: u64,
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
