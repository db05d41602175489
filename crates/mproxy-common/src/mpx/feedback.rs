//! Receiver side of path feedback: what arrived over each path, reported
//! back to the sender at a bounded rate (sans-IO)

use std::collections::HashMap;

use super::keyed::KeyedState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{
    FeedbackReport, Flags, FrameType, HeartbeatInfo, Repr, FEEDBACK_LEN, HEADER_LEN,
};

/// One path as a receiver sees it: its receiving socket and the sender's address
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathKey {
    /// Index of the receiving socket
    pub listener: usize,
    /// Source address of the sender's frames (where reports go)
    pub from: SocketAddr,
}

#[derive(Debug)]
struct Entry {
    frames: u64,
    bytes: u64,
    echo_ts_us: u64,
    echo_at: Option<Instant>,
    /// The sender's newest echo token, returned in reports
    token: Option<u64>,
    /// When the sender last probed this path (a heartbeat flagged PROBE):
    /// reports go only to senders that want them
    probed: Option<Instant>,
    last_report: Option<Instant>,
    last_frame: Instant,
    reports: u32,
    dirty: bool,
}

/// Counts frames per (path, session) and produces FEEDBACK frames
///
/// At most one report per path and session per `interval`, and only when
/// frames arrived since the previous one, so a silent sender stops getting
/// reports. Entries idle for `expire` are dropped; the table holds at most
/// `max_entries` (oldest evicted).
#[derive(Debug)]
pub struct FeedbackTracker {
    entries: HashMap<(PathKey, u64), Entry, KeyedState>,
    interval: Duration,
    expire: Duration,
    max_entries: usize,
}

impl FeedbackTracker {
    /// A tracker reporting at most every `interval` per path and session
    pub fn new(interval: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::default(),
            interval,
            expire: Duration::from_secs(10),
            max_entries: max_entries.max(1),
        }
    }

    /// Account for a valid frame received on `path`
    pub fn on_frame(&mut self, now: Instant, path: PathKey, repr: &Repr, payload: &[u8]) {
        if !matches!(repr.frame_type, FrameType::Data | FrameType::Heartbeat) {
            return;
        }
        let key = (path, repr.session);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_frame)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        let e = self.entries.entry(key).or_insert(Entry {
            frames: 0,
            bytes: 0,
            echo_ts_us: 0,
            echo_at: None,
            token: None,
            probed: None,
            last_report: None,
            last_frame: now,
            reports: 0,
            dirty: false,
        });
        e.frames += 1;
        e.bytes += payload.len() as u64;
        e.last_frame = now;
        e.dirty = true;
        if let (FrameType::Heartbeat, Some(h)) = (repr.frame_type, HeartbeatInfo::parse(payload)) {
            e.echo_ts_us = h.ts_us;
            e.echo_at = Some(now);
            if h.token.is_some() {
                e.token = h.token;
            }
            if repr.flags.contains(Flags::PROBE) {
                e.probed = Some(now);
            }
        }
    }

    /// The next report due at `now`, written into `buf` (at least
    /// `HEADER_LEN + FEEDBACK_LEN` bytes): where to send it and its length
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(PathKey, usize)> {
        let expire = self.expire;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_frame) < expire);
        let interval = self.interval;
        let (&(path, session), e) = self.entries.iter_mut().find(|(_, e)| {
            e.dirty
                && e.probed
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBED_FOR)
                && e.last_report
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
        })?;
        let report = FeedbackReport {
            echo_ts_us: e.echo_ts_us,
            echo_delay_us: e.echo_at.map_or(0, |t| {
                now.saturating_duration_since(t)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32
            }),
            frames: e.frames,
            bytes: e.bytes,
        };
        let repr = Repr {
            frame_type: FrameType::Feedback,
            flags: Flags::NONE,
            session,
            stream: 0,
            seq: e.reports,
        };
        e.reports = e.reports.wrapping_add(1);
        e.last_report = Some(now);
        e.dirty = false;
        let mut payload = [0u8; FEEDBACK_LEN + 8];
        payload[..FEEDBACK_LEN].copy_from_slice(&report.to_bytes());
        let plen = match e.token {
            Some(t) => {
                payload[FEEDBACK_LEN..].copy_from_slice(&t.to_be_bytes());
                FEEDBACK_LEN + 8
            }
            None => FEEDBACK_LEN,
        };
        let len = repr.emit_with_payload(buf, &payload[..plen]).ok()?;
        Some((path, len))
    }

    /// When a report may next be due
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| e.dirty && e.probed.is_some())
            .map(|e| e.last_report.map_or(e.last_frame, |t| t + self.interval))
            .min()
    }

    /// Paths and sessions currently tracked
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is tracked
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A path is reported on while its sender probed it this recently
const PROBED_FOR: Duration = Duration::from_secs(2);

/// Buffer size [`FeedbackTracker::poll_transmit`] needs
pub const REPORT_LEN: usize = HEADER_LEN + FEEDBACK_LEN + 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram};

    fn data(session: u64) -> Repr {
        Repr {
            frame_type: FrameType::Data,
            flags: Flags::NONE,
            session,
            stream: 1,
            seq: 0,
        }
    }

    #[test]
    fn test_reports_are_rate_limited_and_stop_when_silent() {
        let t0 = Instant::now();
        let mut t = FeedbackTracker::new(Duration::from_millis(100), 16);
        let path = PathKey {
            listener: 0,
            from: "192.0.2.1:5000".parse().unwrap(),
        };
        let mut buf = [0u8; REPORT_LEN];
        for i in 0..10 {
            t.on_frame(t0 + Duration::from_millis(i), path, &data(9), &[0u8; 100]);
        }
        // a single-path sender's plain heartbeat asks for no report
        let plain = Repr {
            frame_type: FrameType::Heartbeat,
            ..data(9)
        };
        t.on_frame(t0, path, &plain, &1u64.to_be_bytes());
        assert!(t.poll_transmit(t0, &mut buf).is_none());
        // a probe (multipath) does
        let hb = Repr {
            frame_type: FrameType::Heartbeat,
            flags: Flags::PROBE,
            ..data(9)
        };
        t.on_frame(
            t0 + Duration::from_millis(10),
            path,
            &hb,
            &777u64.to_be_bytes(),
        );
        let (to, len) = t
            .poll_transmit(t0 + Duration::from_millis(20), &mut buf)
            .unwrap();
        assert_eq!(to, path);
        let Datagram::Mpx(r, p) = classify(&buf[..len]) else {
            panic!()
        };
        assert_eq!(r.frame_type, FrameType::Feedback);
        assert_eq!(r.session, 9);
        let rep = FeedbackReport::parse(p).unwrap();
        assert_eq!(
            (rep.frames, rep.bytes, rep.echo_ts_us, rep.echo_delay_us),
            (12, 1016, 777, 10_000)
        );
        // nothing new: no report; new frames: not before the interval
        assert!(t
            .poll_transmit(t0 + Duration::from_millis(200), &mut buf)
            .is_none());
        t.on_frame(t0 + Duration::from_millis(30), path, &data(9), &[0u8; 1]);
        assert!(t
            .poll_transmit(t0 + Duration::from_millis(60), &mut buf)
            .is_none());
        assert!(t
            .poll_transmit(t0 + Duration::from_millis(120), &mut buf)
            .is_some());
        // silent sender: entry expires
        assert!(t
            .poll_transmit(t0 + Duration::from_secs(11), &mut buf)
            .is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn test_table_is_bounded() {
        let t0 = Instant::now();
        let mut t = FeedbackTracker::new(Duration::from_millis(100), 4);
        for i in 0..100u64 {
            let path = PathKey {
                listener: 0,
                from: SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16)),
            };
            t.on_frame(t0, path, &data(i), &[]);
            assert!(t.len() <= 4);
        }
    }
}
