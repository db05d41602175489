//! An adversary in the simulation: crafted and random frames interleaved
//! with a legitimate stream, on a virtual clock. Asserts the receiver's
//! work per datagram (operations counted by `ReceiverStats::work`, not
//! time), its memory bounds, what it sends back to forged sources, and
//! that the legitimate stream arrives byte-exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, FeedbackTracker, PathKey, Receiver, ReceiverConfig, Sender, SenderConfig,
    StreamKey, StreamStats, REPORT_LEN,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, emit_nack, Datagram, Flags, FrameType, NackRange, Repr};
use mproxy_testsupport::SplitMix64;

const SENDER: u64 = 0x5eed_1e61;
const LEGIT: StreamKey = StreamKey {
    session: SENDER,
    stream: 1,
};

fn sender_addr() -> SocketAddr {
    "192.0.2.1:9".parse().unwrap()
}

fn attacker_addr() -> SocketAddr {
    "198.51.100.66:4444".parse().unwrap()
}

/// A frame in wire form
fn frame(t: FrameType, flags: Flags, session: u64, stream: u32, seq: u32, p: &[u8]) -> Vec<u8> {
    let r = Repr {
        frame_type: t,
        flags,
        session,
        stream,
        seq,
    };
    let mut b = vec![0u8; 24 + p.len()];
    r.emit_with_payload(&mut b, p).unwrap();
    b
}

/// A NACK of 128 ranges of 65 535 frames from `start` (792 bytes)
fn huge_nack(session: u64, stream: u32, start: u32) -> Vec<u8> {
    let ranges: Vec<NackRange> = (0..128)
        .map(|i| NackRange {
            start: start.wrapping_add(i * 65535),
            count: 65535,
        })
        .collect();
    let mut p = Vec::new();
    emit_nack(&ranges, &mut p);
    frame(FrameType::Nack, Flags::NONE, session, stream, 0, &p)
}

fn lines(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(len);
    let mut n = 0u64;
    while v.len() < len {
        v.extend_from_slice(format!("{n:08},").as_bytes());
        for _ in 0..rng.range(5, 120) {
            v.push(b'a' + (rng.next_u64() % 26) as u8);
        }
        v.push(b'\n');
        n += 1;
    }
    v
}

/// What the adversary sees of the legitimate stream at each tick
struct View {
    tick: u64,
    /// next sequence number of the legitimate sender
    legit_next: u32,
}

/// On the link: (arrival, tiebreak, to the receiver?, claimed source, bytes)
type InFlight = (Instant, u64, bool, SocketAddr, Vec<u8>);

/// Datagrams the adversary sends at a tick: (claimed source, bytes)
type Attack = Box<dyn FnMut(&View) -> Vec<(SocketAddr, Vec<u8>)>>;

/// A legitimate stream that starts at `start` (from t0)
#[derive(Clone)]
struct Legit {
    session: u64,
    input: Vec<u8>,
    start: Duration,
}

struct Run {
    rx: Receiver,
    delivered: BTreeMap<StreamKey, Vec<u8>>,
    closed: BTreeMap<StreamKey, (CloseReason, StreamStats)>,
    opened_at: BTreeMap<StreamKey, Duration>,
    first_frame_at: BTreeMap<StreamKey, Duration>,
    /// most work one hostile datagram cost, and one legitimate one
    max_hostile_work: u64,
    max_legit_work: u64,
    hostile: u64,
    /// work of all timers, and datagrams handled
    timer_work: u64,
    datagrams: u64,
    /// replies sent to each address: (datagrams, bytes)
    replies: BTreeMap<SocketAddr, (u64, u64)>,
    /// datagrams and bytes each address sent
    sent_from: BTreeMap<SocketAddr, (u64, u64)>,
    peak_streams: usize,
    peak_buffered: usize,
    end: Duration,
}

/// Drive the legitimate senders (NACK repair over a 1 ms link each way,
/// `loss` of the legitimate frames lost) and the adversary into one
/// receiver until every legitimate stream closed or `limit` passed.
/// Path feedback is tracked as the server does (its table is a linear
/// scan per new path: slow in a debug build under a session flood, so
/// only the tests of reflection use it).
fn run(
    rcfg: ReceiverConfig,
    legit: Vec<Legit>,
    loss: f64,
    mut attack: Attack,
    limit: Duration,
) -> Run {
    run_with(rcfg, legit, loss, &mut attack, limit, true)
}

/// [`run`] with path feedback on or off
fn run_with(
    rcfg: ReceiverConfig,
    legit: Vec<Legit>,
    loss: f64,
    attack: &mut Attack,
    limit: Duration,
    feedback: bool,
) -> Run {
    let t0 = Instant::now();
    let scfg = SenderConfig {
        max_datagram: 24 + 300,
        framing: Framing::Lines,
        heartbeat_interval: Duration::from_millis(200),
        repair_buffer: 8 << 20,
    };
    let mut senders: Vec<Sender> = legit
        .iter()
        .map(|l| Sender::new(l.session, 1, &scfg))
        .collect();
    let mut offsets = vec![0usize; legit.len()];
    let mut rx = Receiver::new(rcfg);
    let mut fb = FeedbackTracker::new(Duration::from_millis(100), 4096);
    let mut rng = SplitMix64::new(7);
    // (arrival, tiebreak, to the receiver?, claimed source, bytes)
    let mut link: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut n = 0u64;
    let mut out = Run {
        rx: Receiver::new(ReceiverConfig::default()),
        delivered: BTreeMap::new(),
        closed: BTreeMap::new(),
        opened_at: BTreeMap::new(),
        first_frame_at: BTreeMap::new(),
        max_hostile_work: 0,
        max_legit_work: 0,
        hostile: 0,
        timer_work: 0,
        datagrams: 0,
        replies: BTreeMap::new(),
        sent_from: BTreeMap::new(),
        peak_streams: 0,
        peak_buffered: 0,
        end: Duration::ZERO,
    };
    let tick = Duration::from_micros(500);
    let mut now = t0;
    let mut i = 0u64;
    let legit_keys: Vec<StreamKey> = legit
        .iter()
        .map(|l| StreamKey {
            session: l.session,
            stream: 1,
        })
        .collect();
    let mut report = vec![0u8; REPORT_LEN];
    loop {
        // legitimate senders: 900 bytes a tick each once started
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for (k, s) in senders.iter_mut().enumerate() {
            let l = &legit[k];
            if now < t0 + l.start {
                continue;
            }
            if offsets[k] < l.input.len() {
                let end = (offsets[k] + 900).min(l.input.len());
                s.push(now, &l.input[offsets[k]..end], |f| frames.push(f.to_vec()));
                offsets[k] = end;
                if end == l.input.len() {
                    s.finish(now, |f| frames.push(f.to_vec()));
                }
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now, |f| frames.push(f.to_vec()));
            }
        }
        for f in frames {
            if (rng.next_u64() as f64 / u64::MAX as f64) < loss {
                continue;
            }
            n += 1;
            link.push(Reverse((
                now + Duration::from_millis(1),
                n,
                true,
                sender_addr(),
                f,
            )));
        }
        // the adversary
        let view = View {
            tick: i,
            legit_next: senders.first().map_or(0, Sender::next_seq),
        };
        for (from, bytes) in attack(&view) {
            n += 1;
            // u64::MAX marks hostile datagrams (tiebreak order is kept by n)
            link.push(Reverse((now, n | 1 << 63, true, from, bytes)));
        }
        // arrivals
        while let Some(Reverse((at, ..))) = link.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, tag, to_rx, from, bytes)) = link.pop().unwrap();
            if !to_rx {
                if let Datagram::Mpx(r, p) = classify(&bytes) {
                    if r.frame_type == FrameType::Nack {
                        for (k, key) in legit_keys.iter().enumerate() {
                            if r.session == key.session {
                                let mut resent = Vec::new();
                                senders[k].handle_nack(now, p, |f| resent.push(f.to_vec()));
                                for f in resent {
                                    n += 1;
                                    link.push(Reverse((
                                        now + Duration::from_millis(1),
                                        n,
                                        true,
                                        sender_addr(),
                                        f,
                                    )));
                                }
                            }
                        }
                    }
                }
                continue;
            }
            let e = out.sent_from.entry(from).or_default();
            e.0 += 1;
            e.1 += bytes.len() as u64;
            let datagram = classify(&bytes);
            if let Datagram::Mpx(repr, payload) = &datagram {
                if feedback {
                    fb.on_frame(now, PathKey { listener: 0, from }, repr, payload);
                }
                let key = StreamKey {
                    session: repr.session,
                    stream: repr.stream,
                };
                if legit_keys.contains(&key) && from == sender_addr() {
                    out.first_frame_at.entry(key).or_insert(now - t0);
                }
            }
            let before = rx.stats().work;
            rx.handle_classified_on(now, from, 0, datagram);
            let w = rx.stats().work - before;
            out.datagrams += 1;
            if tag & (1 << 63) != 0 {
                out.hostile += 1;
                out.max_hostile_work = out.max_hostile_work.max(w);
            } else {
                out.max_legit_work = out.max_legit_work.max(w);
            }
        }
        let before = rx.stats().work;
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        out.timer_work += rx.stats().work - before;
        while let Some((path, len)) = fb.poll_transmit(now, &mut report) {
            if rx.allow_reply(path.from, len) {
                let e = out.replies.entry(path.from).or_default();
                e.0 += 1;
                e.1 += len as u64;
            }
        }
        while let Some(t) = rx.poll_transmit() {
            let e = out.replies.entry(t.to).or_default();
            e.0 += 1;
            e.1 += t.bytes.len() as u64;
            if t.to == sender_addr() {
                n += 1;
                link.push(Reverse((
                    now + Duration::from_millis(1),
                    n,
                    false,
                    t.to,
                    t.bytes,
                )));
            }
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Data { key, payload } => {
                    if legit_keys.contains(&key) {
                        out.delivered
                            .entry(key)
                            .or_default()
                            .extend_from_slice(&payload);
                    }
                    rx.recycle(payload);
                }
                Event::Opened { key, .. } => {
                    out.opened_at.entry(key).or_insert(now - t0);
                }
                Event::Closed { key, reason, stats } => {
                    if legit_keys.contains(&key) {
                        out.closed.insert(key, (reason, stats));
                    }
                }
                Event::Gap { .. } => {}
            }
        }
        out.peak_streams = out.peak_streams.max(rx.stream_count());
        out.peak_buffered = out.peak_buffered.max(rx.buffered_bytes());
        if legit_keys.iter().all(|k| out.closed.contains_key(k)) || now - t0 >= limit {
            break;
        }
        now += tick;
        i += 1;
    }
    out.end = now - t0;
    out.rx = rx;
    out
}

fn no_attack() -> Attack {
    Box::new(|_| Vec::new())
}

fn nack_config() -> ReceiverConfig {
    ReceiverConfig {
        nack: true,
        window: true,
        jitter_seed: 3,
        ..ReceiverConfig::default()
    }
}

/// Legit stream(s) byte-exact, closed by FIN with nothing lost
fn assert_exact(r: &Run, legit: &[Legit]) {
    for l in legit {
        let key = StreamKey {
            session: l.session,
            stream: 1,
        };
        let got = r.delivered.get(&key).map_or(&[][..], |v| &v[..]);
        assert!(
            got == &l.input[..],
            "{key}: {} of {} bytes; closed {:?}; {:?}",
            got.len(),
            l.input.len(),
            r.closed.get(&key),
            r.rx.stats()
        );
        let (reason, stats) = r.closed[&key];
        assert_eq!(reason, CloseReason::Fin, "{key}: {stats}");
        assert_eq!((stats.lost, stats.late), (0, 0), "{key}: {stats}");
    }
}

fn one_legit(len: usize) -> Vec<Legit> {
    vec![Legit {
        session: SENDER,
        input: lines(1, len),
        start: Duration::ZERO,
    }]
}

/// The baseline: without an adversary the harness delivers exactly
#[test]
fn harness_delivers_the_stream_exactly() {
    let legit = one_legit(200_000);
    let r = run(
        nack_config(),
        one_legit(200_000),
        0.02,
        no_attack(),
        Duration::from_secs(10),
    );
    assert_exact(&r, &legit);
    assert!(r.closed[&LEGIT].1.repaired > 0);
}

/// Attack 1 of issue 13: OPEN for a made-up session, a heartbeat at
/// 2^30 - 1, then NACKs of 128 ranges of 65 535 frames. Each cost the
/// receiver 541 million range checks (0.27-0.6 s); now a few hundred
/// operations, and the legitimate stream beside it loses nothing.
#[test]
fn crafted_nacks_cost_a_bounded_amount_of_work() {
    let legit = one_legit(300_000);
    let attack: Attack = Box::new(|v: &View| {
        let (s, a) = (0xbad, attacker_addr());
        match v.tick {
            0 => vec![(a, frame(FrameType::Data, Flags::OPEN, s, 1, 0, b"x"))],
            1 => vec![
                (
                    a,
                    frame(
                        FrameType::Heartbeat,
                        Flags::NONE,
                        s,
                        1,
                        (1 << 30) - 1,
                        &[0; 8],
                    ),
                ),
                // one within the jump limit: a stream that waits
                (
                    a,
                    frame(FrameType::Heartbeat, Flags::NONE, s, 1, 4000, &[0; 8]),
                ),
            ],
            // nine bursts of NACKs, for the made-up stream and the live one
            t if t % 40 == 2 && t < 400 => (0..8)
                .flat_map(|_| {
                    [
                        (a, huge_nack(s, 1, 1)),
                        (a, huge_nack(SENDER, 1, v.legit_next.wrapping_sub(10))),
                    ]
                })
                .collect(),
            _ => Vec::new(),
        }
    });
    let r = run(
        nack_config(),
        one_legit(300_000),
        0.01,
        attack,
        Duration::from_secs(10),
    );
    eprintln!(
        "{} hostile datagrams, max work {} (legit max {}), {:?}",
        r.hostile,
        r.max_hostile_work,
        r.max_legit_work,
        r.rx.stats()
    );
    assert_exact(&r, &legit);
    assert!(r.hostile >= 140);
    // 128 ranges, each a few interval operations
    assert!(r.max_hostile_work <= 1024, "{}", r.max_hostile_work);
    assert!(r.rx.stats().too_far >= 1);
}

/// Attack 2: gap-bomb heartbeats for the live stream, from the
/// attacker's own address and with the sender's address forged
#[test]
fn gap_bomb_heartbeats_make_no_frame_late() {
    let legit = one_legit(300_000);
    let attack: Attack = Box::new(|v: &View| {
        // every 25 ms for 2 s: during the transfer and after its end
        if v.tick % 50 != 25 || v.tick > 4000 {
            return Vec::new();
        }
        let hb = |seq: u32| frame(FrameType::Heartbeat, Flags::NONE, SENDER, 1, seq, &[0; 8]);
        vec![
            (
                attacker_addr(),
                hb(v.legit_next.wrapping_add((1 << 30) - 1)),
            ),
            (sender_addr(), hb(v.legit_next.wrapping_add((1 << 30) - 1))),
            (attacker_addr(), hb(v.legit_next.wrapping_add(3000))),
            (sender_addr(), hb(v.legit_next.wrapping_add(3000))),
        ]
    });
    let r = run(
        nack_config(),
        one_legit(300_000),
        0.01,
        attack,
        Duration::from_secs(10),
    );
    eprintln!("{:?}", r.rx.stats());
    assert_exact(&r, &legit);
    let st = r.rx.stats();
    assert!(st.too_far > 0 && st.unverified_heartbeats > 0, "{st:?}");
    assert!(r.max_hostile_work <= 4 * 1024, "{}", r.max_hostile_work);
}

/// A FIN forged for the live stream: as a heartbeat from elsewhere (no
/// effect), with the sender's address at its current position (the
/// stream's own frames beyond it revoke it), and as DATA far ahead
#[test]
fn forged_fin_does_not_cut_a_live_stream() {
    let legit = one_legit(300_000);
    let attack: Attack = Box::new(|v: &View| {
        if v.tick % 60 != 30 || v.tick > 600 {
            return Vec::new();
        }
        let fin_hb = |seq: u32| frame(FrameType::Heartbeat, Flags::FIN, SENDER, 1, seq, &[0; 8]);
        vec![
            (attacker_addr(), fin_hb(v.legit_next)),
            (sender_addr(), fin_hb(v.legit_next)),
            (
                attacker_addr(),
                frame(
                    FrameType::Data,
                    Flags::FIN,
                    SENDER,
                    1,
                    v.legit_next.wrapping_add(5000),
                    b"",
                ),
            ),
        ]
    });
    let r = run(
        nack_config(),
        one_legit(300_000),
        0.0,
        attack,
        Duration::from_secs(10),
    );
    eprintln!("{:?}", r.rx.stats());
    assert_exact(&r, &legit);
    assert!(r.rx.stats().fin_refused > 0, "{:?}", r.rx.stats());
}

/// Attack 4: frames with a forged source (a victim's address) for
/// made-up sessions and for the live one: the receiver sends the victim
/// at most one datagram, and no more bytes, per datagram it received
#[test]
fn forged_sources_get_back_no_more_than_they_sent() {
    let victim: SocketAddr = "203.0.113.9:53".parse().unwrap();
    let legit = one_legit(200_000);
    let attack: Attack = Box::new(move |v: &View| {
        let s = 0x7000 + v.tick / 20;
        let seq = (v.tick % 20) as u32;
        let mut out = vec![
            // a stream with gaps (NACKs) and heartbeats (WINDOW answers)
            (
                victim,
                frame(
                    FrameType::Data,
                    if seq == 0 { Flags::OPEN } else { Flags::NONE },
                    s,
                    1,
                    seq * 3,
                    b"",
                ),
            ),
            (
                victim,
                frame(
                    FrameType::Heartbeat,
                    Flags::NONE,
                    s,
                    1,
                    seq * 3 + 40,
                    &[0; 8],
                ),
            ),
        ];
        if v.tick % 10 == 0 {
            out.push((
                victim,
                frame(
                    FrameType::Heartbeat,
                    Flags::NONE,
                    SENDER,
                    1,
                    v.legit_next + 50,
                    &[0; 8],
                ),
            ));
        }
        out
    });
    let r = run(
        nack_config(),
        one_legit(200_000),
        0.01,
        attack,
        Duration::from_secs(10),
    );
    assert_exact(&r, &legit);
    let (d_in, b_in) = r.sent_from[&victim];
    let (d_out, b_out) = r.replies.get(&victim).copied().unwrap_or_default();
    eprintln!("victim sent {d_in} datagrams / {b_in} bytes, got back {d_out} / {b_out}");
    assert!(
        d_out <= d_in && b_out <= b_in,
        "reflection {d_out}/{d_in} datagrams, {b_out}/{b_in} bytes"
    );
    assert!(d_out > 0, "the victim's made-up streams still get answers");
    assert!(r.rx.stats().replies_withheld > 0);
}

/// Attack 5a: 60 000 one-frame sessions in 0.3 s while one stream is
/// delivering and another starts: both arrive whole, the new one gets in
/// within a second of its first frame, memory stays bounded
#[test]
fn a_flood_of_sessions_spares_live_and_new_streams() {
    let legit = vec![
        Legit {
            session: SENDER,
            input: lines(1, 300_000),
            start: Duration::ZERO,
        },
        Legit {
            session: SENDER + 1,
            input: lines(2, 100_000),
            start: Duration::from_millis(150),
        },
    ];
    let cfg = ReceiverConfig {
        max_streams: 1024,
        ..nack_config()
    };
    let attack: Attack = Box::new(|v: &View| {
        // 60 000 sessions over ticks 200..800 (0.1 s .. 0.4 s): 100 per tick
        if !(200..800).contains(&v.tick) {
            return Vec::new();
        }
        (0..100u64)
            .map(|j| {
                let s = 0xf100d << 20 | (v.tick * 100 + j);
                (
                    SocketAddr::from(([10, 9, (j % 250) as u8, 1], 5000)),
                    frame(FrameType::Data, Flags::OPEN, s, 1, 0, b"flood\n"),
                )
            })
            .collect()
    });
    let mut attack = attack;
    let r = run_with(
        cfg,
        legit.clone(),
        0.0,
        &mut attack,
        Duration::from_secs(10),
        false,
    );
    let st = r.rx.stats();
    eprintln!(
        "flood: {} hostile, peak {} streams, {} buffered; opened {:?} first frames {:?}; {st:?}",
        r.hostile, r.peak_streams, r.peak_buffered, r.opened_at, r.first_frame_at
    );
    assert_exact(&r, &legit);
    assert_eq!(r.hostile, 60_000);
    assert!(r.peak_streams <= 1024);
    // the largest single step is rebuilding the timer heap (amortized:
    // once per thousands of evictions), bounded by the table size
    assert!(r.max_hostile_work <= 6 * 1024, "{}", r.max_hostile_work);
    let new = StreamKey {
        session: SENDER + 1,
        stream: 1,
    };
    assert!(r.opened_at[&new] <= r.first_frame_at[&new] + Duration::from_secs(1));
    assert!(st.streams_evicted > 50_000, "{st:?}");
}

/// Attack 5b: 1 024 sessions kept alive at a frame a second fill the
/// table; a new stream that keeps sending still gets in within a second
/// and arrives whole
#[test]
fn kept_alive_sessions_do_not_lock_out_a_new_stream() {
    let legit = vec![Legit {
        session: SENDER,
        input: lines(3, 200_000),
        start: Duration::from_secs(10),
    }];
    let cfg = ReceiverConfig {
        max_streams: 1024,
        ..nack_config()
    };
    let attack: Attack = Box::new(|v: &View| {
        // each session sends one frame a second (2 000 ticks), spread out
        let k = v.tick % 2000;
        if k >= 1024 {
            return Vec::new();
        }
        let seq = (v.tick / 2000) as u32;
        let flags = if seq == 0 { Flags::OPEN } else { Flags::NONE };
        vec![(
            SocketAddr::from(([10, 8, (k >> 8) as u8, k as u8], 5000)),
            frame(FrameType::Data, flags, 0xa11e << 16 | k, 1, seq, b"alive\n"),
        )]
    });
    let mut attack = attack;
    let r = run_with(
        cfg,
        legit.clone(),
        0.0,
        &mut attack,
        Duration::from_secs(30),
        false,
    );
    let st = r.rx.stats();
    eprintln!(
        "kept alive: peak {} streams; opened {:?} first {:?}; {st:?}",
        r.peak_streams,
        r.opened_at.get(&LEGIT),
        r.first_frame_at.get(&LEGIT)
    );
    assert_exact(&r, &legit);
    assert!(r.peak_streams <= 1024);
    assert!(r.opened_at[&LEGIT] <= r.first_frame_at[&LEGIT] + Duration::from_secs(1));
    assert!(st.streams_displaced >= 1, "{st:?}");
    // timers of a thousand idle-ish streams cost a few operations per
    // datagram, not a busy loop
    assert!(
        r.timer_work <= 64 * r.datagrams,
        "{} / {}",
        r.timer_work,
        r.datagrams
    );
}

/// Random frames of every type, for made-up sessions and for the live
/// stream's session (all but its DATA: that a key would stop), and
/// random garbage, interleaved with the stream: byte-exact, bounded
#[test]
fn random_frames_beside_a_stream_are_harmless() {
    let legit = one_legit(300_000);
    let cfg = ReceiverConfig {
        max_streams: 64,
        memory_limit: 1 << 20,
        ..nack_config()
    };
    let mut rng = SplitMix64::new(99);
    let attack: Attack = Box::new(move |v: &View| {
        let mut out = Vec::new();
        for _ in 0..4 {
            let from = SocketAddr::from(([10, 7, 0, (rng.next_u64() % 8) as u8], 7));
            let t = FrameType::from((rng.next_u64() % 9) as u8);
            let legit_session = rng.next_u64() % 4 == 0;
            if legit_session && t == FrameType::Data {
                continue;
            }
            let session = if legit_session {
                SENDER
            } else {
                rng.next_u64() % 32
            };
            let seq = match rng.next_u64() % 4 {
                0 => rng.next_u64() as u32,
                1 => v.legit_next.wrapping_add((rng.next_u64() % 5000) as u32),
                _ => (rng.next_u64() % 3000) as u32,
            };
            let mut payload = vec![0u8; rng.range(0, 800)];
            rng.fill(&mut payload);
            let flags = Flags((rng.next_u64() % 16) as u8);
            out.push((from, frame(t, flags, session, 1, seq, &payload)));
            let mut junk = vec![0u8; rng.range(0, 100)];
            rng.fill(&mut junk);
            if !junk.is_empty() {
                junk[0] = 0xa7;
            }
            out.push((from, junk));
        }
        out
    });
    let r = run(
        cfg,
        one_legit(300_000),
        0.01,
        attack,
        Duration::from_secs(10),
    );
    let st = r.rx.stats();
    eprintln!(
        "random: {} hostile, max work {} (timers {} over {} datagrams), peak {} streams, {} buffered; {st:?}",
        r.hostile, r.max_hostile_work, r.timer_work, r.datagrams, r.peak_streams, r.peak_buffered
    );
    assert_exact(&r, &legit);
    assert!(r.peak_streams <= 64);
    // one frame of slack per stream over the limit
    assert!(r.peak_buffered <= (1 << 20) + 64 * 800);
    assert!(r.max_hostile_work <= 4 * 1024, "{}", r.max_hostile_work);
    // timers cost a few operations per datagram on average
    assert!(
        r.timer_work <= 64 * r.datagrams,
        "{} / {}",
        r.timer_work,
        r.datagrams
    );
}
