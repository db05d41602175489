//! Flow control: WINDOW advertisements

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Receiver, StreamKey};
use crate::wire::{Flags, FrameType, Repr, WindowAdvert, HEADER_LEN, WINDOW_LEN};

/// With flow control, re-advertise a stream's window at least this often
/// (a sender held back by a lost WINDOW frame also pokes with a heartbeat,
/// which is answered at once)...
pub(super) const WINDOW_REFRESH: Duration = Duration::from_millis(500);
/// ...while it had a frame this recently, and one since the last advert
pub(super) const WINDOW_ACTIVE: Duration = Duration::from_secs(2);

impl Receiver {
    /// Frames advertised
    fn window_frames(&self) -> u64 {
        let frames = match self.config.window_frames {
            0 => self.config.reorder_window,
            n => n.min(self.config.reorder_window),
        };
        frames as u64
    }

    /// A WINDOW frame for `key` saying everything before `next` was
    /// handled and `others` bytes are held by other streams
    fn window_frame(&self, key: StreamKey, next: u64, others: usize) -> Option<Vec<u8>> {
        let bytes = self
            .config
            .reorder_bytes
            .min(self.config.memory_limit.saturating_sub(others));
        let advert = WindowAdvert {
            frames: u32::try_from(self.window_frames()).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            receiver: self.id,
        };
        let repr = Repr {
            frame_type: FrameType::Window,
            flags: Flags::NONE,
            session: key.session,
            stream: key.stream,
            seq: next as u32,
        };
        // after the version-1 advert: the echo token (0: none yet) and the
        // frames given up so far, so a confirmed end says what was lost
        let (token, lost) = match self.streams.get(&key) {
            Some(s) => (s.token, s.stats.lost),
            None => self
                .closed
                .get(&key)
                .map_or((None, 0), |c| (c.token, c.lost)),
        };
        let mut payload = [0u8; WINDOW_LEN + 16];
        payload[..WINDOW_LEN].copy_from_slice(&advert.emit());
        payload[WINDOW_LEN..WINDOW_LEN + 8].copy_from_slice(&token.unwrap_or(0).to_be_bytes());
        payload[WINDOW_LEN + 8..].copy_from_slice(&lost.to_be_bytes());
        let mut out = vec![0u8; HEADER_LEN + payload.len()];
        repr.emit_with_payload(&mut out, &payload).ok()?;
        Some(out)
    }

    /// Queue a WINDOW frame for `key` if it is due. Necessary: none was
    /// sent yet, the head moved a quarter window since the last one, or a
    /// heartbeat shows the sender has used half of the last one (it may
    /// be held back). Useful, sent only while the destination has credit
    /// to spare (see `credit`): the answer to any other heartbeat, and
    /// with `refresh` one every [`WINDOW_REFRESH`] while DATA arrives.
    pub(super) fn advertise(&mut self, now: Instant, key: StreamKey, refresh: bool) {
        let window_bytes = self.config.reorder_bytes as u64;
        let frames = self.window_frames();
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        // the window the sender can use: the frame window, or fewer when
        // its frames are large (it takes the smaller of frames and bytes /
        // its payload size); the quarter and half rules count in these
        let payload = stream
            .stats
            .bytes
            .checked_div(stream.stats.datagrams)
            .unwrap_or(1)
            .max(1);
        let frames = frames.min((window_bytes / payload).max(1));
        let poke = stream.poked.take();
        let moved = stream.next.saturating_sub(stream.window_next) >= (frames / 4).max(1);
        let held = poke.is_some_and(|h| h >= stream.window_next + frames / 2);
        let necessary = moved || held || stream.window_at.is_none();
        let stale = refresh
            && stream.since_window > 0
            && stream.window_at.is_none_or(|t| now >= t + WINDOW_REFRESH);
        if !(necessary || stale || poke.is_some()) {
            return;
        }
        let (next, to, listener) = (stream.next, stream.from, stream.listener);
        let others = self.buffered_bytes.saturating_sub(stream.buffered_bytes);
        let Some(bytes) = self.window_frame(key, next, others) else {
            return;
        };
        let reserve = u32::from(!necessary);
        let sent = self.queue_reply(FrameType::Window, listener, to, bytes, reserve);
        if let Some(stream) = self.streams.get_mut(&key) {
            if sent {
                stream.window_next = next;
                stream.window_at = Some(now);
                stream.since_window = 0;
            } else if stale {
                // a refresh not owed is skipped, not retried at once
                stream.window_at = Some(now);
            }
        }
    }

    /// The stream ended at `end` (its FIN): confirm it with a WINDOW at
    /// `end`, so the sender knows everything arrived or was given up
    pub(super) fn confirm_end(
        &mut self,
        key: StreamKey,
        end: u64,
        listener: usize,
        to: SocketAddr,
    ) {
        if !self.config.window {
            return;
        }
        let others = self.buffered_bytes;
        if let Some(bytes) = self.window_frame(key, end, others) {
            self.queue_reply(FrameType::Window, listener, to, bytes, 0);
        }
    }
}
