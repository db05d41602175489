//! The stream table: admission of new streams, eviction, closing

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::reorder::Stream;
use super::{CloseReason, Event, Receiver, StreamKey, StreamStats};

/// Streams idle for this long may be evicted when the stream table is full
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);

impl Receiver {
    /// Create a stream for `key`; false if the table is full
    pub(super) fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: StreamKey,
        seq: u32,
    ) -> bool {
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

    pub(super) fn close(&mut self, key: StreamKey, reason: CloseReason) {
        self.fec.close(key);
        if let Some(stream) = self.streams.remove(&key) {
            for buf in stream.ring.into_iter().flatten() {
                self.buffered_bytes -= buf.len();
            }
            self.stats.streams_closed += 1;
            if self.closed_order.len() >= self.config.max_streams {
                if let Some(old) = self.closed_order.pop_front() {
                    self.closed.remove(&old);
                }
            }
            self.closed.insert(key);
            self.closed_order.push_back(key);
            self.events.push_back(Event::Closed {
                key,
                reason,
                stats: stream.stats,
            });
        }
    }
}
