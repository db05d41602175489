//! A seeded, lossy UDP relay that records what it let through.
//!
//! [`LossyRelay`] sits between a sender and a receiver (both inside the
//! test's network namespace) and forwards every datagram it receives on its
//! listening address to one forward address, after a per-datagram decision
//! drawn from a seeded generator ([`Impairment`]): drop it, send it twice,
//! or hold it back for a while (reordering it behind later datagrams).
//!
//! The decisions depend only on the seed and on the *arrival order*: the
//! i-th datagram received always gets the i-th decision, whatever it
//! contains and whatever the timing. Every datagram is treated alike:
//! mpx DATA frames, mpx heartbeats (including the closing FIN heartbeats),
//! other mpx frames, invalid frames and raw (non-mpx) payloads all go
//! through the same drop / duplicate / hold logic. The record notes, per
//! stream, whether any FIN information (a FIN DATA frame or a FIN
//! heartbeat) got through, since a receiver that never learns the end of a
//! stream counts its losses differently.
//!
//! While it runs, the relay keeps a [`RelayRecord`]: overall counters, and
//! for every mpx stream (session, stream id) every DATA frame it saw, by
//! sequence number, with its payload and how many copies were forwarded.
//! From that, [`StreamRecord`] derives what an ideal mpx receiver delivers
//! and counts: the bytes ([`StreamRecord::expected_bytes`]), the lost frames
//! ([`StreamRecord::lost`]), the duplicate copies
//! ([`StreamRecord::duplicates`]) and the gaps ([`StreamRecord::gaps`]).
//!
//! Sequence numbers are taken as they are on the wire (32 bits, no
//! wrap-around handling): test streams stay far below 2^32 frames.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mproxy_common::mpx::StreamKey;
use mproxy_common::wire::{classify, Datagram, Flags, FrameType, HEADER_LEN};

use crate::data::SplitMix64;

/// How long the relay thread waits for a datagram before it checks held
/// datagrams' deadlines and the stop flag (so `max_hold` is honoured to
/// within about this much when traffic pauses).
const POLL: Duration = Duration::from_millis(2);
/// How long [`LossyRelay::stop`] (and drop) waits for the relay thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer requested for the listening socket (clamped by the
/// kernel to `net.core.rmem_max`).
const RCVBUF: libc::c_int = 8 << 20;
/// How often the relay thread refreshes [`RelayRecord::kernel_drops`].
const DROPS_EVERY: Duration = Duration::from_millis(100);

/// What a [`LossyRelay`] does to the datagrams it relays.
///
/// Probabilities are per received datagram and independent: with
/// probability `drop` it is not forwarded at all; otherwise it is forwarded
/// twice (back to back) with probability `duplicate`, and with probability
/// `reorder` it (with its duplicate) is held back until `1..=reorder_depth`
/// later datagrams (uniformly chosen) have arrived, or until `max_hold` has
/// passed, whichever comes first. `Default` is a perfect relay (nothing
/// dropped, duplicated or held).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayConfig {
    /// Seed of the decision generator.
    pub seed: u64,
    /// Probability that a datagram is dropped.
    pub drop: f64,
    /// Probability that a forwarded datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a forwarded datagram is held back (reordered).
    pub reorder: f64,
    /// Most later datagrams a held datagram waits for (0: never hold).
    pub reorder_depth: usize,
    /// Longest a datagram is held, whatever the traffic.
    pub max_hold: Duration,
    /// Relay replies (the receiver's NACKs and feedback) back to the
    /// sender that last sent data (mpx DATA or heartbeat frames, or raw
    /// payloads) through the relay; off by default
    pub return_path: bool,
    /// Probability that a reply is dropped on the way back (seeded too)
    pub return_drop: f64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_depth: 0,
            max_hold: Duration::from_millis(20),
            return_path: false,
            return_drop: 0.0,
        }
    }
}

/// The fate of one received datagram, as decided by an [`Impairment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Copies to forward: 0 (dropped), 1, or 2 (duplicated).
    pub copies: u32,
    /// Later arrivals to wait for before forwarding (0: forward at once).
    /// Always 0 for a dropped datagram.
    pub hold: usize,
}

impl Decision {
    /// True if no copy is forwarded.
    pub fn dropped(&self) -> bool {
        self.copies == 0
    }
}

/// The seeded decision sequence of a [`LossyRelay`]: the n-th call to
/// [`Impairment::decide`] gives the decision for the n-th received datagram.
///
/// Each decision consumes exactly four draws of a [`SplitMix64`] seeded
/// with [`RelayConfig::seed`], so it depends on the seed and the position
/// only.
#[derive(Debug, Clone)]
pub struct Impairment {
    config: RelayConfig,
    rng: SplitMix64,
}

/// A uniform value in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Impairment {
    /// The decision sequence for `config`.
    pub fn new(config: &RelayConfig) -> Self {
        Self {
            config: *config,
            rng: SplitMix64::new(config.seed),
        }
    }

    /// The decision for the next datagram.
    pub fn decide(&mut self) -> Decision {
        let drop = unit(self.rng.next_u64()) < self.config.drop;
        let dup = unit(self.rng.next_u64()) < self.config.duplicate;
        let reorder = unit(self.rng.next_u64()) < self.config.reorder;
        let depth = self.rng.next_u64();
        if drop {
            return Decision { copies: 0, hold: 0 };
        }
        let hold = if reorder && self.config.reorder_depth > 0 {
            1 + usize::try_from(depth % self.config.reorder_depth as u64).unwrap_or(0)
        } else {
            0
        };
        Decision {
            copies: if dup { 2 } else { 1 },
            hold,
        }
    }
}

/// One mpx DATA frame seen by the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameRecord {
    /// Its payload (from the first copy received).
    pub payload: Vec<u8>,
    /// Whether it carries FIN (the stream's last frame).
    pub fin: bool,
    /// Copies received from upstream.
    pub received: u32,
    /// Copies forwarded downstream.
    pub forwarded: u32,
}

/// What the relay saw and forwarded of one mpx stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRecord {
    /// DATA frames seen, by sequence number.
    pub frames: BTreeMap<u32, FrameRecord>,
    /// Heartbeats received from upstream.
    pub heartbeats_received: u64,
    /// Heartbeat copies forwarded downstream.
    pub heartbeats_forwarded: u64,
    /// Whether FIN information got through: at least one copy of a FIN
    /// DATA frame or of a FIN heartbeat was forwarded. Without it the
    /// receiver cannot know where the stream ends, and closes it only when
    /// idle, without counting a lost FIN frame.
    pub fin_forwarded: bool,
    /// One past the FIN frame's sequence number, as learned from upstream
    /// (a FIN DATA frame or a FIN heartbeat), whether or not forwarded.
    pub fin_end: Option<u32>,
    /// One past the highest sequence number seen from upstream (DATA
    /// frames, and the next-sequence number heartbeats carry).
    pub high: u32,
    /// Copies of DATA frames forwarded after the stream was complete
    /// downstream (FIN information and at least one copy of every frame up
    /// to it forwarded). An mpx receiver has closed the stream by then and
    /// drops them without counting them as duplicates of the stream.
    pub after_complete: u64,
    /// Extra copies (beyond the first) of DATA frames forwarded while the
    /// stream was not yet complete downstream.
    dups: u64,
    /// End of the stream as made known downstream (by forwarded FIN
    /// information).
    end_downstream: Option<u32>,
    /// Distinct sequence numbers with at least one copy forwarded.
    distinct_forwarded: u64,
}

impl StreamRecord {
    /// One past the last sequence number of the stream: from FIN
    /// information if the relay saw any, else [`StreamRecord::high`].
    pub fn end(&self) -> u32 {
        self.fin_end.unwrap_or(self.high)
    }

    /// The bytes an mpx receiver delivers: the payloads of all frames with
    /// at least one copy forwarded, in sequence order.
    pub fn expected_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in self.frames.values().filter(|f| f.forwarded > 0) {
            out.extend_from_slice(&f.payload);
        }
        out
    }

    /// Frames with at least one copy forwarded (what a receiver counts as
    /// delivered datagrams; the empty FIN frame included).
    pub fn delivered_frames(&self) -> u64 {
        self.frames.values().filter(|f| f.forwarded > 0).count() as u64
    }

    /// Frames the relay received but dropped every copy of.
    pub fn lost(&self) -> u64 {
        self.frames.values().filter(|f| f.forwarded == 0).count() as u64
    }

    /// Sequence numbers below [`StreamRecord::end`] the relay never
    /// received at all (lost before the relay; should be 0 in a test).
    pub fn unseen(&self) -> u64 {
        let seen = self.frames.keys().filter(|s| **s < self.end()).count() as u64;
        u64::from(self.end()) - seen
    }

    /// Maximal runs of consecutive sequence numbers below
    /// [`StreamRecord::end`] of which no copy was forwarded (dropped by the
    /// relay or never received).
    pub fn gaps(&self) -> u64 {
        let mut runs = 0;
        let mut in_run = false;
        for seq in 0..self.end() {
            let missing = self.frames.get(&seq).is_none_or(|f| f.forwarded == 0);
            if missing && !in_run {
                runs += 1;
            }
            in_run = missing;
        }
        runs
    }

    /// Extra copies of DATA frames a receiver sees while the stream is
    /// open: all copies beyond the first of each frame, except those
    /// forwarded after the stream was complete downstream (see
    /// [`StreamRecord::after_complete`]).
    pub fn duplicates(&self) -> u64 {
        self.dups
    }

    /// Whether FIN information and at least one copy of every frame before
    /// it have been forwarded.
    pub fn complete_downstream(&self) -> bool {
        self.end_downstream
            .is_some_and(|end| self.distinct_forwarded >= u64::from(end))
    }

    fn on_data_received(&mut self, seq: u32, fin: bool, payload: &[u8]) {
        let f = self.frames.entry(seq).or_insert_with(|| FrameRecord {
            payload: payload.to_vec(),
            fin,
            received: 0,
            forwarded: 0,
        });
        f.received += 1;
        self.high = self.high.max(seq.saturating_add(1));
        if fin {
            self.fin_end.get_or_insert(seq.saturating_add(1));
        }
    }

    fn on_data_forwarded(&mut self, seq: u32, fin: bool) {
        let complete = self.complete_downstream();
        let Some(f) = self.frames.get_mut(&seq) else {
            return;
        };
        if f.forwarded == 0 {
            self.distinct_forwarded += 1;
        } else if complete {
            self.after_complete += 1;
        } else {
            self.dups += 1;
        }
        f.forwarded += 1;
        if fin {
            self.fin_forwarded = true;
            self.end_downstream.get_or_insert(seq.saturating_add(1));
        }
    }

    fn on_heartbeat_received(&mut self, next: u32, fin: bool) {
        self.heartbeats_received += 1;
        self.high = self.high.max(next);
        if fin {
            self.fin_end.get_or_insert(next);
        }
    }

    fn on_heartbeat_forwarded(&mut self, next: u32, fin: bool) {
        self.heartbeats_forwarded += 1;
        if fin {
            self.fin_forwarded = true;
            self.end_downstream.get_or_insert(next);
        }
    }
}

/// Everything a [`LossyRelay`] did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayRecord {
    /// Datagrams received from upstream (all kinds).
    pub received: u64,
    /// Datagrams dropped (no copy forwarded).
    pub dropped: u64,
    /// Datagrams forwarded twice.
    pub duplicated: u64,
    /// Datagrams held back (reordered).
    pub held: u64,
    /// Copies sent downstream (all kinds).
    pub forwarded: u64,
    /// Copies that could not be sent (not counted as forwarded anywhere).
    pub send_errors: u64,
    /// Receive errors on the listening socket.
    pub recv_errors: u64,
    /// Replies relayed back to the sender (with `return_path`)
    pub returned: u64,
    /// Replies dropped on the way back
    pub returns_dropped: u64,
    /// Datagrams the kernel dropped on the listening socket because its
    /// receive queue was full (they never reached the relay; from the
    /// `drops` column of `/proc/net/udp`).
    pub kernel_drops: u64,
    /// Raw (non-mpx) datagrams received.
    pub raw_received: u64,
    /// Copies of raw datagrams forwarded.
    pub raw_forwarded: u64,
    /// Datagrams that start with the mpx magic but are not valid frames,
    /// and valid mpx frames that are neither DATA nor heartbeats (relayed
    /// like any other datagram).
    pub other_received: u64,
    /// mpx streams seen, by (session, stream id).
    pub streams: BTreeMap<StreamKey, StreamRecord>,
}

/// What a datagram is, as far as the record is concerned.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Data {
        key: StreamKey,
        seq: u32,
        fin: bool,
    },
    Heartbeat {
        key: StreamKey,
        next: u32,
        fin: bool,
    },
    Raw,
    Other,
}

impl Kind {
    fn of(bytes: &[u8]) -> Self {
        match classify(bytes) {
            Datagram::Raw(_) => Self::Raw,
            Datagram::Invalid(..) => Self::Other,
            Datagram::Mpx(repr, _) => {
                let key = StreamKey {
                    session: repr.session,
                    stream: repr.stream,
                };
                let fin = repr.flags.contains(Flags::FIN);
                match repr.frame_type {
                    FrameType::Data => Self::Data {
                        key,
                        seq: repr.seq,
                        fin,
                    },
                    FrameType::Heartbeat => Self::Heartbeat {
                        key,
                        next: repr.seq,
                        fin,
                    },
                    _ => Self::Other,
                }
            }
        }
    }
}

impl RelayRecord {
    fn on_received(&mut self, kind: Kind, bytes: &[u8], d: Decision) {
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        self.received += 1;
        if d.dropped() {
            self.dropped += 1;
        }
        if d.copies > 1 {
            self.duplicated += 1;
        }
        if d.hold > 0 {
            self.held += 1;
        }
        match kind {
            Kind::Data { key, seq, fin } => {
                self.streams
                    .entry(key)
                    .or_default()
                    .on_data_received(seq, fin, payload);
            }
            Kind::Heartbeat { key, next, fin } => {
                self.streams
                    .entry(key)
                    .or_default()
                    .on_heartbeat_received(next, fin);
            }
            Kind::Raw => self.raw_received += 1,
            Kind::Other => self.other_received += 1,
        }
    }

    fn on_forwarded(&mut self, kind: Kind) {
        self.forwarded += 1;
        match kind {
            Kind::Data { key, seq, fin } => {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.on_data_forwarded(seq, fin);
                }
            }
            Kind::Heartbeat { key, next, fin } => {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.on_heartbeat_forwarded(next, fin);
                }
            }
            Kind::Raw => self.raw_forwarded += 1,
            Kind::Other => {}
        }
    }

    /// The record of the only mpx stream seen; panics unless there is
    /// exactly one.
    pub fn single_stream(&self) -> (StreamKey, &StreamRecord) {
        assert_eq!(
            self.streams.len(),
            1,
            "expected exactly one mpx stream through the relay, saw {:?}",
            self.streams.keys().collect::<Vec<_>>()
        );
        let (k, s) = self.streams.iter().next().unwrap_or_else(|| unreachable!());
        (*k, s)
    }
}

/// A datagram waiting to be forwarded.
struct Held {
    /// Arrival count after which it goes.
    release_after: u64,
    /// Time at which it goes anyway.
    deadline: Instant,
    data: Vec<u8>,
    kind: Kind,
    copies: u32,
}

/// The relay thread's state.
struct Worker {
    sock: UdpSocket,
    out: UdpSocket,
    forward: SocketAddr,
    impairment: Impairment,
    max_hold: Duration,
    held: VecDeque<Held>,
    arrivals: u64,
    shared: Arc<Mutex<RelayRecord>>,
    stop: Arc<AtomicBool>,
    sock_inode: Option<u64>,
    /// Where replies go: the last address that sent through the relay
    sender: Option<SocketAddr>,
    return_path: bool,
    return_drop: f64,
    return_rng: SplitMix64,
}

fn lock(m: &Mutex<RelayRecord>) -> MutexGuard<'_, RelayRecord> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Worker {
    fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        let mut next_drops = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    // The sender is who sends data: on a group the relay
                    // also overhears other receivers' NACKs.
                    if !matches!(Kind::of(&buf[..n]), Kind::Other) {
                        self.sender = Some(from);
                    }
                    self.arrive(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    lock(&self.shared).recv_errors += 1;
                    std::thread::sleep(POLL);
                }
            }
            if self.return_path {
                self.relay_replies(&mut buf);
            }
            let now = Instant::now();
            self.release(|h| h.deadline <= now);
            if now >= next_drops {
                self.update_kernel_drops();
                next_drops = now + DROPS_EVERY;
            }
        }
        // Whatever is still held goes out now, so nothing vanishes unrecorded.
        self.release(|_| true);
        self.update_kernel_drops();
    }

    fn arrive(&mut self, data: &[u8]) {
        let decision = self.impairment.decide();
        let kind = Kind::of(data);
        lock(&self.shared).on_received(kind, data, decision);
        let index = self.arrivals;
        self.arrivals += 1;
        if !decision.dropped() {
            if decision.hold == 0 {
                self.send(kind, data, decision.copies);
            } else {
                self.held.push_back(Held {
                    release_after: index + decision.hold as u64,
                    deadline: Instant::now() + self.max_hold,
                    data: data.to_vec(),
                    kind,
                    copies: decision.copies,
                });
            }
        }
        let arrived = index;
        self.release(|h| h.release_after <= arrived);
    }

    /// Forward the held datagrams `due` selects, in arrival order.
    fn release(&mut self, due: impl Fn(&Held) -> bool) {
        if !self.held.iter().any(&due) {
            return;
        }
        let (go, stay): (VecDeque<Held>, VecDeque<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(due);
        self.held = stay;
        for h in go {
            self.send(h.kind, &h.data, h.copies);
        }
    }

    fn send(&mut self, kind: Kind, data: &[u8], copies: u32) {
        for _ in 0..copies {
            let sent = self.out.send_to(data, self.forward);
            let mut rec = lock(&self.shared);
            match sent {
                Ok(_) => rec.on_forwarded(kind),
                Err(_) => rec.send_errors += 1,
            }
        }
    }

    /// Replies that came back to the outgoing socket go to the sender
    fn relay_replies(&mut self, buf: &mut [u8]) {
        let Some(sender) = self.sender else {
            return;
        };
        while let Ok((n, _)) = self.out.recv_from(buf) {
            let p = self.return_rng.next_u64() as f64 / u64::MAX as f64;
            let mut rec = lock(&self.shared);
            if p < self.return_drop {
                rec.returns_dropped += 1;
            } else if self.sock.send_to(&buf[..n], sender).is_ok() {
                rec.returned += 1;
            }
        }
    }

    fn update_kernel_drops(&self) {
        if let Some(d) = self.sock_inode.and_then(udp_socket_drops) {
            lock(&self.shared).kernel_drops = d;
        }
    }
}

/// The `drops` count of the UDP socket with inode `inode` in the calling
/// thread's network namespace (`/proc/thread-self/net/udp` and `udp6`).
fn udp_socket_drops(inode: u64) -> Option<u64> {
    ["udp", "udp6"].iter().find_map(|f| {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ino: u64 = fields.get(9)?.parse().ok()?;
            if ino != inode {
                return None;
            }
            fields.get(12)?.parse().ok()
        })
    })
}

/// A seeded lossy UDP relay running in a background thread; stopped by
/// [`LossyRelay::stop`] or when dropped.
///
/// Every received datagram gets the next decision of an [`Impairment`]
/// seeded with [`RelayConfig::seed`] (drop / duplicate / hold), so the
/// decisions depend on the seed and the arrival order only. All datagrams
/// are treated alike: mpx DATA frames, heartbeats (FIN heartbeats too),
/// other or invalid mpx frames and raw payloads. The [`RelayRecord`]
/// (see [`LossyRelay::record`]) keeps, per mpx stream, every DATA frame
/// seen with its payload and the copies forwarded, from which
/// [`StreamRecord`] derives what an mpx receiver delivers and counts.
/// Datagrams the receiver sends back to the relay (mpx NACKs, feedback
/// reports) are relayed to the sender only with
/// [`RelayConfig::return_path`] (and dropped with
/// [`RelayConfig::return_drop`]); otherwise they are never read.
#[derive(Debug)]
pub struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<RelayRecord>>,
    thread: Option<JoinHandle<()>>,
}

impl LossyRelay {
    /// Binds `listen` (unicast, port 0 picks a free one; or a multicast
    /// group, joined on `lo`, so the relay is one more receiver of the
    /// group) and starts relaying what arrives there to `forward`
    /// (unicast) under `config`.
    ///
    /// Must be called from the thread running an [`in_netns`](crate::in_netns)
    /// closure: the relay thread is spawned from it and so stays in the
    /// test's private network namespace. Panics if called elsewhere, if a
    /// socket cannot be set up, or for a multicast `forward`.
    pub fn start(listen: SocketAddr, forward: SocketAddr, config: RelayConfig) -> Self {
        assert!(
            crate::netns::outer_netns_fd().is_some(),
            "LossyRelay::start must be called inside in_netns (on the thread running its closure)"
        );
        assert!(
            !forward.ip().is_multicast(),
            "LossyRelay forwards to unicast only ({listen} -> {forward})"
        );
        assert!(
            (0.0..=1.0).contains(&config.drop)
                && (0.0..=1.0).contains(&config.duplicate)
                && (0.0..=1.0).contains(&config.reorder),
            "relay probabilities must be within 0..=1: {config:?}"
        );
        let sock = if listen.ip().is_multicast() {
            let opts = mproxy_common::SocketOptions {
                iface: mproxy_common::Interface::Name("lo".into()),
                ..mproxy_common::SocketOptions::default()
            };
            let sock = mproxy_common::net::bind_receiver(listen, &opts)
                .unwrap_or_else(|e| panic!("relay: cannot join {listen}: {e}"));
            sock.set_nonblocking(false)
                .unwrap_or_else(|e| panic!("relay: blocking mode: {e}"));
            sock
        } else {
            UdpSocket::bind(listen).unwrap_or_else(|e| panic!("relay: cannot bind {listen}: {e}"))
        };
        // Best effort: the kernel clamps it to net.core.rmem_max.
        let _ = crate::sock::setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
        sock.set_read_timeout(Some(POLL))
            .unwrap_or_else(|e| panic!("relay: SO_RCVTIMEO: {e}"));
        let addr = sock
            .local_addr()
            .unwrap_or_else(|e| panic!("relay: local_addr: {e}"));
        let out_bind: SocketAddr = if forward.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let out = UdpSocket::bind(out_bind)
            .unwrap_or_else(|e| panic!("relay: cannot bind {out_bind}: {e}"));
        out.set_nonblocking(true)
            .unwrap_or_else(|e| panic!("relay: non-blocking reply socket: {e}"));
        let sock_inode = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd()))
            .ok()
            .map(|m| m.ino());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(RelayRecord::default()));
        let worker = Worker {
            sock,
            out,
            forward,
            impairment: Impairment::new(&config),
            max_hold: config.max_hold,
            held: VecDeque::new(),
            arrivals: 0,
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
            sock_inode,
            sender: None,
            return_path: config.return_path,
            return_drop: config.return_drop,
            return_rng: SplitMix64::new(config.seed ^ 0x5eed_5eed),
        };
        let thread = std::thread::Builder::new()
            .name(format!("lossy-relay-{}", addr.port()))
            .spawn(move || worker.run())
            .unwrap_or_else(|e| panic!("relay: cannot spawn thread: {e}"));
        Self {
            addr,
            stop,
            shared,
            thread: Some(thread),
        }
    }

    /// The address the relay listens on (send here).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the record so far.
    pub fn record(&self) -> RelayRecord {
        lock(&self.shared).clone()
    }

    /// Stops the relay (held datagrams are forwarded first) and returns the
    /// final record; panics if the thread does not end within 5 s.
    pub fn stop(mut self) -> RelayRecord {
        if let Err(e) = self.shutdown() {
            panic!("{e}");
        }
        self.record()
    }

    /// Signals the thread and waits (bounded) for it to end.
    fn shutdown(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "relay thread on {} did not stop within {STOP_TIMEOUT:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        thread
            .join()
            .map_err(|_| format!("relay thread on {} panicked", self.addr))
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            if std::thread::panicking() {
                eprintln!("mproxy-testsupport: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    use mproxy_common::mpx::{Sender, SenderConfig};

    use super::*;
    use crate::in_netns;

    fn lossy(seed: u64) -> RelayConfig {
        RelayConfig {
            seed,
            drop: 0.1,
            duplicate: 0.1,
            reorder: 0.2,
            reorder_depth: 7,
            max_hold: Duration::from_secs(10),
            ..RelayConfig::default()
        }
    }

    #[test]
    fn impairment_is_deterministic() {
        let cfg = lossy(42);
        let a: Vec<Decision> = {
            let mut i = Impairment::new(&cfg);
            (0..20_000).map(|_| i.decide()).collect()
        };
        let b: Vec<Decision> = {
            let mut i = Impairment::new(&cfg);
            (0..20_000).map(|_| i.decide()).collect()
        };
        assert_eq!(a, b);
        let c: Vec<Decision> = {
            let mut i = Impairment::new(&lossy(43));
            (0..20_000).map(|_| i.decide()).collect()
        };
        assert_ne!(a, c);
        let dropped = a.iter().filter(|d| d.dropped()).count();
        let dup = a.iter().filter(|d| d.copies == 2).count();
        let held = a.iter().filter(|d| d.hold > 0).count();
        // 10 %, 10 % of 90 %, 20 % of 90 % (fixed by the seed, not flaky)
        assert!((1800..2200).contains(&dropped), "{dropped}");
        assert!((1600..2000).contains(&dup), "{dup}");
        assert!((3300..3900).contains(&held), "{held}");
        for d in &a {
            assert!(d.copies <= 2);
            assert!(d.hold <= 7);
            if d.dropped() {
                assert_eq!(d.hold, 0);
            }
        }
        assert!((1..=7).all(|h| a.iter().any(|d| d.hold == h)));
        // a perfect relay
        let mut p = Impairment::new(&RelayConfig::default());
        assert!((0..1000).all(|_| p.decide() == Decision { copies: 1, hold: 0 }));
    }

    /// Stream 1 of session 9: frames 0..=9, FIN on 9.
    fn stream_with(fates: &[(u32, u32)]) -> StreamRecord {
        let mut s = StreamRecord::default();
        for seq in 0..10u32 {
            let payload = format!("line {seq}\n");
            s.on_data_received(seq, seq == 9, payload.as_bytes());
        }
        for &(seq, copies) in fates {
            for _ in 0..copies {
                s.on_data_forwarded(seq, seq == 9);
            }
        }
        s
    }

    #[test]
    fn stream_record_derives_receiver_view() {
        // 3, 4 and 7 dropped; 1 and 9 (FIN) duplicated; 2 forwarded last
        let s = stream_with(&[(0, 1), (1, 2), (5, 1), (6, 1), (8, 1), (9, 2), (2, 1)]);
        let want: Vec<u8> = [0, 1, 2, 5, 6, 8, 9]
            .iter()
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        assert_eq!(s.expected_bytes(), want);
        assert_eq!(s.lost(), 3);
        assert_eq!(s.gaps(), 2);
        assert_eq!(s.unseen(), 0);
        assert_eq!(s.delivered_frames(), 7);
        assert_eq!(s.end(), 10);
        assert!(s.fin_forwarded);
        assert!(!s.complete_downstream(), "frames 3, 4, 7 never forwarded");
        assert_eq!((s.duplicates(), s.after_complete), (2, 0));

        // everything forwarded, 2 last, duplicated after the stream is complete
        let s = stream_with(&[
            (0, 1),
            (1, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 1),
            (7, 2),
            (8, 1),
            (9, 1),
            (2, 2),
        ]);
        assert!(s.complete_downstream());
        assert_eq!((s.lost(), s.gaps()), (0, 0));
        assert_eq!((s.duplicates(), s.after_complete), (1, 1));

        // the tail, FIN included, dropped; a FIN heartbeat tells the end
        let mut s = stream_with(&[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
        assert!(!s.fin_forwarded);
        s.on_heartbeat_received(10, true);
        s.on_heartbeat_forwarded(10, true);
        assert!(s.fin_forwarded);
        assert_eq!((s.lost(), s.gaps()), (4, 1));

        // frames never seen by the relay
        let mut s = StreamRecord::default();
        s.on_data_received(2, false, b"x\n");
        s.on_data_forwarded(2, false);
        s.on_heartbeat_received(5, false);
        assert_eq!(s.fin_end, None);
        assert_eq!((s.end(), s.unseen(), s.lost(), s.gaps()), (5, 4, 0, 2));
    }

    /// mpx frames of one stream (FIN and closing heartbeats included) with
    /// a raw datagram after every tenth
    fn traffic() -> Vec<Vec<u8>> {
        let cfg = SenderConfig {
            max_datagram: 200,
            ..SenderConfig::default()
        };
        let mut tx = Sender::new(0xfeed, 3, &cfg);
        let t = Instant::now();
        let mut frames = Vec::new();
        for i in 0..3000 {
            tx.push(
                t,
                format!("line {i} of the test stream\n").as_bytes(),
                |f| {
                    frames.push(f.to_vec());
                },
            );
        }
        tx.finish(t, |f| frames.push(f.to_vec()));
        let mut now = t;
        while let Some(at) = tx.poll_timeout() {
            now = now.max(at);
            tx.handle_timeout(now, |f| frames.push(f.to_vec()));
        }
        let mut out = Vec::new();
        for (i, f) in frames.into_iter().enumerate() {
            out.push(f);
            if i % 10 == 9 {
                out.push(format!("raw datagram {i}\n").into_bytes());
            }
        }
        out
    }

    /// Indices of `n` datagrams in the order a relay with `cfg` forwards
    /// them when only arrivals release held ones (stop releases the rest).
    fn simulate(cfg: &RelayConfig, n: usize) -> Vec<usize> {
        let mut imp = Impairment::new(cfg);
        let mut held: Vec<(usize, usize, u32)> = Vec::new();
        let mut out = Vec::new();
        for i in 0..n {
            let d = imp.decide();
            if !d.dropped() {
                if d.hold == 0 {
                    out.extend(std::iter::repeat_n(i, d.copies as usize));
                } else {
                    held.push((i + d.hold, i, d.copies));
                }
            }
            let (go, stay): (Vec<_>, Vec<_>) = held.into_iter().partition(|h| h.0 <= i);
            held = stay;
            for (_, j, c) in go {
                out.extend(std::iter::repeat_n(j, c as usize));
            }
        }
        for (_, j, c) in held {
            out.extend(std::iter::repeat_n(j, c as usize));
        }
        out
    }

    /// Sends `traffic` through a relay with `cfg`; returns the record and
    /// the indices of the datagrams received downstream, in order.
    fn run_relay(cfg: RelayConfig, traffic: &[Vec<u8>]) -> (RelayRecord, Vec<usize>) {
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let big: libc::c_int = 8 << 20;
        crate::sock::setsockopt(&sink, libc::SOL_SOCKET, libc::SO_RCVBUF, &big).unwrap();
        let relay = LossyRelay::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            sink.local_addr().unwrap(),
            cfg,
        );
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for (i, d) in traffic.iter().enumerate() {
            tx.send_to(d, relay.local_addr()).unwrap();
            if i % 64 == 63 {
                // let the relay keep up (its queue is large, this is just polite)
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        crate::wait_until(Duration::from_secs(20), "relay to see everything", || {
            relay.record().received == traffic.len() as u64
        });
        let rec = relay.stop();
        let index: HashMap<&[u8], usize> = traffic
            .iter()
            .enumerate()
            .map(|(i, d)| (d.as_slice(), i))
            .collect();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while (got.len() as u64) < rec.forwarded {
            let n = sink.recv(&mut buf).expect("a forwarded datagram");
            got.push(index[&buf[..n]]);
        }
        sink.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(sink.recv(&mut buf).is_err(), "more than recorded arrived");
        (rec, got)
    }

    #[test]
    fn relay_is_deterministic_and_matches_its_decisions() {
        in_netns(|_| {
            let traffic = traffic();
            let cfg = lossy(7);
            let (rec, got) = run_relay(cfg, &traffic);
            assert_eq!(got, simulate(&cfg, traffic.len()));
            assert_eq!(
                (rec.kernel_drops, rec.send_errors, rec.recv_errors),
                (0, 0, 0)
            );
            assert_eq!(rec.received, traffic.len() as u64);
            assert_eq!(rec.forwarded, got.len() as u64);
            assert!(
                rec.dropped > 0 && rec.duplicated > 0 && rec.held > 0,
                "{rec:?}"
            );
            assert_eq!(rec.raw_received, (traffic.len() / 11) as u64);
            assert!(rec.raw_forwarded > 0);
            let (key, s) = rec.single_stream();
            assert_eq!((key.session, key.stream), (0xfeed, 3));
            assert_eq!(s.unseen(), 0);
            assert_eq!(s.heartbeats_received, 3);
            // what the relay says it let through is what arrived
            let mut arrived: Vec<usize> = got.clone();
            arrived.sort_unstable();
            arrived.dedup();
            let mut bytes = Vec::new();
            for i in arrived {
                if let Datagram::Mpx(r, p) = classify(&traffic[i]) {
                    if r.frame_type == FrameType::Data {
                        bytes.push((r.seq, p.to_vec()));
                    }
                }
            }
            bytes.sort();
            let bytes: Vec<u8> = bytes.into_iter().flat_map(|(_, p)| p).collect();
            assert_eq!(s.expected_bytes(), bytes);
            assert!(s.lost() > 0 && s.gaps() > 0 && s.duplicates() > 0);

            // same seed, same everything; another seed, another outcome
            let (rec2, got2) = run_relay(cfg, &traffic);
            assert_eq!(rec2, rec);
            assert_eq!(got2, got);
            let (rec3, got3) = run_relay(lossy(8), &traffic);
            assert_ne!(got3, got);
            assert_ne!(rec3.single_stream().1, s);
        });
    }

    #[test]
    fn max_hold_bounds_holding_and_stop_flushes() {
        in_netns(|_| {
            let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let hold_all = |max_hold| RelayConfig {
                reorder: 1.0,
                reorder_depth: 1000,
                max_hold,
                ..RelayConfig::default()
            };
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let mut buf = [0u8; 64];

            let relay = LossyRelay::start(
                "127.0.0.1:0".parse().unwrap(),
                sink.local_addr().unwrap(),
                hold_all(Duration::from_millis(60)),
            );
            let t = Instant::now();
            tx.send_to(b"held", relay.local_addr()).unwrap();
            let n = sink.recv(&mut buf).unwrap();
            let waited = t.elapsed();
            assert_eq!(&buf[..n], b"held");
            assert!(waited >= Duration::from_millis(55), "{waited:?}");
            let rec = relay.stop();
            assert_eq!((rec.received, rec.held, rec.forwarded), (1, 1, 1));
            assert_eq!(rec.raw_forwarded, 1);

            let relay = LossyRelay::start(
                "127.0.0.1:0".parse().unwrap(),
                sink.local_addr().unwrap(),
                hold_all(Duration::from_secs(3600)),
            );
            tx.send_to(b"flushed", relay.local_addr()).unwrap();
            crate::wait_until(Duration::from_secs(5), "the relay to hold it", || {
                relay.record().held == 1
            });
            assert_eq!(relay.record().forwarded, 0);
            let rec = relay.stop();
            assert_eq!(rec.forwarded, 1);
            let n = sink.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"flushed");
        });
    }

    #[test]
    #[should_panic(expected = "must be called inside in_netns")]
    fn refuses_to_start_outside_a_private_namespace() {
        let _ = LossyRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            RelayConfig::default(),
        );
    }
}
