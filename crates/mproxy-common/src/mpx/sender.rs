//! The sending side of one mpx stream

use std::time::{Duration, Instant};

use super::fec::{FecConfig, FecEncoder, FecEncoderStats};
use super::repair::{RepairBuffer, RepairOutcome};
use crate::pack::{Framing, Packer};
use crate::wire::{parse_nack, Flags, FrameType, HeartbeatInfo, Repr, HEADER_LEN, HEARTBEAT_LEN};

/// Settings of a [`Sender`]
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Largest frame (header included) put in one datagram
    pub max_datagram: usize,
    /// How the input stream is cut into frames
    pub framing: Framing,
    /// Send a heartbeat after this long without any frame
    pub heartbeat_interval: Duration,
    /// Bytes of recent frames kept for NACK repair (0: no repair)
    pub repair_buffer: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_datagram: 1472,
            framing: Framing::Lines,
            heartbeat_interval: Duration::from_secs(1),
            repair_buffer: 0,
        }
    }
}

/// Counters of a [`Sender`]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// DATA frames emitted (FIN included)
    pub frames: u64,
    /// Payload bytes emitted
    pub bytes: u64,
    /// Heartbeats emitted
    pub heartbeats: u64,
    /// NACK frames received
    pub nacks: u64,
    /// Frames re-sent in answer to NACKs
    pub retransmitted: u64,
    /// Bytes of those frames (headers included)
    pub retransmitted_bytes: u64,
    /// Requested frames no longer in the repair buffer
    pub unrecoverable: u64,
    /// Requests for a frame re-sent moments ago (several receivers asked)
    pub repair_suppressed: u64,
    /// Requested frames not re-sent because the requester's budget (or
    /// the 4096 frames per NACK) was spent
    pub refused: u64,
    /// Work done for NACKs: ranges examined plus frames looked up (bounded
    /// by the NACKs' lengths and the frames re-sent, never by the counts
    /// they claim)
    pub nack_work: u64,
}

/// Turns a byte stream into sequenced mpx frames
///
/// The first frame carries OPEN, [`Sender::finish`] sends FIN, and while
/// idle the sender emits a heartbeat every `heartbeat_interval` carrying
/// the next sequence number, so receivers notice lost tail frames.
#[derive(Debug)]
pub struct Sender {
    session: u64,
    stream: u32,
    next_seq: u32,
    packer: Packer,
    frame: Vec<u8>,
    heartbeat_interval: Duration,
    epoch: Option<Instant>,
    last_sent: Option<Instant>,
    finished: bool,
    /// Heartbeats still to send after FIN (they carry FIN, so a receiver
    /// that lost the FIN frame or the frames before it learns the end)
    linger: u8,
    repair: Option<RepairBuffer>,
    fec: Option<FecEncoder>,
    stats: SenderStats,
    /// First sequence number not yet handed to the network, when a driver
    /// queues frames before sending them ([`Sender::set_sent`]); `None`:
    /// every frame made was sent at once
    sent_limit: Option<u32>,
    /// Heartbeats carry PROBE (the sender wants path feedback)
    probing: bool,
}

/// A frame re-sent less than this long ago is not re-sent again for
/// another request (several multicast receivers asking for the same)
const REPAIR_MIN_GAP: Duration = Duration::from_millis(10);

/// DATA frames first sent within this long of the stream's start carry
/// YOUNG, so a receiver that missed the OPEN frame still starts at 0
pub(crate) const YOUNG_FOR: Duration = Duration::from_secs(2);

/// Heartbeats sent after FIN, and their spacing
const LINGER_COUNT: u8 = 3;
const LINGER_INTERVAL: Duration = Duration::from_millis(50);

impl Sender {
    /// A sender for stream `stream` of session `session`
    pub fn new(session: u64, stream: u32, config: &SenderConfig) -> Self {
        let max_payload = config.max_datagram.saturating_sub(HEADER_LEN).max(1);
        Self {
            session,
            stream,
            next_seq: 0,
            packer: Packer::new(config.framing, max_payload),
            frame: vec![0; HEADER_LEN + max_payload.max(HEARTBEAT_LEN)],
            heartbeat_interval: config.heartbeat_interval,
            epoch: None,
            last_sent: None,
            finished: false,
            linger: 0,
            repair: (config.repair_buffer > 0).then(|| RepairBuffer::new(config.repair_buffer)),
            fec: None,
            stats: SenderStats::default(),
            sent_limit: None,
            probing: false,
        }
    }

    /// Session id
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Stream id
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Sequence number of the next DATA frame
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Counters so far
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Lines split because they exceeded the frame payload limit
    pub fn split_lines(&self) -> u64 {
        self.packer.split_lines()
    }

    /// True once [`Sender::finish`] was called
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Tell the sender that frames from `seq` on were made but not sent
    /// yet (they wait in a driver's queue): NACKs for them are not
    /// answered, since the originals are still to come
    pub fn set_sent(&mut self, seq: u32) {
        self.sent_limit = Some(seq);
    }

    /// Flag heartbeats PROBE: the sender wants FEEDBACK reports on the
    /// paths they go over (multipath)
    pub fn set_probing(&mut self, on: bool) {
        self.probing = on;
    }

    /// The first sequence number not yet sent (see [`Sender::set_sent`])
    pub fn sent_limit(&self) -> u32 {
        self.sent_limit.unwrap_or(self.next_seq)
    }

    /// Feed stream bytes; each finished frame is passed to `emit`
    pub fn push(&mut self, now: Instant, data: &[u8], mut emit: impl FnMut(&[u8])) {
        if self.finished {
            return;
        }
        let (packer, mut framer) = self.split();
        let mut sent = false;
        packer.push(data, |payload| {
            sent = true;
            framer.data(now, payload, &mut emit);
        });
        if sent {
            self.touch(now);
        }
    }

    /// Flush buffered bytes and send FIN; later pushes are ignored
    pub fn finish(&mut self, now: Instant, mut emit: impl FnMut(&[u8])) {
        if self.finished {
            return;
        }
        let (packer, mut framer) = self.split();
        packer.finish(|payload| framer.data(now, payload, &mut emit));
        framer.fin(now, &mut emit);
        self.finished = true;
        self.linger = LINGER_COUNT;
        self.touch(now);
    }

    /// The packer, and beside it what turns its payloads into frames
    fn split(&mut self) -> (&mut Packer, Framer<'_>) {
        (
            &mut self.packer,
            Framer {
                frame: &mut self.frame,
                ids: (self.session, self.stream),
                next_seq: &mut self.next_seq,
                stats: &mut self.stats,
                repair: self.repair.as_mut(),
                fec: self.fec.as_mut(),
                epoch: self.epoch,
            },
        )
    }

    /// When [`Sender::handle_timeout`] should next be called
    ///
    /// `None` before the first frame and once the stream is finished and
    /// its closing heartbeats are sent: a driver may exit then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return (self.linger > 0).then_some(self.last_sent? + LINGER_INTERVAL);
        }
        let heartbeat = self.last_sent? + self.heartbeat_interval;
        let fec = self.fec.as_ref().and_then(FecEncoder::poll_timeout);
        Some(fec.map_or(heartbeat, |f| f.min(heartbeat)))
    }

    /// Protect DATA frames with FEC from the next frame on (`None`: off);
    /// an open block is flushed through `emit` first
    pub fn enable_fec(&mut self, config: Option<FecConfig>, emit: impl FnMut(&[u8])) {
        if let Some(f) = self.fec.as_mut() {
            f.flush(self.session, self.stream, emit);
        }
        self.fec = config.map(FecEncoder::new);
    }

    /// FEC counters (`None` if FEC is off)
    pub fn fec_stats(&self) -> Option<FecEncoderStats> {
        self.fec.as_ref().map(FecEncoder::stats)
    }

    /// Keep the last `bytes` of frames for NACK repair (0 turns repair off)
    pub fn enable_repair(&mut self, bytes: usize) {
        self.repair = (bytes > 0).then(|| RepairBuffer::new(bytes));
    }

    /// Answer a NACK frame's payload: re-send every requested frame still
    /// in the repair buffer (flagged RETRANSMIT) through `emit`
    ///
    /// Requests for frames that were never sent (ahead of the stream) are
    /// ignored; at most 4096 frames are re-sent per NACK.
    pub fn handle_nack(&mut self, now: Instant, payload: &[u8], emit: impl FnMut(&[u8])) {
        self.handle_nack_limited(now, payload, u64::MAX, emit);
    }

    /// Like [`Sender::handle_nack`], re-sending at most `budget` bytes;
    /// returns the bytes re-sent
    ///
    /// The work is bounded by the ranges in the payload (at most 128) and
    /// the frames re-sent, never by the counts a NACK claims: each range
    /// is clipped to what was sent and what the repair buffer holds by
    /// arithmetic, and what lies outside is counted, not walked.
    pub fn handle_nack_limited(
        &mut self,
        now: Instant,
        payload: &[u8],
        budget: u64,
        mut emit: impl FnMut(&[u8]),
    ) -> u64 {
        self.stats.nacks += 1;
        let Some(repair) = self.repair.as_mut() else {
            return 0;
        };
        let sent = self.sent_limit.unwrap_or(self.next_seq);
        let (front, held) = repair.range();
        // "behind" coordinates: frame seq is sent - b, b in 1..=2^31
        let held_hi = u64::from(sent.wrapping_sub(front));
        let held_lo = (held_hi + 1).saturating_sub(held as u64).max(1);
        let held_ok = held > 0 && (1..=1 << 31).contains(&held_hi);
        let mut frames_left = 4096u64;
        let mut bytes_left = budget;
        let mut spent = 0u64;
        for range in parse_nack(payload) {
            self.stats.nack_work += 1;
            let behind = u64::from(sent.wrapping_sub(range.start));
            if behind == 0 || behind > 1 << 31 {
                continue; // nothing of it was sent yet
            }
            let valid = u64::from(range.count).min(behind);
            let lo = behind + 1 - valid;
            let (ilo, ihi) = (lo.max(held_lo), behind.min(held_hi));
            let inside = if held_ok && ilo <= ihi {
                ihi - ilo + 1
            } else {
                0
            };
            self.stats.unrecoverable += valid - inside;
            if inside == 0 {
                continue;
            }
            // oldest first
            let mut b = ihi;
            loop {
                self.stats.nack_work += 1;
                let seq = sent.wrapping_sub(b as u32);
                let len = repair.frame_len(seq).unwrap_or(0) as u64;
                if frames_left == 0 || len > bytes_left {
                    self.stats.refused += b - ilo + 1;
                    break;
                }
                match repair.resend(now, seq, REPAIR_MIN_GAP, &mut emit) {
                    RepairOutcome::Resent => {
                        frames_left -= 1;
                        bytes_left -= len;
                        spent += len;
                        self.stats.retransmitted += 1;
                        self.stats.retransmitted_bytes += len;
                    }
                    RepairOutcome::Suppressed => self.stats.repair_suppressed += 1,
                    RepairOutcome::Unavailable => self.stats.unrecoverable += 1,
                }
                if b == ilo {
                    break;
                }
                b -= 1;
            }
        }
        spent
    }

    /// Re-send frame `seq` from the repair buffer (flagged RETRANSMIT), as
    /// for a NACK: frames in flight on a path that died go out again on
    /// another; true if it was re-sent
    pub fn resend(&mut self, now: Instant, seq: u32, mut emit: impl FnMut(&[u8])) -> bool {
        let sent = self.sent_limit.unwrap_or(self.next_seq);
        let behind = sent.wrapping_sub(seq);
        if behind == 0 || behind > 1 << 31 {
            return false;
        }
        let Some(repair) = self.repair.as_mut() else {
            return false;
        };
        let mut len = 0;
        let outcome = repair.resend(now, seq, REPAIR_MIN_GAP, &mut |f: &[u8]| {
            len = f.len();
            emit(f);
        });
        if outcome == RepairOutcome::Resent {
            self.stats.retransmitted += 1;
            self.stats.retransmitted_bytes += len as u64;
            true
        } else {
            false
        }
    }

    /// Use `epoch` as time zero of heartbeat timestamps (so probes and the
    /// multipath scheduler's RTT clock agree)
    pub fn set_epoch(&mut self, epoch: Instant) {
        self.epoch = Some(epoch);
    }

    /// Emit a heartbeat now, whatever the idle timer says (a path probe)
    pub fn probe(&mut self, now: Instant, emit: impl FnMut(&[u8])) {
        let (seq, offset) = (self.next_seq, self.stats.bytes);
        self.heartbeat(now, seq, self.finished, offset, 0, emit);
    }

    /// Emit a HEARTBEAT announcing `seq` as the next DATA frame, `offset`
    /// as the stream bytes before it, flagged FIN if `fin` (the stream
    /// ends before `seq`), carrying the echo `token`; its timestamp is
    /// microseconds since the epoch
    pub fn heartbeat(
        &mut self,
        now: Instant,
        seq: u32,
        fin: bool,
        offset: u64,
        token: u64,
        mut emit: impl FnMut(&[u8]),
    ) {
        let epoch = *self.epoch.get_or_insert(now);
        let micros = now.saturating_duration_since(epoch).as_micros() as u64;
        let repr = Repr {
            frame_type: FrameType::Heartbeat,
            flags: match (fin, self.probing) {
                (true, true) => Flags::FIN | Flags::PROBE,
                (true, false) => Flags::FIN,
                (false, true) => Flags::PROBE,
                (false, false) => Flags::NONE,
            },
            session: self.session,
            stream: self.stream,
            seq,
        };
        let payload = HeartbeatInfo {
            ts_us: micros,
            offset: Some(offset),
            token: Some(token),
        }
        .emit();
        if let Ok(len) = repr.emit_with_payload(&mut self.frame, &payload) {
            self.stats.heartbeats += 1;
            emit(&self.frame[..len]);
        }
    }

    /// When the open FEC block must be closed (see [`Sender::handle_fec_timeout`])
    #[must_use]
    pub fn poll_fec_timeout(&self) -> Option<Instant> {
        self.fec.as_ref().and_then(FecEncoder::poll_timeout)
    }

    /// Send the repair frames of an FEC block that waited long enough
    pub fn handle_fec_timeout(&mut self, now: Instant, emit: impl FnMut(&[u8])) {
        if let Some(f) = self.fec.as_mut() {
            if f.poll_timeout().is_some_and(|at| now >= at) {
                f.flush(self.session, self.stream, emit);
            }
        }
    }

    /// Send a heartbeat if the stream has been idle for the interval
    /// (after FIN: one of the closing heartbeats, flagged FIN)
    pub fn handle_timeout(&mut self, now: Instant, mut emit: impl FnMut(&[u8])) {
        if let Some(f) = self.fec.as_mut() {
            if f.poll_timeout().is_some_and(|at| now >= at) {
                // the open block waited long enough: send its repair symbols
                f.flush(self.session, self.stream, &mut emit);
            }
        }
        match self.poll_timeout() {
            Some(at) if now >= at => {}
            _ => return,
        }
        if self.finished {
            self.linger = self.linger.saturating_sub(1);
        }
        let (seq, offset) = (self.next_seq, self.stats.bytes);
        self.heartbeat(now, seq, self.finished, offset, 0, &mut emit);
        self.touch(now);
    }

    fn touch(&mut self, now: Instant) {
        self.epoch.get_or_insert(now);
        self.last_sent = Some(now);
    }
}

fn fec_flag(on: bool) -> Flags {
    if on {
        Flags::FEC
    } else {
        Flags::NONE
    }
}

/// Add a sent DATA frame to the FEC block; emit the repair frames when full
#[allow(clippy::too_many_arguments)]
fn protect(
    fec: Option<&mut FecEncoder>,
    now: Instant,
    seq: u32,
    mut flags: Flags,
    payload: &[u8],
    session: u64,
    stream: u32,
    emit: &mut impl FnMut(&[u8]),
) {
    let Some(f) = fec else {
        return;
    };
    if seq == 0 {
        flags = flags | Flags::OPEN;
    }
    if f.add(now, seq, flags, payload) {
        f.flush(session, stream, emit);
    }
}

/// The parts of a [`Sender`] that make DATA frames, borrowed beside its
/// packer (which hands them the payloads)
struct Framer<'a> {
    frame: &'a mut [u8],
    ids: (u64, u32),
    next_seq: &'a mut u32,
    stats: &'a mut SenderStats,
    repair: Option<&'a mut RepairBuffer>,
    fec: Option<&'a mut FecEncoder>,
    /// When the stream began (frames within [`YOUNG_FOR`] of it are YOUNG)
    epoch: Option<Instant>,
}

impl Framer<'_> {
    /// One DATA frame for `payload`, then FEC repair frames if it filled a block
    fn data(&mut self, now: Instant, payload: &[u8], emit: &mut impl FnMut(&[u8])) {
        let seq = *self.next_seq;
        let mut flags = fec_flag(self.fec.is_some());
        if self
            .epoch
            .is_none_or(|e| now.saturating_duration_since(e) < YOUNG_FOR)
        {
            flags = flags | Flags::YOUNG;
        }
        self.stats.frames += 1;
        self.stats.bytes += payload.len() as u64;
        emit(write_data(
            self.frame,
            self.repair.as_deref_mut(),
            self.ids,
            self.next_seq,
            flags,
            payload,
        ));
        protect(
            self.fec.as_deref_mut(),
            now,
            seq,
            flags,
            payload,
            self.ids.0,
            self.ids.1,
            emit,
        );
    }

    /// The empty FIN frame, then the last (partial) FEC block
    fn fin(&mut self, now: Instant, emit: &mut impl FnMut(&[u8])) {
        let seq = *self.next_seq;
        let mut flags = fec_flag(self.fec.is_some()) | Flags::FIN;
        if self
            .epoch
            .is_none_or(|e| now.saturating_duration_since(e) < YOUNG_FOR)
        {
            flags = flags | Flags::YOUNG;
        }
        self.stats.frames += 1;
        emit(write_data(
            self.frame,
            self.repair.as_deref_mut(),
            self.ids,
            self.next_seq,
            flags,
            &[],
        ));
        if let Some(f) = self.fec.as_deref_mut() {
            let flags = if seq == 0 { flags | Flags::OPEN } else { flags };
            f.add(now, seq, flags, &[]);
            f.flush(self.ids.0, self.ids.1, emit);
        }
    }
}

/// Write one DATA frame, advancing `next_seq`: straight into the repair
/// buffer when there is one (the payload is copied once), else into the
/// scratch `frame`; returns the frame
fn write_data<'a>(
    frame: &'a mut [u8],
    repair: Option<&'a mut RepairBuffer>,
    (session, stream): (u64, u32),
    next_seq: &mut u32,
    flags: Flags,
    payload: &[u8],
) -> &'a [u8] {
    let seq = *next_seq;
    match repair {
        Some(r) => r.store_with(seq, frame.len(), |buf| {
            data_frame(buf, session, stream, next_seq, flags, payload)
        }),
        None => {
            let len = data_frame(frame, session, stream, next_seq, flags, payload);
            &frame[..len]
        }
    }
}

/// Write one DATA frame into `frame`, advancing `next_seq`; returns its length
fn data_frame(
    frame: &mut [u8],
    session: u64,
    stream: u32,
    next_seq: &mut u32,
    mut flags: Flags,
    payload: &[u8],
) -> usize {
    if *next_seq == 0 {
        flags = flags | Flags::OPEN;
    }
    let repr = Repr {
        frame_type: FrameType::Data,
        flags,
        session,
        stream,
        seq: *next_seq,
    };
    *next_seq = next_seq.wrapping_add(1);
    // The buffer holds HEADER_LEN + max payload and the packer never emits
    // more than max payload, so this cannot fail.
    repr.emit_with_payload(frame, payload).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram};

    fn frames(s: &mut Sender, now: Instant, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        s.push(now, data, |f| out.push(f.to_vec()));
        out
    }

    #[test]
    fn test_open_seq_fin() {
        let cfg = SenderConfig {
            max_datagram: HEADER_LEN + 8,
            ..SenderConfig::default()
        };
        let mut s = Sender::new(42, 3, &cfg);
        let t = Instant::now();
        let out = frames(&mut s, t, b"abc\ndef\nghi\n");
        assert_eq!(out.len(), 2);
        let mut fin = Vec::new();
        s.finish(t, |f| fin.push(f.to_vec()));
        assert_eq!(fin.len(), 1);
        let all: Vec<_> = out.iter().chain(fin.iter()).collect();
        let mut payload = Vec::new();
        for (i, f) in all.iter().enumerate() {
            let Datagram::Mpx(r, p) = classify(f) else {
                panic!("not mpx")
            };
            assert_eq!((r.session, r.stream, r.seq), (42, 3, i as u32));
            assert_eq!(r.flags.contains(Flags::OPEN), i == 0);
            assert_eq!(r.flags.contains(Flags::FIN), i == 2);
            payload.extend_from_slice(p);
        }
        assert_eq!(payload, b"abc\ndef\nghi\n");
        assert_eq!(s.stats().frames, 3);
        assert_eq!(s.stats().bytes, 12);
        // three closing heartbeats flagged FIN, carrying the end
        let mut hbs = Vec::new();
        let mut now = t;
        while let Some(at) = s.poll_timeout() {
            now = now.max(at);
            s.handle_timeout(now, |f| hbs.push(f.to_vec()));
        }
        assert_eq!(hbs.len(), 3);
        for hb in &hbs {
            let Datagram::Mpx(r, _) = classify(hb) else {
                panic!()
            };
            assert_eq!(r.frame_type, FrameType::Heartbeat);
            assert!(r.flags.contains(Flags::FIN));
            assert_eq!(r.seq, 3);
        }
    }

    #[test]
    fn test_heartbeat_when_idle() {
        let mut s = Sender::new(1, 1, &SenderConfig::default());
        let t0 = Instant::now();
        assert_eq!(
            s.poll_timeout(),
            None,
            "no heartbeat before the first frame"
        );
        frames(&mut s, t0, b"x\n");
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        let mut hb = Vec::new();
        s.handle_timeout(t0 + Duration::from_millis(500), |f| hb.push(f.to_vec()));
        assert!(hb.is_empty());
        s.handle_timeout(t0 + Duration::from_secs(1), |f| hb.push(f.to_vec()));
        assert_eq!(hb.len(), 1);
        let Datagram::Mpx(r, p) = classify(&hb[0]) else {
            panic!()
        };
        assert_eq!(r.frame_type, FrameType::Heartbeat);
        assert_eq!(r.seq, 1, "heartbeat carries the next sequence number");
        assert_eq!(&p[..8], 1_000_000u64.to_be_bytes());
        assert_eq!(&p[8..16], 2u64.to_be_bytes(), "stream offset of seq 1");
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    }
}
