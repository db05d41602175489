//! Frames in: DATA, HEARTBEAT, FEC (NACKs are in `nack`)
//!
//! The checks that keep one frame from doing much: no frame moves a
//! stream more than [`JUMP_WINDOWS`] reorder windows past its next
//! expected sequence number; only a *verified* source (one that has
//! delivered a frame of the stream in order, see `reorder::Sources`)
//! moves the stream's return address, its position by heartbeat, or the
//! window forward by force; frames at or beyond a FIN are counted as a
//! violation and never close a stream early.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::fec::Rebuilt;
use super::reorder::Origin;
use super::{extend_seq, Receiver, StreamKey, JUMP_WINDOWS};
use crate::wire::{FecRepr, Flags, FrameType, HeartbeatInfo, Repr, HEADER_LEN};

impl Receiver {
    /// Handle one parsed frame
    pub fn handle_frame(&mut self, now: Instant, from: SocketAddr, repr: Repr, payload: &[u8]) {
        self.stats.frames += 1;
        self.stats.work += 1;
        let key = StreamKey {
            session: repr.session,
            stream: repr.stream,
        };
        match repr.frame_type {
            FrameType::Data | FrameType::Heartbeat => {}
            FrameType::Nack => {
                self.overhear_nack(now, key, repr.seq, payload);
                return;
            }
            FrameType::Fec if self.config.fec => {
                self.earn(now, from, payload.len());
                self.handle_fec(now, key, repr.seq, payload);
                self.rearm(key);
                return;
            }
            _ => {
                self.stats.unknown_type += 1;
                return;
            }
        }
        self.earn(now, from, payload.len());
        if repr.frame_type == FrameType::Heartbeat && !self.streams.contains_key(&key) {
            if let Some(t) = HeartbeatInfo::parse(payload).and_then(|h| h.token) {
                if let Some(c) = self.closed.get_mut(&key) {
                    // a closed stream's sender waiting for the end to be
                    // confirmed: the confirmation returns its newest token
                    c.token = Some(t);
                } else {
                    self.note_early_token(key, from, t);
                }
            }
        }
        if self.streams.contains_key(&key) {
            self.count_frame(now, key);
        } else if !self.open_or_refuse(now, from, key, &repr) {
            return;
        }
        if repr.frame_type == FrameType::Heartbeat {
            self.on_heartbeat(now, from, key, &repr, payload);
        } else {
            self.on_data(now, from, key, &repr, payload);
        }
        self.rearm(key);
    }

    /// Remember the echo token of a heartbeat for a stream not open yet
    fn note_early_token(&mut self, key: StreamKey, from: SocketAddr, token: u64) {
        if self.early_tokens.insert(key, (from, token)).is_none() {
            self.early_order.push_back(key);
            while self.early_order.len() > super::EARLY_TOKENS {
                if let Some(old) = self.early_order.pop_front() {
                    self.early_tokens.remove(&old);
                }
            }
        }
    }

    fn earn(&mut self, now: Instant, from: SocketAddr, payload_len: usize) {
        let mut work = 0;
        self.credit
            .earn(now, from, HEADER_LEN + payload_len, &mut work);
        self.stats.work += work;
    }

    fn jump(&self) -> u64 {
        JUMP_WINDOWS * self.config.reorder_window as u64
    }

    /// A DATA frame of a verified source at `seq`, too far ahead:
    /// remember the lowest such sequence number, and since when (a sender
    /// that really jumped, after a partition or a stall, keeps sending
    /// there and nothing closer; a forged frame among live traffic is
    /// forgotten at the next frame in range)
    fn note_far(&mut self, now: Instant, key: StreamKey, seq: u64) {
        if let Some(s) = self.streams.get_mut(&key) {
            s.last_active = now;
            s.far = Some(match s.far {
                Some((low, since)) => (low.min(seq), since),
                None => (seq, now),
            });
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: StreamKey,
        repr: &Repr,
        payload: &[u8],
    ) {
        let window = self.config.reorder_window as u64;
        let jump = self.jump();
        let listener = self.listener;
        // frames below a joining stream's start are noticed missing now
        let lowers = self.streams.get(&key).is_some_and(|s| {
            s.joining.is_some() && extend_seq(repr.seq, s.next).is_some_and(|q| q < s.next)
        });
        let ask_after = if lowers {
            self.ask_after(now, key)
        } else {
            now
        };
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let verified = stream.sources.contains(from);
        let Some(seq) = extend_seq(repr.seq, stream.next) else {
            self.stats.out_of_range += 1;
            return;
        };
        if stream.joining.is_some() && seq < stream.next {
            // joining: start at the lowest frame seen (retransmissions
            // answer someone else's NACK: they do not move the start)
            let span = stream.high.max(seq + 1) - seq;
            if repr.flags.contains(Flags::RETRANSMIT) || span > window {
                self.stats.out_of_range += 1;
                return;
            }
            stream.lower_start(seq, now, ask_after);
        }
        let opens = repr.flags.contains(Flags::OPEN)
            && !repr.flags.contains(Flags::RETRANSMIT)
            && repr.seq == 0;
        // its OPEN frame arrived: the stream starts here, no need to wait
        let opened = opens && stream.joining.is_some() && seq == stream.next;
        if seq >= stream.next + jump {
            self.stats.too_far += 1;
            if verified && stream.end.is_none() {
                self.note_far(now, key, seq);
            }
            return;
        }
        if stream.joining.is_some() && seq >= stream.next + window {
            // the window is full: the hold ends here
            self.end_join(now, key);
            return self.on_data(now, from, key, repr, payload);
        }
        if stream.end.is_some_and(|end| seq >= end) {
            if verified {
                // the stream's own source goes on: that FIN was not its end
                stream.end = None;
                stream.stats.end = None;
                stream.finished = None;
                self.stats.fin_refused += 1;
            } else {
                stream.stats.beyond_fin += 1;
                stream.beyond_at = Some(now);
                self.stats.beyond_fin += 1;
                self.stats.out_of_range += 1;
                return;
            }
        }
        if seq >= stream.next + window && !verified {
            // only the stream's own source may force the window forward
            self.stats.too_far += 1;
            return;
        }
        stream.last_active = now;
        stream.since_window = stream.since_window.saturating_add(1);
        let fresh = seq == stream.next && stream.ring.front().is_none_or(Option::is_none);
        if fresh {
            // in order as it arrived: this source delivers the stream
            stream.sources.add(from);
            stream.progress_at = Some(now);
        }
        let verified = verified || fresh;
        if verified {
            stream.from = from;
            stream.listener = listener;
        }
        let mut rebuilt = Vec::new();
        if self.config.fec && repr.flags.contains(Flags::FEC) {
            self.fec
                .on_source(key, seq, repr.flags, payload, &mut rebuilt);
        }
        if opened {
            self.end_join(now, key);
        }
        self.accept_data(now, key, seq, repr.flags, payload, Origin::Received);
        self.feed_rebuilt(now, key, rebuilt);
    }

    fn on_heartbeat(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: StreamKey,
        repr: &Repr,
        payload: &[u8],
    ) {
        let jump = self.jump();
        let listener = self.listener;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        stream.last_active = now;
        if !stream.sources.contains(from) {
            if from == stream.from {
                // where its data comes from: the echo token may be taken
                // (the position may not, until the source is verified)
                if let Some(t) = HeartbeatInfo::parse(payload).and_then(|h| h.token) {
                    stream.token = Some(t);
                }
            }
            // keeps the stream alive, but says nothing about its position
            self.stats.unverified_heartbeats += 1;
            self.settle(now, key);
            return;
        }
        stream.from = from;
        stream.listener = listener;
        if let Some(t) = HeartbeatInfo::parse(payload).and_then(|h| h.token) {
            stream.token = Some(t);
        }
        // seq is the next sequence number the sender will use; with FIN
        // it is also the end of the stream
        let Some(h) = extend_seq(repr.seq, stream.next) else {
            self.stats.out_of_range += 1;
            return;
        };
        if stream.end.is_some_and(|end| h > end) {
            stream.stats.beyond_fin += 1;
            stream.beyond_at = Some(now);
            self.stats.beyond_fin += 1;
            self.stats.out_of_range += 1;
            return;
        }
        if h > stream.next + jump {
            // only DATA far ahead makes the stream follow (see `note_far`)
            self.stats.too_far += 1;
            return;
        }
        let mut fin = repr.flags.contains(Flags::FIN);
        if fin && h < stream.data_high {
            self.stats.fin_refused += 1;
            fin = false;
        }
        // a sender held back by a lost WINDOW frame pokes with heartbeats
        stream.poked = Some(h);
        let raise = h > stream.high;
        let ask_after = if raise { self.ask_after(now, key) } else { now };
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if raise {
            stream.raise_high(h, now, ask_after);
        } else {
            stream.lower_high(h);
        }
        if let Some(b) = payload.get(8..16) {
            let mut o = [0u8; 8];
            o.copy_from_slice(b);
            stream.offset_at(h, u64::from_be_bytes(o));
        }
        if fin && stream.end.is_none() && h >= stream.next {
            stream.set_end(h);
        }
        self.settle(now, key);
    }

    /// An FEC frame of block `base` (wire sequence number): hand it to the
    /// decoder and feed what it rebuilds as if it had arrived
    fn handle_fec(&mut self, now: Instant, key: StreamKey, base: u32, payload: &[u8]) {
        if self.closed.contains_key(&key) {
            self.stats.after_close += 1;
            return;
        }
        let Ok((fec, symbol)) = FecRepr::parse(payload) else {
            self.stats.fec_invalid += 1;
            return;
        };
        let jump = self.jump();
        // FEC frames never open a stream: they follow DATA frames
        let Some(stream) = self.streams.get_mut(&key) else {
            self.stats.fec_unknown_stream += 1;
            return;
        };
        let Some(base) = extend_seq(base, stream.next) else {
            self.stats.out_of_range += 1;
            return;
        };
        if base > stream.next + jump {
            self.stats.too_far += 1;
            return;
        }
        stream.last_active = now;
        let mut rebuilt = Vec::new();
        self.fec.on_repair(key, base, fec, symbol, &mut rebuilt);
        self.feed_rebuilt(now, key, rebuilt);
    }

    fn feed_rebuilt(&mut self, now: Instant, key: StreamKey, rebuilt: Vec<Rebuilt>) {
        let jump = self.jump();
        for (seq, flags, payload) in rebuilt {
            self.stats.work += 1;
            let Some(stream) = self.streams.get(&key) else {
                return;
            };
            if seq >= stream.next + jump {
                continue;
            }
            self.accept_data(now, key, seq, flags, &payload, Origin::Rebuilt);
        }
    }
}
