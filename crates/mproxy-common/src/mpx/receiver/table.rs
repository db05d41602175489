//! The stream table: admission of new streams, eviction, closing
//!
//! At most `max_streams` streams are live. While there is room a new
//! stream is admitted at once. When the table is full:
//!
//! - streams that have had fewer than [`ESTABLISHED`] frames are on
//!   *probation*, ordered by frames and then age: a newcomer with at least
//!   as many frames as the first of them takes its place. A flood of
//!   one-frame sessions therefore only ever displaces other one-frame
//!   sessions, and a stream that has sent a second frame is safe from it;
//! - otherwise a newcomer displaces the established stream with the
//!   fewest frames over the last second or two if it has sent more than
//!   that one over the same time (or if that one has been idle for 2 s),
//!   so a new stream that keeps sending gets in within a second even
//!   while a thousand sessions are each kept alive with a frame a second;
//! - else its frames are refused and counted. Refused newcomers are
//!   remembered in a small fixed table ([`WAITING`] slots, two per key,
//!   weakest replaced first) with their frame counts and whether their
//!   OPEN frame was among them, so when one gets in it starts at 0 and
//!   asks for what it missed.
//!
//! Closed streams are remembered (at most `max_streams`, oldest first):
//! a stream closed by its FIN or at shutdown never reopens; one closed
//! idle or evicted reopens where it stopped.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::reorder::Stream;
use super::{extend_seq, CloseReason, Event, Join, Receiver, StreamKey};
use crate::wire::{Flags, FrameType, Repr};

/// Streams idle for this long may be evicted when the stream table is full
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);
/// Frames after which a stream is no longer on probation
pub(super) const ESTABLISHED: u32 = 8;
/// Slots of the table of refused newcomers
pub(super) const WAITING: usize = 2048;
/// Established streams considered for displacement per refresh
const CANDIDATES: usize = 32;
/// Candidates are refreshed at most this often
const CANDIDATES_EVERY: Duration = Duration::from_millis(100);
/// Activity is counted in periods of this length
const PERIOD: Duration = Duration::from_secs(1);

/// Frames a stream (or a refused newcomer) sent: in all, and over the
/// current and the previous period
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    pub(super) frames: u32,
    /// Admission order, for ties on probation
    pub(super) order: u64,
    period: Instant,
    this: u32,
    prev: u32,
}

impl Activity {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            frames: 0,
            order: 0,
            period: now,
            this: 0,
            prev: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.period);
        if age >= PERIOD {
            self.prev = if age >= 2 * PERIOD { 0 } else { self.this };
            self.this = 0;
            self.period = now;
        }
    }

    pub(super) fn on_frame(&mut self, now: Instant) {
        self.roll(now);
        self.frames = self.frames.saturating_add(1);
        self.this = self.this.saturating_add(1);
    }

    /// Frames over the last one to two periods
    pub(super) fn score(&self, now: Instant) -> u32 {
        let mut a = *self;
        a.roll(now);
        a.this.saturating_add(a.prev)
    }
}

/// A refused newcomer
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    key: StreamKey,
    activity: Activity,
    /// Its OPEN frame arrived (and was refused)
    saw_open: bool,
    last: Instant,
}

/// A recently closed stream
#[derive(Debug, Clone, Copy)]
pub(super) struct Closed {
    reason: CloseReason,
    /// Where it stopped: a reopened stream resumes here
    next: u64,
    end: Option<u64>,
    /// For the end's confirmation: the echo token and the frames lost
    pub(super) token: Option<u64>,
    pub(super) lost: u64,
}

/// How a new stream starts
struct Start {
    first: u64,
    joining: bool,
}

impl Receiver {
    /// Handle a DATA or HEARTBEAT frame of a stream that is not live:
    /// closed, or new. True if the stream is live now.
    pub(super) fn open_or_refuse(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: StreamKey,
        repr: &Repr,
    ) -> bool {
        let fin_heartbeat =
            repr.frame_type == FrameType::Heartbeat && repr.flags.contains(Flags::FIN);
        let mut resume = None;
        if let Some(c) = self.closed.get(&key).copied() {
            match c.reason {
                CloseReason::Fin | CloseReason::Shutdown => {
                    let seq = extend_seq(repr.seq, c.next).unwrap_or(0);
                    let beyond = c.end.is_some_and(|end| match repr.frame_type {
                        FrameType::Heartbeat => seq > end,
                        _ => seq >= end,
                    });
                    if beyond {
                        self.stats.beyond_fin += 1;
                        self.stats.out_of_range += 1;
                    } else {
                        self.stats.after_close += 1;
                    }
                    if let (true, Some(end)) = (fin_heartbeat, c.end) {
                        // the sender repeats its FIN until it hears the end confirmed
                        self.confirm_end(key, end, self.listener, from);
                    }
                    return false;
                }
                CloseReason::Idle | CloseReason::Evicted => {
                    resume = Some(c.next);
                }
            }
        }
        if repr.frame_type == FrameType::Heartbeat {
            // heartbeats open nothing: a stream starts with its data, so
            // a forged heartbeat cannot set where it starts
            self.stats.orphan_heartbeats += 1;
            return false;
        }
        let waiting = self.note_waiting(now, key, repr);
        if self.streams.len() >= self.config.max_streams && !self.make_room_for(now, &waiting) {
            self.stats.streams_rejected += 1;
            return false;
        }
        self.forget_waiting(key);
        let open = repr.frame_type == FrameType::Data
            && repr.flags.contains(Flags::OPEN)
            && !repr.flags.contains(Flags::RETRANSMIT)
            && repr.seq == 0;
        // a stream met within its first seconds (its OPEN frame lost or
        // late) starts at 0 too: nobody can have written it before
        let young = repr.frame_type == FrameType::Data && repr.flags.contains(Flags::YOUNG);
        let start = match resume {
            Some(next) => Start {
                first: next,
                joining: false,
            },
            None if open || young || waiting.saw_open => Start {
                first: 0,
                joining: false,
            },
            // as far back as the window reaches, asking for the rest
            None if self.config.join == Join::Earliest => {
                let seq = u64::from(repr.seq);
                let window = self.config.reorder_window as u64;
                Start {
                    first: if seq < window { 0 } else { seq - window / 2 },
                    joining: false,
                }
            }
            None => Start {
                first: u64::from(repr.seq),
                joining: true,
            },
        };
        if resume.is_some() {
            self.closed.remove(&key);
        }
        self.order += 1;
        let mut activity = waiting.activity;
        activity.order = self.order;
        let mut stream = Stream::new(now, start.first, from, self.listener, activity);
        if let Some((src, token)) = self.early_tokens.remove(&key) {
            // the sender's opening heartbeat, from where the data comes
            if src == from {
                stream.token = Some(token);
            }
        }
        if start.joining {
            stream.joining = Some(now + self.config.reorder_timeout);
        }
        if activity.frames < ESTABLISHED {
            self.probation
                .insert((activity.frames, activity.order, key));
        }
        self.streams.insert(key, stream);
        self.stats.streams_opened += 1;
        if !start.joining {
            self.events.push_back(Event::Opened {
                key,
                from,
                first_seq: start.first,
            });
        }
        true
    }

    /// The hold of a joining stream ended: deliver from its start
    pub(super) fn end_join(&mut self, now: Instant, key: StreamKey) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.joining.take().is_none() {
            return;
        }
        let (first, from) = (stream.next, stream.from);
        self.events.push_back(Event::Opened {
            key,
            from,
            first_seq: first,
        });
        self.drain_ready(key);
        self.settle(now, key);
    }

    /// Count a frame of `key` for its admission standing
    pub(super) fn count_frame(&mut self, now: Instant, key: StreamKey) {
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let before = stream.activity;
        stream.activity.on_frame(now);
        if before.frames < ESTABLISHED {
            self.stats.work += 1;
            self.probation.remove(&(before.frames, before.order, key));
            let a = stream.activity;
            if a.frames < ESTABLISHED {
                self.probation.insert((a.frames, a.order, key));
            }
        }
    }

    /// The table is full: evict a stream to admit `newcomer`, if it
    /// deserves it more (see the module documentation)
    fn make_room_for(&mut self, now: Instant, newcomer: &Waiting) -> bool {
        let count = newcomer.activity.frames;
        if let Some(&(frames, _, victim)) = self.probation.first() {
            if count < frames {
                return false;
            }
            self.stats.streams_evicted += 1;
            self.flush_and_close(victim, CloseReason::Evicted);
            return true;
        }
        let score = newcomer.activity.score(now);
        let Some((victim, victim_score, idle)) = self.weakest(now) else {
            return false;
        };
        if score <= victim_score && idle < EVICTABLE_AFTER {
            return false;
        }
        self.candidates.retain(|k| *k != victim);
        self.stats.streams_evicted += 1;
        if idle < EVICTABLE_AFTER {
            self.stats.streams_displaced += 1;
        }
        self.flush_and_close(victim, CloseReason::Evicted);
        true
    }

    /// The established stream with the fewest recent frames: (key,
    /// frames over the last period or two, time idle)
    fn weakest(&mut self, now: Instant) -> Option<(StreamKey, u32, Duration)> {
        let stale = self
            .candidates_at
            .is_none_or(|t| now.saturating_duration_since(t) >= PERIOD);
        let may_refresh = self
            .candidates_at
            .is_none_or(|t| now.saturating_duration_since(t) >= CANDIDATES_EVERY);
        if (stale || self.candidates.is_empty()) && may_refresh {
            self.stats.work += self.streams.len() as u64;
            let mut all: Vec<(u32, StreamKey)> = self
                .streams
                .iter()
                .filter(|(_, s)| s.activity.frames >= ESTABLISHED)
                .map(|(k, s)| (s.activity.score(now), *k))
                .collect();
            if all.len() > CANDIDATES {
                all.select_nth_unstable(CANDIDATES);
                all.truncate(CANDIDATES);
            }
            all.sort_unstable();
            self.candidates = all.into_iter().map(|(_, k)| k).collect();
            self.candidates_at = Some(now);
        }
        let mut best: Option<(StreamKey, u32, Duration)> = None;
        for k in &self.candidates {
            self.stats.work += 1;
            let Some(s) = self.streams.get(k) else {
                continue;
            };
            let score = s.activity.score(now);
            let idle = now.saturating_duration_since(s.last_active);
            if best.is_none_or(|(_, b, _)| score < b) {
                best = Some((*k, score, idle));
            }
        }
        best
    }

    /// Slots of `key` in the waiting table
    fn waiting_slots(&self, key: StreamKey) -> [usize; 2] {
        let h = self.streams.hasher().hash_one(key);
        let mask = WAITING as u64 - 1;
        [(h & mask) as usize, ((h >> 32) & mask) as usize]
    }

    /// Record a frame of a newcomer; its standing so far
    fn note_waiting(&mut self, now: Instant, key: StreamKey, repr: &Repr) -> Waiting {
        let open = repr.frame_type == FrameType::Data
            && repr.flags.contains(Flags::OPEN)
            && !repr.flags.contains(Flags::RETRANSMIT)
            && repr.seq == 0;
        let slots = self.waiting_slots(key);
        if self.waiting.is_empty() {
            self.waiting = vec![None; WAITING];
        }
        self.stats.work += 2;
        let found = slots
            .into_iter()
            .find(|&i| self.waiting[i].is_some_and(|w| w.key == key));
        let slot = found.or_else(|| {
            // an empty slot, else the weaker one if it is weak or stale
            let weak = |w: &Option<Waiting>| match w {
                None => 0,
                Some(w) if now.saturating_duration_since(w.last) >= 2 * PERIOD => 0,
                Some(w) => w.activity.frames,
            };
            let i = slots
                .into_iter()
                .min_by_key(|&i| weak(&self.waiting[i]))
                .unwrap_or(slots[0]);
            (weak(&self.waiting[i]) <= 1).then_some(i)
        });
        let mut w = match slot.and_then(|i| self.waiting[i]).filter(|w| w.key == key) {
            Some(w) => w,
            None => Waiting {
                key,
                activity: Activity::new(now),
                saw_open: false,
                last: now,
            },
        };
        w.activity.on_frame(now);
        w.saw_open |= open;
        w.last = now;
        if let Some(i) = slot {
            self.waiting[i] = Some(w);
        }
        w
    }

    fn forget_waiting(&mut self, key: StreamKey) {
        if self.waiting.is_empty() {
            return;
        }
        for i in self.waiting_slots(key) {
            if self.waiting[i].is_some_and(|w| w.key == key) {
                self.waiting[i] = None;
            }
        }
    }

    /// Deliver what is buffered, count what is missing, then close
    pub(super) fn flush_and_close(&mut self, key: StreamKey, reason: CloseReason) {
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.joining = None;
            let mut target = stream.high.max(stream.next + stream.ring.len() as u64);
            if let Some(end) = stream.end {
                // nothing beyond the FIN belongs to the stream
                target = target.min(end).max(stream.next);
            }
            self.skip_to(key, target);
            self.drain_ready(key);
            if let Some(stream) = self.streams.get_mut(&key) {
                stream.settle_offsets();
            }
        }
        self.close(key, reason);
    }

    pub(super) fn close(&mut self, key: StreamKey, reason: CloseReason) {
        self.fec.close(key);
        let Some(stream) = self.streams.remove(&key) else {
            return;
        };
        let a = stream.activity;
        self.probation.remove(&(a.frames, a.order, key));
        for buf in stream.ring.iter().flatten() {
            self.buffered_bytes -= buf.len();
            if reason == CloseReason::Fin {
                self.stats.beyond_fin += 1;
            }
        }
        self.stats.streams_closed += 1;
        if self.closed_order.len() >= self.config.max_streams {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
        self.closed.insert(
            key,
            Closed {
                reason,
                next: stream.next,
                end: stream.end,
                token: stream.token,
                lost: stream.stats.lost,
            },
        );
        self.closed_order.push_back(key);
        self.events.push_back(Event::Closed {
            key,
            reason,
            stats: stream.final_stats(),
        });
    }
}
