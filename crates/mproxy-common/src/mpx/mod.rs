//! The mpx protocol core: sans-IO sender and receiver
//!
//! Neither type owns a socket, a thread or a clock: time is passed in as
//! `now`, frames go out through an `emit` callback, and received frames
//! come in as byte slices. The drivers in the binaries do the I/O; the
//! simulation tests drive both ends over a seeded lossy link with a
//! virtual clock.
//!
//! Polling order for a driver (like quinn-proto's):
//! 1. feed input: [`Sender::push`] / [`Receiver::handle_datagram`];
//! 2. drain [`Receiver::poll_event`] until `None`;
//! 3. sleep until [`Sender::poll_timeout`] / [`Receiver::poll_timeout`]
//!    (or new input), then call `handle_timeout(now)` and go to 2.

pub mod auth;
mod fec;
mod feedback;
mod flow;
mod keyed;
mod receiver;
mod repair;
mod scheduler;
mod sender;
mod session;

pub use fec::{
    FecConfig, FecDecoder, FecDecoderStats, FecEncoder, FecEncoderStats, Rebuilt,
    DEFAULT_FEC_BLOCK, DEFAULT_FEC_MAX_DELAY, FEC_STREAM_BYTES,
};
pub use feedback::{FeedbackTracker, PathKey, REPORT_LEN};
pub use flow::{FlowConfig, FlowControl, FlowEvent, FlowStats, PeerState, PeerStatus};
pub use repair::{RepairBuffer, RepairOutcome};
pub use scheduler::{PathConfig, PathState, PathStats, Scheduler, SchedulerConfig};

pub use receiver::{
    CloseReason, Event, Join, Receiver, ReceiverConfig, ReceiverStats, StreamKey, StreamStats,
    Transmit, JUMP_WINDOWS,
};
pub use sender::{Sender, SenderConfig, SenderStats};
pub use session::{
    Confirm, Delivery, Dest, Mode, Outgoing, PathCause, ReceiverOutcome, SenderSession,
    SessionConfig, SessionEvent, SessionKeys, SessionStats, FLOW_POKE, LINGER_QUIET, MAX_BATCH,
    MIN_WAIT,
};

/// Turns a byte stream into datagrams, raw or mpx-framed
///
/// The one interface the senders (client, proxy TCP upstreams, reverse
/// proxy TCP inputs) drive, whatever the wire mode.
#[derive(Debug)]
pub enum Encoder {
    /// Raw payloads, wire-compatible with mproxy 0.1.x
    Raw(crate::pack::Packer),
    /// mpx frames of one stream
    Mpx(Box<Sender>),
}

impl Encoder {
    /// A raw encoder, or an mpx one for `(session, stream)` when `mpx` is set
    pub fn new(
        mpx: Option<(u64, u32)>,
        framing: crate::pack::Framing,
        max_datagram: usize,
        heartbeat_interval: std::time::Duration,
    ) -> Self {
        match mpx {
            None => Self::Raw(crate::pack::Packer::new(framing, max_datagram)),
            Some((session, stream)) => Self::Mpx(Box::new(Sender::new(
                session,
                stream,
                &SenderConfig {
                    max_datagram,
                    framing,
                    heartbeat_interval,
                    repair_buffer: 0,
                },
            ))),
        }
    }

    /// Feed stream bytes; each finished datagram is passed to `emit`
    pub fn push(&mut self, now: std::time::Instant, data: &[u8], emit: impl FnMut(&[u8])) {
        match self {
            Self::Raw(p) => p.push(data, emit),
            Self::Mpx(s) => s.push(now, data, emit),
        }
    }

    /// End of stream: flush, and for mpx send FIN
    pub fn finish(&mut self, now: std::time::Instant, emit: impl FnMut(&[u8])) {
        match self {
            Self::Raw(p) => p.finish(emit),
            Self::Mpx(s) => s.finish(now, emit),
        }
    }

    /// When [`Encoder::handle_timeout`] is due (heartbeats; never for raw)
    #[must_use]
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        match self {
            Self::Raw(_) => None,
            Self::Mpx(s) => s.poll_timeout(),
        }
    }

    /// Send what timers call for (heartbeats)
    pub fn handle_timeout(&mut self, now: std::time::Instant, emit: impl FnMut(&[u8])) {
        if let Self::Mpx(s) = self {
            s.handle_timeout(now, emit);
        }
    }

    /// Keep `bytes` of recent frames to answer NACKs (mpx only; 0: off)
    pub fn enable_repair(&mut self, bytes: usize) {
        if let Self::Mpx(s) = self {
            s.enable_repair(bytes);
        }
    }

    /// Protect the stream with FEC repair symbols (mpx only; `None`: off)
    pub fn enable_fec(&mut self, config: Option<FecConfig>, emit: impl FnMut(&[u8])) {
        if let Self::Mpx(s) = self {
            s.enable_fec(config, emit);
        }
    }

    /// FEC counters of the sender (`None` if raw or FEC is off)
    pub fn fec_stats(&self) -> Option<FecEncoderStats> {
        match self {
            Self::Raw(_) => None,
            Self::Mpx(s) => s.fec_stats(),
        }
    }

    /// Answer a NACK for this stream (mpx only)
    pub fn handle_nack(
        &mut self,
        now: std::time::Instant,
        payload: &[u8],
        emit: impl FnMut(&[u8]),
    ) {
        if let Self::Mpx(s) = self {
            s.handle_nack(now, payload, emit);
        }
    }

    /// Send a heartbeat now (mpx only): pokes receivers for their window
    pub fn probe(&mut self, now: std::time::Instant, emit: impl FnMut(&[u8])) {
        if let Self::Mpx(s) = self {
            s.probe(now, emit);
        }
    }

    /// Sequence number of the next DATA frame (mpx only)
    pub fn next_seq(&self) -> Option<u32> {
        match self {
            Self::Raw(_) => None,
            Self::Mpx(s) => Some(s.next_seq()),
        }
    }

    /// Lines split because they exceeded the datagram limit
    pub fn split_lines(&self) -> u64 {
        match self {
            Self::Raw(p) => p.split_lines(),
            Self::Mpx(s) => s.split_lines(),
        }
    }
}

/// A random 64-bit session id, so streams of different processes and
/// restarts never collide
///
/// Uses the kernel's random source (getrandom(2)); falls back to hashing
/// time, process id and a per-process random hasher key.
pub fn new_session_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is a writable buffer of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// Extend a 32-bit wire sequence number to 64 bits, relative to `reference`
///
/// RFC 1982 serial arithmetic: the result is the 64-bit value congruent to
/// `seq` mod 2^32 that is nearest to `reference` (within ±2^31). `None` if
/// that would be negative (a frame from before the stream's start).
pub fn extend_seq(seq: u32, reference: u64) -> Option<u64> {
    let delta = i64::from(seq.wrapping_sub(reference as u32) as i32);
    reference.checked_add_signed(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_extend_seq() {
        assert_eq!(extend_seq(5, 0), Some(5));
        assert_eq!(extend_seq(u32::MAX, 0), None);
        assert_eq!(extend_seq(0, u64::from(u32::MAX)), Some(1 << 32));
        assert_eq!(extend_seq(u32::MAX, 1 << 32), Some((1 << 32) - 1));
        assert_eq!(extend_seq(10, (5u64 << 32) + 3), Some((5u64 << 32) + 10));
        assert_eq!(extend_seq(3, (5u64 << 32) + 10), Some((5u64 << 32) + 3));
        assert_ne!(new_session_id(), new_session_id());
    }
}
