//! Repair requests: NACK scheduling, overheard-NACK suppression, the gap timeout

use std::time::{Duration, Instant};

use super::{extend_seq, Receiver, StreamKey, Transmit};
use crate::wire::{
    emit_nack, parse_nack, Flags, FrameType, NackRange, Repr, HEADER_LEN, NACK_MAX_RANGES,
    NACK_RANGE_LEN,
};

impl Receiver {
    /// Another receiver's NACK for a stream we also miss frames of: if it
    /// asks for everything we miss, ours is not needed now
    pub(super) fn overhear_nack(&mut self, now: Instant, key: StreamKey, payload: &[u8]) {
        let interval = self.config.nack_interval;
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        if stream.nack_at.is_none() {
            return;
        }
        let asked: Vec<(u64, u64)> = parse_nack(payload)
            .filter_map(|r| Some((extend_seq(r.start, stream.next)?, u64::from(r.count))))
            .collect();
        let covered = stream.missing(NACK_MAX_RANGES).iter().all(|&(first, n)| {
            (first..first + n).all(|q| asked.iter().any(|&(a, c)| (a..a + c).contains(&q)))
        });
        if covered {
            stream.nack_at = Some(now + interval);
            self.stats.nacks_suppressed += 1;
        }
    }

    /// Build and queue NACKs that are due
    ///
    /// A frame is asked for once it has been seen missing at two checks
    /// `nack_delay` apart (so mere reordering is not mistaken for loss),
    /// and asked for again every `nack_interval` (at most `nack_tries`
    /// times while the head of the stream makes no progress).
    pub(super) fn send_nacks(&mut self, now: Instant) {
        let tries = self.config.nack_tries;
        let interval = self.config.nack_interval;
        let delay = self.config.nack_delay;
        for (key, stream) in self.streams.iter_mut() {
            if stream.nack_at.is_none_or(|t| now < t) {
                continue;
            }
            let missing = stream.missing(NACK_MAX_RANGES);
            let reask =
                stream.nacked_at.is_some_and(|t| now >= t + interval) && stream.nack_tries < tries;
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            let mut asked_new_upto = stream.nacked_upto;
            for &(first, n) in &missing {
                let end = first + n;
                // asked before: again only when it is time to re-ask
                let old_end = end.min(stream.nacked_upto);
                if reask && first < old_end {
                    ranges.push((first, old_end - first));
                }
                // seen missing at the previous check, never asked: ask now
                let new_start = first.max(stream.nacked_upto);
                let new_end = end.min(stream.seen_upto);
                if new_start < new_end {
                    ranges.push((new_start, new_end - new_start));
                    asked_new_upto = asked_new_upto.max(new_end);
                }
            }
            stream.seen_upto = missing.last().map_or(stream.next, |&(f, n)| f + n);
            stream.nack_at = (!missing.is_empty()).then_some(now + delay);
            if ranges.is_empty() {
                continue;
            }
            if reask || stream.nacked_at.is_none() {
                stream.nacked_at = Some(now);
            }
            if reask {
                stream.nack_tries += 1;
            }
            stream.nacked_upto = asked_new_upto;
            let mut wire = Vec::with_capacity(ranges.len());
            for (mut first, mut n) in ranges {
                while n > 0 && wire.len() < NACK_MAX_RANGES {
                    let c = n.min(u64::from(u16::MAX));
                    wire.push(NackRange {
                        start: first as u32,
                        count: c as u16,
                    });
                    first += c;
                    n -= c;
                }
            }
            let repr = Repr {
                frame_type: FrameType::Nack,
                flags: Flags::NONE,
                session: key.session,
                stream: key.stream,
                seq: stream.next as u32,
            };
            let mut payload = Vec::with_capacity(wire.len() * NACK_RANGE_LEN);
            emit_nack(&wire, &mut payload);
            let mut bytes = vec![0u8; HEADER_LEN + payload.len()];
            if repr.emit_with_payload(&mut bytes, &payload).is_ok() {
                self.stats.nacks_sent += 1;
                self.transmits.push_back(Transmit {
                    frame_type: FrameType::Nack,
                    listener: stream.listener,
                    to: stream.from,
                    bytes,
                });
            }
        }
    }

    /// How long a gap is waited for before it is skipped and counted as
    /// lost: `reorder_timeout`, but with NACKs on never less than the
    /// time every try needs (twice `nack_delay`, for the jitter, plus
    /// `nack_tries` x `nack_interval`), so the last request is not asked
    /// in vain for a gap already given up
    #[must_use]
    pub fn gap_timeout(&self) -> Duration {
        let c = &self.config;
        if c.nack {
            let tries = c.nack_interval.saturating_mul(c.nack_tries);
            c.reorder_timeout
                .max(c.nack_delay.saturating_mul(2).saturating_add(tries))
        } else {
            c.reorder_timeout
        }
    }
}
