//! Receivers' control frames, relayed back upstream to the mpx senders
//!
//! An mpx receiver answers the *source address* of the DATA it got: behind
//! the proxy that is the proxy's downstream sending socket. The proxy learns,
//! from the mpx frames it forwards, which upstream address (and which of its
//! listen sockets) each session came from ([`SessionMap`]), reads its
//! downstream sockets for NACK, WINDOW and FEEDBACK frames, and sends each
//! one back to its session's sender from the listen socket the sender
//! addressed, so it arrives from where the sender sent to. Anything else that
//! arrives there is counted and dropped: the proxy never reflects traffic to
//! addresses it did not learn from the sender's own frames.
//!
//! No reflector: routes are learned only from frames whose checksum holds,
//! and each route carries a byte credit earned by the frames its source
//! sent through the proxy. A control frame goes back only if the route's
//! credit covers it, so a forged frame with a spoofed source buys at most
//! its own size in bytes sent to that address (at most 1x).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mproxy_common::stats::{Counter, LogLimiter};
use mproxy_common::wire::{classify, Datagram, FrameType};

/// Sessions remembered at most (each about 64 bytes)
pub const MAX_SESSIONS: usize = 4096;

/// Most reflection credit a route banks (bytes of frames from its source)
const MAX_CREDIT: u64 = 4 << 20;

/// A FEEDBACK report describes a *path*. It is relayed only while the
/// session has come from one upstream address for at least this long: a
/// multipath sender striping through this proxy would otherwise credit
/// every report to whichever of its paths spoke last.
const FEEDBACK_STABLE: Duration = Duration::from_secs(1);

/// Where a session's frames come from
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The sender's address (source of its latest frame)
    pub(crate) from: SocketAddr,
    /// Index of the listen socket it arrived on
    pub(crate) input: usize,
    /// When a frame of the session last arrived, as a count of frames
    /// learned (unique, unlike clock readings taken once per batch)
    seen: u64,
    /// When `from`/`input` last changed (`None`: never)
    moved: Option<Instant>,
    /// Bytes that may still be sent back to `from`: what it sent us
    credit: u64,
}

impl Route {
    /// Whether a per-path report may be credited to this route at `now`
    pub(crate) fn stable(&self, now: Instant) -> bool {
        self.moved
            .is_none_or(|t| now.saturating_duration_since(t) >= FEEDBACK_STABLE)
    }
}

/// Bounded map: mpx session id -> route of its latest frame
///
/// When full, a new session evicts the least recently seen eighth of the
/// entries in one pass (so the scan is amortized over many inserts);
/// evictions are counted.
#[derive(Debug)]
pub(crate) struct SessionMap {
    map: HashMap<u64, Route>,
    cap: usize,
    /// Sessions forgotten to make room
    pub(crate) evicted: u64,
    /// Sessions ever learned
    pub(crate) learned: u64,
    /// Frames learned so far: the order of [`Route::seen`]
    clock: u64,
}

impl SessionMap {
    /// An empty map holding at most `cap` sessions (at least 1)
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            evicted: 0,
            learned: 0,
            clock: 0,
        }
    }

    /// Sessions held
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Record that a frame of `session`, `len` bytes, arrived from `from`
    /// on input `input`
    pub(crate) fn learn(
        &mut self,
        session: u64,
        from: SocketAddr,
        input: usize,
        len: usize,
        now: Instant,
    ) {
        if let Some(r) = self.map.get_mut(&session) {
            if r.from != from || r.input != input {
                r.from = from;
                r.input = input;
                r.moved = Some(now);
                // the new source has earned only this frame
                r.credit = 0;
            }
            r.credit = (r.credit + len as u64).min(MAX_CREDIT);
            self.clock += 1;
            r.seen = self.clock;
            return;
        }
        if self.map.len() >= self.cap {
            self.evict();
        }
        self.learned += 1;
        self.clock += 1;
        self.map.insert(
            session,
            Route {
                from,
                input,
                seen: self.clock,
                moved: None,
                credit: (len as u64).min(MAX_CREDIT),
            },
        );
    }

    /// Forget the least recently seen eighth of the entries (at least one)
    fn evict(&mut self) {
        let n = (self.cap / 8).max(1).min(self.map.len());
        if n == 0 {
            return;
        }
        let mut seen: Vec<u64> = self.map.values().map(|r| r.seen).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        // `seen` values are unique: exactly n go
        let before = self.map.len();
        self.map.retain(|_, r| r.seen > cutoff);
        self.evicted += (before - self.map.len()) as u64;
    }

    /// The route of `session`, if known
    pub(crate) fn get(&self, session: u64) -> Option<&Route> {
        self.map.get(&session)
    }

    /// Take `len` bytes of the route's credit; false (nothing taken) if it
    /// has less
    fn spend(&mut self, session: u64, len: usize) -> bool {
        match self.map.get_mut(&session) {
            Some(r) if r.credit >= len as u64 => {
                r.credit -= len as u64;
                true
            }
            _ => false,
        }
    }
}

/// The session of a forwarded datagram if it is a valid frame an mpx
/// sender emits (DATA, HEARTBEAT, FEC; checksum verified)
///
/// A damaged or forged frame with a bad checksum teaches no route: only
/// frames a receiver would accept do (CRC32C costs a few nanoseconds per
/// frame in hardware).
pub(crate) fn sender_session(datagram: &[u8]) -> Option<u64> {
    let Datagram::Mpx(repr, _) = classify(datagram) else {
        return None;
    };
    matches!(
        repr.frame_type,
        FrameType::Data | FrameType::Heartbeat | FrameType::Fec
    )
    .then_some(repr.session)
}

/// Counters of the control relay
#[derive(Debug, Default)]
pub struct ControlStats {
    /// NACK frames sent back to their sender
    pub nacks: Counter,
    /// WINDOW frames sent back to their sender
    pub windows: Counter,
    /// FEEDBACK frames sent back to their sender
    pub feedback: Counter,
    /// Control frames of a session this proxy has not forwarded (or has
    /// forgotten): dropped
    pub unknown_session: Counter,
    /// FEEDBACK frames of a session that arrived from more than one
    /// upstream address within the last second (a path report could not be
    /// credited to the right path): dropped
    pub feedback_ambiguous: Counter,
    /// Control frames for this proxy's own session (`--mpx` framing of raw
    /// inputs keeps no repair buffer and does no flow control): dropped
    pub own_session: Counter,
    /// Datagrams on the downstream sockets that are not mpx control frames
    /// (raw, invalid, or sender frame types): dropped
    pub not_control: Counter,
    /// Control frames not sent back because their route's source had not
    /// sent as many bytes through the proxy (no reflection beyond 1x)
    pub over_credit: Counter,
    /// Sends back upstream that failed
    pub send_errors: Counter,
    /// Sessions learned from forwarded frames
    pub sessions: Counter,
    /// Sessions forgotten to keep the map bounded
    pub evicted: Counter,
}

impl std::fmt::Display for ControlStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "control relayed upstream: {} NACKs, {} windows, {} feedback; dropped: \
             {} unknown session, {} ambiguous feedback, {} own session, {} not control, \
             {} over credit, {} send errors; {} sessions learned, {} evicted",
            self.nacks.get(),
            self.windows.get(),
            self.feedback.get(),
            self.unknown_session.get(),
            self.feedback_ambiguous.get(),
            self.own_session.get(),
            self.not_control.get(),
            self.over_credit.get(),
            self.send_errors.get(),
            self.sessions.get(),
            self.evicted.get()
        )
    }
}

/// What to do with a datagram that arrived on a downstream socket
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send it back to `route`; count it with [`ControlStats::sent`] once sent
    Relay(Route, FrameType),
    /// Drop it (already counted)
    Drop,
}

/// Decide about one datagram from a downstream socket, counting drops
pub(crate) fn judge(
    datagram: &[u8],
    sessions: &mut SessionMap,
    own: Option<u64>,
    stats: &ControlStats,
    now: Instant,
) -> Verdict {
    let Datagram::Mpx(repr, _) = classify(datagram) else {
        stats.not_control.inc();
        return Verdict::Drop;
    };
    if !matches!(
        repr.frame_type,
        FrameType::Nack | FrameType::Window | FrameType::Feedback
    ) {
        stats.not_control.inc();
        return Verdict::Drop;
    }
    if own == Some(repr.session) {
        stats.own_session.inc();
        return Verdict::Drop;
    }
    let Some(route) = sessions.get(repr.session) else {
        stats.unknown_session.inc();
        return Verdict::Drop;
    };
    if repr.frame_type == FrameType::Feedback && !route.stable(now) {
        stats.feedback_ambiguous.inc();
        return Verdict::Drop;
    }
    let route = *route;
    if !sessions.spend(repr.session, datagram.len()) {
        stats.over_credit.inc();
        return Verdict::Drop;
    }
    Verdict::Relay(route, repr.frame_type)
}

impl ControlStats {
    /// Count a control frame of type `t` sent back upstream
    pub(crate) fn sent(&self, t: FrameType) {
        match t {
            FrameType::Nack => self.nacks.inc(),
            FrameType::Window => self.windows.inc(),
            FrameType::Feedback => self.feedback.inc(),
            _ => {}
        }
    }
}

/// Send `datagram` back upstream from `sock` to `to`; true if sent. A
/// failure is counted and logged (rate-limited), never fatal
pub(crate) fn send_back(
    sock: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    stats: &ControlStats,
    log: &LogLimiter,
) -> bool {
    loop {
        match sock.send_to(datagram, to) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                stats.send_errors.inc();
                if let Some(n) = log.allow() {
                    tracing::warn!(to = %to, suppressed = n, "relaying a control frame upstream failed: {e}");
                }
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mproxy_common::wire::{Flags, Repr};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn frame(t: FrameType, session: u64) -> Vec<u8> {
        let repr = Repr {
            frame_type: t,
            flags: Flags::NONE,
            session,
            stream: 1,
            seq: 0,
        };
        let payload = [0u8; 28];
        let mut buf = vec![0u8; repr.buffer_len(payload.len())];
        let n = repr.emit_with_payload(&mut buf, &payload).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn test_map_never_exceeds_its_cap_and_counts_evictions() {
        let mut m = SessionMap::new(64);
        let t0 = Instant::now();
        for s in 0..1000u64 {
            m.learn(s, addr(1), 0, 1000, t0 + Duration::from_millis(s));
            assert!(m.len() <= 64, "{} entries after session {s}", m.len());
        }
        assert_eq!(m.learned, 1000);
        assert_eq!(m.learned - m.evicted, m.len() as u64);
        // the newest sessions are still known, the oldest forgotten
        assert!(m.get(999).is_some());
        assert!(m.get(0).is_none());
    }

    #[test]
    fn test_eviction_spares_recently_seen_sessions() {
        let mut m = SessionMap::new(8);
        let t0 = Instant::now();
        for s in 0..8u64 {
            m.learn(s, addr(1), 0, 1000, t0 + Duration::from_millis(s));
        }
        // session 0 is the oldest insert but speaks again last
        m.learn(0, addr(1), 0, 1000, t0 + Duration::from_millis(100));
        m.learn(100, addr(2), 0, 1000, t0 + Duration::from_millis(101));
        assert_eq!(m.evicted, 1);
        assert!(m.get(0).is_some());
        assert!(m.get(1).is_none());
        assert_eq!(m.get(100).map(|r| r.from), Some(addr(2)));
    }

    #[test]
    fn test_sessions_learned_in_one_batch_evict_an_eighth_not_all() {
        // one receive batch: every session learned at the same instant
        let mut m = SessionMap::new(64);
        let t0 = Instant::now();
        for s in 0..65u64 {
            m.learn(s, addr(1), 0, 1000, t0);
        }
        assert_eq!(m.evicted, 8, "an eighth of 64");
        assert_eq!(m.len(), 57);
        assert!(m.get(0).is_none() && m.get(7).is_none() && m.get(8).is_some());
    }

    #[test]
    fn test_a_cap_of_one_still_learns() {
        let mut m = SessionMap::new(0);
        let t0 = Instant::now();
        m.learn(1, addr(1), 0, 1000, t0);
        m.learn(2, addr(2), 1, 1000, t0 + Duration::from_millis(1));
        assert_eq!((m.len(), m.evicted), (1, 1));
        assert_eq!(m.get(2).map(|r| (r.from, r.input)), Some((addr(2), 1)));
    }

    #[test]
    fn test_route_follows_the_latest_source_and_feedback_waits_until_stable() {
        let mut m = SessionMap::new(16);
        let t0 = Instant::now();
        let stats = ControlStats::default();
        m.learn(7, addr(1), 0, 1000, t0);
        let fb = frame(FrameType::Feedback, 7);
        assert!(matches!(
            judge(&fb, &mut m, None, &stats, t0),
            Verdict::Relay(r, FrameType::Feedback) if r.from == addr(1)
        ));
        // a second path of the same session: reports are now ambiguous
        m.learn(7, addr(2), 1, 1000, t0 + Duration::from_millis(10));
        assert_eq!(
            judge(&fb, &mut m, None, &stats, t0 + Duration::from_millis(20)),
            Verdict::Drop
        );
        assert_eq!(stats.feedback_ambiguous.get(), 1);
        // NACKs and windows are per stream: they go to the latest source
        let nack = frame(FrameType::Nack, 7);
        assert!(matches!(
            judge(&nack, &mut m, None, &stats, t0 + Duration::from_millis(20)),
            Verdict::Relay(r, FrameType::Nack) if r.from == addr(2) && r.input == 1
        ));
        // one source for a second: reports flow again
        assert!(matches!(
            judge(&fb, &mut m, None, &stats, t0 + Duration::from_millis(1010)),
            Verdict::Relay(_, FrameType::Feedback)
        ));
        stats.sent(FrameType::Nack);
        assert_eq!((stats.nacks.get(), stats.feedback.get()), (1, 0));
    }

    #[test]
    fn test_only_known_sessions_control_frames_are_relayed() {
        let mut m = SessionMap::new(16);
        let t0 = Instant::now();
        let stats = ControlStats::default();
        m.learn(7, addr(1), 0, 1000, t0);
        let cases: Vec<(Vec<u8>, Verdict)> = vec![
            (b"raw datagram".to_vec(), Verdict::Drop),
            (frame(FrameType::Data, 7), Verdict::Drop),
            (frame(FrameType::Window, 8), Verdict::Drop),
            (frame(FrameType::Window, 9), Verdict::Drop),
        ];
        for (d, want) in &cases {
            assert_eq!(judge(d, &mut m, Some(9), &stats, t0), *want);
        }
        let mut bad = frame(FrameType::Window, 7);
        bad[30] ^= 1;
        assert_eq!(judge(&bad, &mut m, None, &stats, t0), Verdict::Drop);
        assert_eq!(stats.not_control.get(), 3);
        assert_eq!(stats.unknown_session.get(), 1);
        assert_eq!(stats.own_session.get(), 1);
        assert_eq!(stats.windows.get(), 0);
    }

    #[test]
    fn test_reflection_is_bounded_by_what_the_source_sent() {
        let mut m = SessionMap::new(16);
        let t0 = Instant::now();
        let stats = ControlStats::default();
        // a spoofed 24-byte frame earns 24 bytes back: a 52-byte window
        // to that address is refused
        m.learn(7, addr(9), 0, 24, t0);
        let w = frame(FrameType::Window, 7);
        assert_eq!(judge(&w, &mut m, None, &stats, t0), Verdict::Drop);
        assert_eq!(stats.over_credit.get(), 1);
        // a real sender's data pays for many control frames, each once
        m.learn(7, addr(1), 0, 2 * w.len(), t0);
        for _ in 0..2 {
            assert!(matches!(
                judge(&w, &mut m, None, &stats, t0),
                Verdict::Relay(r, _) if r.from == addr(1)
            ));
        }
        assert_eq!(judge(&w, &mut m, None, &stats, t0), Verdict::Drop);
        assert_eq!(stats.over_credit.get(), 2);
    }

    #[test]
    fn test_sender_session_reads_sender_frames_only() {
        assert_eq!(sender_session(&frame(FrameType::Data, 5)), Some(5));
        assert_eq!(sender_session(&frame(FrameType::Heartbeat, 5)), Some(5));
        assert_eq!(sender_session(&frame(FrameType::Nack, 5)), None);
        assert_eq!(sender_session(b"\xa7\x4d short"), None);
        assert_eq!(sender_session(b"plain text line\n"), None);
        let mut v2 = frame(FrameType::Data, 5);
        v2[2] = (2 << 4) | (v2[2] & 0x0f);
        assert_eq!(sender_session(&v2), None);
        // a bad checksum teaches no route
        let mut bad = frame(FrameType::Data, 5);
        bad[30] ^= 1;
        assert_eq!(sender_session(&bad), None);
    }
}
