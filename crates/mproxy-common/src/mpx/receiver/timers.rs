//! Timers: after each change a stream's next deadline (join hold, NACK
//! check, window refresh, gap timeout, far-ahead resync, deferred close,
//! idle) goes into one heap, so finding what is due costs a logarithm,
//! not a walk over every stream
//!
//! A stream's heap entries only ever get earlier (`armed` is its earliest
//! one); a later deadline waits for the armed entry to fire and is set
//! then. Stale entries are skipped when they come up, and the heap is
//! rebuilt when it holds more than a few entries per stream.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::reorder::Stream;
use super::window::{WINDOW_ACTIVE, WINDOW_REFRESH};
use super::{CloseReason, Receiver, StreamKey};

impl Receiver {
    /// After a change: deliver what is ready, close on FIN, manage the
    /// gap timer and NACK checks, advertise the window
    pub(super) fn settle(&mut self, now: Instant, key: StreamKey) {
        self.drain_ready(key);
        let nack = self.config.nack;
        let delay = self.config.nack_delay;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        stream.settle_offsets();
        if stream.joining.is_none() {
            while stream.holes.len() >= 2 && stream.holes[1].start <= stream.next {
                stream.holes.pop_front();
            }
            if stream.finished.is_none() && stream.end.is_some_and(|end| stream.next >= end) {
                // everything up to the FIN is in: confirm it now, close later
                stream.finished = Some(now);
                let (end, listener, to) = (stream.next, stream.listener, stream.from);
                self.confirm_end(key, end, listener, to);
            }
            if self.closable(now, key) {
                self.close(key, CloseReason::Fin);
                return;
            }
            let Some(stream) = self.streams.get_mut(&key) else {
                return;
            };
            if stream.waiting() {
                if stream.nack.progress(stream.next) && nack {
                    // the head moved: fresh tries for what is missing now
                    stream.nack.check_by(now + delay);
                }
                // the frame at `next` has been awaited since its hole was
                // noticed (each gap times out on its own clock), or since
                // a frame last arrived at the head (frames still arriving
                // in order are never given up on)
                let noticed = stream
                    .holes
                    .front()
                    .filter(|h| h.start <= stream.next)
                    .map(|h| h.noticed)
                    .or(stream.gap_since)
                    .unwrap_or(now);
                stream.gap_since = Some(noticed.max(stream.progress_at.unwrap_or(noticed)));
            } else {
                stream.gap_since = None;
                stream.holes.clear();
                stream.nack.clear();
            }
        }
        if self.config.window {
            self.advertise(now, key, false);
        }
    }

    /// The stream reached its FIN and lingered long enough: a gap
    /// timeout after the end was reached and after the last frame beyond it
    fn closable(&self, now: Instant, key: StreamKey) -> bool {
        self.streams.get(&key).is_some_and(|s| {
            s.finished.is_some_and(|f| {
                let since = s.beyond_at.map_or(f, |b| b.max(f));
                // frames beyond keep it at most an idle timeout
                now >= since + self.gap_timeout_for(s.nack.group)
                    || now >= f + self.config.idle_timeout
            })
        })
    }

    /// When something is next due for stream `s`
    fn deadline(&self, s: &Stream) -> Instant {
        let gap = self.gap_timeout_for(s.nack.group);
        let mut d = s.last_active + self.config.idle_timeout;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                d = d.min(t);
            }
        };
        if s.joining.is_some() {
            // holding: nothing else is due until the hold ends
            at(s.joining);
            return d;
        }
        at(s.gap_since.map(|g| g + gap));
        if self.config.nack {
            at(s.nack.at);
        }
        if self.config.window && s.since_window > 0 {
            // refreshes are due while the stream is active
            at(s.window_at
                .map(|t| t + WINDOW_REFRESH)
                .filter(|t| *t < s.last_active + WINDOW_ACTIVE));
        }
        at(s.far.map(|(_, since)| since + gap));
        if let Some(f) = s.finished {
            let linger = s.beyond_at.map_or(f, |b| b.max(f)) + gap;
            at(Some(linger.min(f + self.config.idle_timeout)));
        }
        d
    }

    /// Put `key`'s next deadline in the heap if it is earlier than the
    /// one armed
    pub(super) fn rearm(&mut self, key: StreamKey) {
        let Some(s) = self.streams.get(&key) else {
            return;
        };
        let d = self.deadline(s);
        if s.armed.is_some_and(|a| a <= d) {
            return;
        }
        if let Some(s) = self.streams.get_mut(&key) {
            s.armed = Some(d);
        }
        self.timers.push(Reverse((d, key)));
        if self.timers.len() > 4 * self.streams.len() + 1024 {
            self.stats.work += self.timers.len() as u64;
            self.timers = self
                .streams
                .iter()
                .filter_map(|(k, s)| s.armed.map(|a| Reverse((a, *k))))
                .collect();
        }
    }

    /// When [`Receiver::handle_timeout`] should next be called
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Do what is due: join holds that end, NACKs, window refreshes,
    /// gaps that waited their timeout, streams far ahead, deferred
    /// closes, idle streams
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, key))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.stats.work += 1;
            let Some(s) = self.streams.get_mut(&key) else {
                continue;
            };
            if s.armed != Some(t) {
                continue;
            }
            s.armed = None;
            self.on_timer(now, key);
            // what is still due waits for the next call
            if let Some(s) = self.streams.get(&key) {
                let d = self.deadline(s).max(now + Duration::from_micros(1));
                if let Some(s) = self.streams.get_mut(&key) {
                    s.armed = Some(d);
                }
                self.timers.push(Reverse((d, key)));
            }
        }
    }

    fn on_timer(&mut self, now: Instant, key: StreamKey) {
        let Some(s) = self.streams.get(&key) else {
            return;
        };
        let gap = self.gap_timeout_for(s.nack.group);
        if s.joining.is_some_and(|j| now >= j) {
            self.end_join(now, key);
        }
        let Some(s) = self.streams.get(&key) else {
            return;
        };
        if self.config.nack && s.joining.is_none() && s.nack.at.is_some_and(|a| now >= a) {
            self.send_nack(now, key);
        }
        let Some(s) = self.streams.get(&key) else {
            return;
        };
        if self.config.window && now < s.last_active + WINDOW_ACTIVE {
            self.advertise(now, key, true);
        }
        let Some(s) = self.streams.get(&key) else {
            return;
        };
        if now >= s.last_active + self.config.idle_timeout {
            self.flush_and_close(key, CloseReason::Idle);
            return;
        }
        if self.closable(now, key) {
            self.close(key, CloseReason::Fin);
            return;
        }
        if let Some((low, _)) = s.far.filter(|(_, since)| now >= *since + gap) {
            // the sender is that far ahead: follow it, counting the rest lost
            if let Some(s) = self.streams.get_mut(&key) {
                s.far = None;
            }
            self.skip_to(key, low);
            if let Some(s) = self.streams.get_mut(&key) {
                s.gap_since = None;
            }
            self.settle(now, key);
            return;
        }
        if s.joining.is_none() && s.gap_since.is_some_and(|g| now >= g + gap) {
            // skip the first gap: up to the first buffered frame, or to
            // `high` if the missing frames are the tail
            let mut work = 0;
            let target = s.first_buffered(&mut work).unwrap_or(s.high);
            self.stats.work += work;
            self.skip_to(key, target);
            if let Some(s) = self.streams.get_mut(&key) {
                s.gap_since = None;
                s.progress_at = None;
            }
            self.settle(now, key);
        }
    }
}
