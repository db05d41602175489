//! Flow control: WINDOW advertisements

use std::time::{Duration, Instant};

use super::{Receiver, StreamKey, Transmit};
use crate::wire::{Flags, FrameType, Repr, WindowAdvert, HEADER_LEN, WINDOW_LEN};

/// With flow control, re-advertise a stream's window at least this often
/// (a sender held back by a lost WINDOW frame also pokes with a heartbeat,
/// which is answered at once)...
pub(super) const WINDOW_REFRESH: Duration = Duration::from_millis(500);
/// ...while it had a frame this recently
pub(super) const WINDOW_ACTIVE: Duration = Duration::from_secs(2);

impl Receiver {
    /// Queue a WINDOW frame for `key` if it is due: the head moved a
    /// quarter window since the last one, none was sent yet, or
    /// `refresh` and [`WINDOW_REFRESH`] has passed
    pub(super) fn advertise(&mut self, now: Instant, key: StreamKey, refresh: bool) {
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
        let mut bytes = vec![0u8; HEADER_LEN + WINDOW_LEN];
        if repr.emit_with_payload(&mut bytes, &advert.emit()).is_ok() {
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
}
