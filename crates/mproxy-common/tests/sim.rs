//! Deterministic simulation: Sender -> seeded lossy, reordering,
//! duplicating link -> Receiver, on a virtual clock. Every counter is
//! checked exactly against what the link did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, FecConfig, Join, Receiver, ReceiverConfig, Sender, SenderConfig, StreamKey,
    StreamStats,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram, FecRepr, FrameType};
use mproxy_testsupport::SplitMix64;

struct LinkConfig {
    drop: f64,
    dup: f64,
    base_delay: Duration,
    jitter: Duration,
}

#[derive(Default, Debug)]
struct Truth {
    /// per (stream, seq): (payload, copies delivered by the link)
    frames: BTreeMap<(StreamKey, u64), (Vec<u8>, u32)>,
    /// per stream: did any closing information (FIN frame or FIN heartbeat) arrive
    end_known: BTreeMap<StreamKey, bool>,
    /// per (stream, block base): (k, FEC frames delivered by the link)
    fec_blocks: BTreeMap<(StreamKey, u64), (u64, u64)>,
    /// FEC frames sent, and their bytes
    fec_frames: u64,
    fec_bytes: u64,
    /// bytes of DATA frames sent (headers included)
    data_bytes: u64,
}

struct Sim {
    rng: SplitMix64,
    link: LinkConfig,
    t0: Instant,
    /// (arrival time, tiebreak) -> datagram
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    counter: u64,
    truth: Truth,
}

impl Sim {
    fn new(seed: u64, link: LinkConfig) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            link,
            t0: Instant::now(),
            queue: BinaryHeap::new(),
            counter: 0,
            truth: Truth::default(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// The link: drop, duplicate, delay with jitter (which reorders)
    fn transmit(&mut self, now: Instant, frame: &[u8]) {
        let copies = if self.chance(self.link.dup) { 2 } else { 1 };
        let mut arrived = 0;
        for _ in 0..copies {
            if self.chance(self.link.drop) {
                continue;
            }
            arrived += 1;
            let jitter = self.rng.next_u64() % (self.link.jitter.as_micros() as u64 + 1);
            let at = now + self.link.base_delay + Duration::from_micros(jitter);
            self.counter += 1;
            self.queue.push(Reverse((at, self.counter, frame.to_vec())));
        }
        let Datagram::Mpx(r, p) = classify(frame) else {
            panic!("sender emitted non-mpx")
        };
        let key = StreamKey {
            session: r.session,
            stream: r.stream,
        };
        match r.frame_type {
            FrameType::Fec => {
                let (fec, _) = FecRepr::parse(p).unwrap();
                let e = self
                    .truth
                    .fec_blocks
                    .entry((key, u64::from(r.seq)))
                    .or_insert((u64::from(fec.k), 0));
                e.1 += u64::from(arrived);
                self.truth.fec_frames += 1;
                self.truth.fec_bytes += frame.len() as u64;
            }
            FrameType::Data => {
                self.truth.data_bytes += frame.len() as u64;
                let e = self
                    .truth
                    .frames
                    .entry((key, u64::from(r.seq)))
                    .or_insert((p.to_vec(), 0));
                e.1 += arrived;
                if r.flags.contains(mproxy_common::wire::Flags::FIN) && arrived > 0 {
                    self.truth.end_known.insert(key, true);
                }
            }
            FrameType::Heartbeat => {
                if r.flags.contains(mproxy_common::wire::Flags::FIN) && arrived > 0 {
                    self.truth.end_known.insert(key, true);
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
}

struct Outcome {
    delivered: BTreeMap<StreamKey, Vec<u8>>,
    closed: BTreeMap<StreamKey, (CloseReason, StreamStats)>,
    gaps: BTreeMap<StreamKey, Vec<(u64, u64)>>,
}

/// Run `streams` senders, each pushing `chunks` of input every `tick`
fn run(
    seed: u64,
    link: LinkConfig,
    inputs: &[Vec<u8>],
    rcfg: ReceiverConfig,
) -> (Sim, Outcome, Receiver) {
    run_fec(seed, link, inputs, rcfg, None)
}

/// [`run`] with senders protecting their frames with FEC
fn run_fec(
    seed: u64,
    link: LinkConfig,
    inputs: &[Vec<u8>],
    rcfg: ReceiverConfig,
    fec: Option<FecConfig>,
) -> (Sim, Outcome, Receiver) {
    let mut sim = Sim::new(seed, link);
    let scfg = SenderConfig {
        max_datagram: 24 + 200,
        framing: Framing::Lines,
        heartbeat_interval: Duration::from_millis(100),
        ..SenderConfig::default()
    };
    let mut senders: Vec<Sender> = (0..inputs.len())
        .map(|i| {
            let mut s = Sender::new(0x5eed_0000 + i as u64, i as u32 + 1, &scfg);
            s.enable_fec(fec, |_| {});
            s
        })
        .collect();
    let mut offsets = vec![0usize; inputs.len()];
    // the link may lose a stream's first frames: account from seq 0
    let mut rx = Receiver::new(ReceiverConfig {
        join: Join::Earliest,
        ..rcfg
    });
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut out = Outcome {
        delivered: BTreeMap::new(),
        closed: BTreeMap::new(),
        gaps: BTreeMap::new(),
    };
    let tick = Duration::from_micros(500);
    let mut now = sim.t0;
    let mut next_push = sim.t0;
    loop {
        // 1. senders push a chunk each tick until their input is done
        if now >= next_push {
            for (i, s) in senders.iter_mut().enumerate() {
                let input = &inputs[i];
                if offsets[i] < input.len() {
                    let end = (offsets[i] + 700).min(input.len());
                    let mut frames = Vec::new();
                    s.push(now, &input[offsets[i]..end], |f| frames.push(f.to_vec()));
                    offsets[i] = end;
                    if end == input.len() {
                        s.finish(now, |f| frames.push(f.to_vec()));
                    }
                    for f in frames {
                        sim.transmit(now, &f);
                    }
                }
            }
            next_push = now + tick;
        }
        // 2. sender timers
        for s in senders.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                let mut frames = Vec::new();
                s.handle_timeout(now, |f| frames.push(f.to_vec()));
                for f in frames {
                    sim.transmit(now, &f);
                }
            }
        }
        // 3. arrivals due now
        while sim
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Reverse((_, _, d)) = sim.queue.pop().unwrap();
            assert!(rx.handle_datagram(now, from, &d).is_none());
        }
        // 4. receiver timers
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Data { key, payload } => {
                    out.delivered
                        .entry(key)
                        .or_default()
                        .extend_from_slice(&payload);
                    rx.recycle(payload);
                }
                Event::Gap { key, first, count } => {
                    out.gaps.entry(key).or_default().push((first, count))
                }
                Event::Closed { key, reason, stats } => {
                    out.closed.insert(key, (reason, stats));
                }
                Event::Opened { .. } => {}
            }
        }
        // 5. advance the virtual clock to the next thing that happens
        let mut next = Vec::new();
        if offsets.iter().zip(inputs).any(|(o, i)| *o < i.len()) {
            next.push(next_push);
        }
        next.extend(senders.iter().filter_map(Sender::poll_timeout));
        if let Some(Reverse((at, _, _))) = sim.queue.peek() {
            next.push(*at);
        }
        next.extend(rx.poll_timeout());
        match next.into_iter().min() {
            Some(t) => now = t.max(now + Duration::from_nanos(1)),
            None => break,
        }
        assert!(
            now - sim.t0 < Duration::from_secs(600),
            "simulation did not settle"
        );
    }
    (sim, out, rx)
}

fn lines(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(len);
    let mut n = 0u64;
    while v.len() < len {
        let width = rng.range(5, 150);
        v.extend_from_slice(format!("{n:08},").as_bytes());
        for _ in 0..width {
            v.push(b'a' + (rng.next_u64() % 26) as u8);
        }
        v.push(b'\n');
        n += 1;
    }
    v
}

/// Check every delivered byte and counter against the link's record
fn check(sim: &Sim, out: &Outcome, streams: usize) {
    assert_eq!(out.closed.len(), streams, "every stream closes");
    let keys: Vec<StreamKey> = out.closed.keys().copied().collect();
    for key in keys {
        let frames: Vec<_> = sim.truth.frames.range((key, 0)..=(key, u64::MAX)).collect();
        let mut want = Vec::new();
        let (mut lost, mut dups, mut datagrams, mut runs) = (0u64, 0u64, 0u64, 0u64);
        let mut prev_lost = false;
        for ((_, _), (payload, copies)) in &frames {
            if *copies == 0 {
                lost += 1;
                if !prev_lost {
                    runs += 1;
                }
                prev_lost = true;
            } else {
                want.extend_from_slice(payload);
                dups += u64::from(*copies - 1);
                datagrams += 1;
                prev_lost = false;
            }
        }
        let (reason, stats) = out.closed[&key];
        assert!(
            sim.truth.end_known.get(&key).copied().unwrap_or(false),
            "seed must deliver a FIN"
        );
        assert_eq!(reason, CloseReason::Fin, "{key}");
        let got = out.delivered.get(&key).cloned().unwrap_or_default();
        assert!(
            got == want,
            "{key}: delivered {} bytes, expected {}",
            got.len(),
            want.len()
        );
        assert_eq!(stats.lost, lost, "{key} lost");
        if stats.gaps != runs {
            let lost_seqs: Vec<u64> = frames
                .iter()
                .filter(|(_, (_, c))| *c == 0)
                .map(|((_, q), _)| *q)
                .collect();
            eprintln!(
                "truth lost: {lost_seqs:?}\nreceiver gaps: {:?}",
                out.gaps.get(&key)
            );
        }
        assert_eq!(stats.gaps, runs, "{key} gaps");
        assert_eq!(stats.duplicates, dups, "{key} duplicates");
        assert_eq!(stats.late, 0, "{key} late");
        assert_eq!(stats.datagrams, datagrams, "{key} datagrams");
        assert_eq!(stats.bytes, want.len() as u64, "{key} bytes");
        let gap_total: u64 = out
            .gaps
            .get(&key)
            .map_or(0, |g| g.iter().map(|(_, c)| c).sum());
        assert_eq!(
            gap_total, lost,
            "{key}: Gap events add up to the lost count"
        );
    }
}

#[test]
fn clean_link_is_exact() {
    let inputs = vec![lines(1, 300_000)];
    let link = LinkConfig {
        drop: 0.0,
        dup: 0.0,
        base_delay: Duration::from_millis(5),
        jitter: Duration::ZERO,
    };
    let (sim, out, rx) = run(1, link, &inputs, ReceiverConfig::default());
    check(&sim, &out, 1);
    let stats = out.closed.values().next().unwrap().1;
    assert_eq!((stats.lost, stats.duplicates, stats.reordered), (0, 0, 0));
    assert_eq!(rx.stream_count(), 0);
    assert_eq!(rx.buffered_bytes(), 0);
}

#[test]
fn lossy_reordering_duplicating_link_accounts_exactly() {
    for seed in [2u64, 3, 4, 5, 6] {
        let inputs = vec![
            lines(seed, 200_000),
            lines(seed + 100, 150_000),
            lines(seed + 200, 50_000),
        ];
        let link = LinkConfig {
            drop: 0.05,
            dup: 0.05,
            base_delay: Duration::from_millis(10),
            jitter: Duration::from_millis(30),
        };
        let rcfg = ReceiverConfig {
            reorder_timeout: Duration::from_millis(100),
            ..ReceiverConfig::default()
        };
        let (sim, out, rx) = run(seed, link, &inputs, rcfg);
        check(&sim, &out, 3);
        let total: StreamStats =
            out.closed
                .values()
                .fold(StreamStats::default(), |mut a, (_, s)| {
                    a.lost += s.lost;
                    a.reordered += s.reordered;
                    a.duplicates += s.duplicates;
                    a
                });
        assert!(
            total.lost > 0 && total.reordered > 0 && total.duplicates > 0,
            "seed {seed}: {total:?}"
        );
        assert_eq!(rx.buffered_bytes(), 0);
    }
}

#[test]
fn tail_loss_is_detected_by_closing_heartbeats() {
    // a link that drops the last data frames and the FIN frame of the stream
    // still ends with Fin and counts them, thanks to the FIN heartbeats
    let input = lines(9, 20_000);
    let scfg = SenderConfig {
        max_datagram: 24 + 200,
        framing: Framing::Lines,
        heartbeat_interval: Duration::from_millis(100),
        ..SenderConfig::default()
    };
    let mut s = Sender::new(7, 1, &scfg);
    let mut rx = Receiver::new(ReceiverConfig {
        reorder_timeout: Duration::from_millis(50),
        ..ReceiverConfig::default()
    });
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let t0 = Instant::now();
    let mut frames = Vec::new();
    s.push(t0, &input, |f| frames.push(f.to_vec()));
    s.finish(t0, |f| frames.push(f.to_vec()));
    let n = frames.len();
    let mut want = Vec::new();
    for f in &frames[..n - 4] {
        assert!(rx.handle_datagram(t0, from, f).is_none());
        if let Datagram::Mpx(_, p) = classify(f) {
            want.extend_from_slice(p);
        }
    }
    // last 3 data frames and FIN lost; heartbeats arrive
    let mut now = t0;
    while let Some(at) = s.poll_timeout() {
        now = at;
        s.handle_timeout(now, |f| {
            rx.handle_datagram(now, from, f);
        });
    }
    let mut got = Vec::new();
    let mut closed = None;
    for _ in 0..10 {
        now += Duration::from_millis(50);
        rx.handle_timeout(now);
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Data { payload, .. } => got.extend_from_slice(&payload),
                Event::Closed { reason, stats, .. } => closed = Some((reason, stats)),
                _ => {}
            }
        }
    }
    let (reason, stats) = closed.expect("stream closed");
    assert_eq!(reason, CloseReason::Fin);
    assert_eq!(stats.lost, 4);
    assert_eq!(stats.gaps, 1);
    assert!(got == want);
}

#[test]
fn random_session_flood_stays_bounded() {
    let mut rng = SplitMix64::new(77);
    let cfg = ReceiverConfig {
        max_streams: 64,
        memory_limit: 1 << 20,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(cfg);
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let t0 = Instant::now();
    let mut buf = vec![0u8; 24 + 1000];
    for i in 0..200_000u64 {
        let now = t0 + Duration::from_micros(i * 50);
        let repr = mproxy_common::wire::Repr {
            frame_type: FrameType::Data,
            flags: mproxy_common::wire::Flags::NONE,
            session: rng.next_u64(),
            stream: rng.next_u64() as u32,
            // far-ahead sequence numbers force buffering and skipping
            seq: (rng.next_u64() % 5000) as u32 + 1,
        };
        let len = repr.emit_with_payload(&mut buf, &[0x55; 1000]).unwrap();
        rx.handle_datagram(now, from, &buf[..len]);
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        while let Some(ev) = rx.poll_event() {
            if let Event::Data { payload, .. } = ev {
                rx.recycle(payload);
            }
        }
        assert!(rx.stream_count() <= 64);
        // one frame of slack per stream over the global limit
        assert!(
            rx.buffered_bytes() <= (1 << 20) + 64 * 1000,
            "{}",
            rx.buffered_bytes()
        );
    }
    let st = rx.stats();
    assert!(st.streams_rejected + st.streams_evicted > 0, "{st:?}");
    assert_eq!(st.frames, 200_000);
}

#[test]
fn garbage_is_counted_never_panics() {
    let mut rng = SplitMix64::new(5);
    let mut rx = Receiver::new(ReceiverConfig::default());
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let now = Instant::now();
    let mut raw = 0;
    for _ in 0..50_000 {
        let len = rng.range(0, 80);
        let mut b = vec![0u8; len];
        rng.fill(&mut b);
        if len >= 2 && rng.next_u64() % 2 == 0 {
            b[0] = 0xa7;
            b[1] = 0x4d;
        }
        if rx.handle_datagram(now, from, &b).is_some() {
            raw += 1;
        }
    }
    let st = rx.stats();
    assert_eq!(st.raw, raw);
    assert_eq!(
        st.raw + st.truncated + st.unknown_version + st.checksum_errors + st.frames,
        50_000
    );
    assert_eq!(st.frames, 0, "random bytes never pass the CRC32C");
}

/// NACK repair over a link that loses 5% each way (NACKs and repairs
/// included): the receiver gets everything, and the sender re-sends at
/// most 1.5 times what the link lost
#[test]
fn nack_repair_recovers_losses_both_ways() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEEDS") {
        Ok(v) => v.split(',').filter_map(|s| s.parse().ok()).collect(),
        Err(_) => vec![41, 42, 43],
    };
    for seed in seeds {
        let input = lines(seed, 400_000);
        let mut rng = SplitMix64::new(seed);
        let mut chance = |p: f64| (rng.next_u64() as f64 / u64::MAX as f64) < p;
        let scfg = SenderConfig {
            max_datagram: 24 + 400,
            framing: Framing::Lines,
            heartbeat_interval: Duration::from_millis(100),
            repair_buffer: 4 << 20,
        };
        let mut tx = Sender::new(0xabc, 1, &scfg);
        let rcfg = ReceiverConfig {
            nack: true,
            reorder_timeout: Duration::from_millis(400),
            // The window must hold what arrives while a repair is on its
            // way: ~10k frames/s here × up to 5 tries 50 ms apart. The
            // default 1024 frames forced gap 55 out 0.1 ms before its
            // second repair arrived (jitter seed 49).
            reorder_window: 8192,
            jitter_seed: seed,
            // the link may lose the first frames: ask for them too
            join: Join::Earliest,
            ..ReceiverConfig::default()
        };
        let mut rx = Receiver::new(rcfg);
        let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
        let t0 = Instant::now();
        let delay = |r: u64| Duration::from_millis(10) + Duration::from_micros(r % 5000);
        // (arrival, tiebreak, to_receiver, bytes)
        let mut queue: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
        let mut n = 0u64;
        let mut lost_bytes = 0u64;
        let mut now = t0;
        let mut offset = 0;
        let mut got = Vec::new();
        let mut closed = None;
        let mut next_push = t0;
        loop {
            let mut out = Vec::new();
            if offset < input.len() && now >= next_push {
                next_push = now + Duration::from_micros(500);
                let end = (offset + 2000).min(input.len());
                tx.push(now, &input[offset..end], |f| out.push(f.to_vec()));
                offset = end;
                if offset == input.len() {
                    tx.finish(now, |f| out.push(f.to_vec()));
                }
            }
            if tx.poll_timeout().is_some_and(|t| t <= now) {
                tx.handle_timeout(now, |f| out.push(f.to_vec()));
            }
            while let Some(Reverse((at, _, to_rx, d))) = queue.peek().cloned() {
                if at > now {
                    break;
                }
                queue.pop();
                if to_rx {
                    if std::env::var_os("SIM_TRACE").is_some() {
                        if let Datagram::Mpx(r, _) = classify(&d) {
                            eprintln!(
                                "{:?} rx {} seq {} flags {:?}",
                                now - t0,
                                r.frame_type,
                                r.seq,
                                r.flags
                            );
                        }
                    }
                    rx.handle_datagram(now, from, &d);
                } else if let Datagram::Mpx(r, p) = classify(&d) {
                    if std::env::var_os("SIM_TRACE").is_some() {
                        let v: Vec<_> = mproxy_common::wire::parse_nack(p).collect();
                        eprintln!("{:?} tx nack {:?}", now - t0, v);
                    }
                    assert_eq!(r.frame_type, FrameType::Nack);
                    tx.handle_nack(now, p, |f| out.push(f.to_vec()));
                }
            }
            if rx.poll_timeout().is_some_and(|t| t <= now) {
                rx.handle_timeout(now);
            }
            for f in out {
                if chance(0.05) {
                    if matches!(classify(&f), Datagram::Mpx(r, _) if r.frame_type == FrameType::Data)
                    {
                        lost_bytes += f.len() as u64;
                    }
                    continue;
                }
                n += 1;
                let r = rng_delay(n, seed);
                queue.push(Reverse((now + delay(r), n, true, f)));
            }
            while let Some(t) = rx.poll_transmit() {
                if chance(0.05) {
                    continue;
                }
                n += 1;
                let r = rng_delay(n, seed);
                queue.push(Reverse((now + delay(r), n, false, t.bytes)));
            }
            while let Some(ev) = rx.poll_event() {
                match ev {
                    Event::Data { payload, .. } => got.extend_from_slice(&payload),
                    Event::Closed { reason, stats, .. } => closed = Some((reason, stats)),
                    Event::Gap { first, count, .. } if std::env::var_os("SIM_TRACE").is_some() => {
                        eprintln!("{:?} GAP {first} +{count}", now - t0)
                    }
                    _ => {}
                }
            }
            let next = [
                (offset < input.len()).then_some(next_push),
                tx.poll_timeout(),
                queue.peek().map(|Reverse((at, ..))| *at),
                rx.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if closed.is_none() => now = t.max(now + Duration::from_nanos(1)),
                _ => break,
            }
            assert!(now - t0 < Duration::from_secs(120));
        }
        let (reason, stats) = closed.expect("stream closed");
        eprintln!(
            "seed {seed}: rx {:?} tx {:?} lost_bytes {lost_bytes}",
            rx.stats(),
            tx.stats()
        );
        assert_eq!(reason, CloseReason::Fin, "seed {seed}");
        assert_eq!(stats.lost, 0, "seed {seed}: {stats}");
        assert!(
            got == input,
            "seed {seed}: {} of {} bytes",
            got.len(),
            input.len()
        );
        let st = tx.stats();
        assert!(stats.repaired > 0 && st.retransmitted > 0, "{stats} {st:?}");
        assert!(
            st.retransmitted_bytes as f64 <= 1.5 * lost_bytes as f64,
            "seed {seed}: re-sent {} bytes for {lost_bytes} lost",
            st.retransmitted_bytes
        );
        assert_eq!(st.unrecoverable, 0);
    }
}

/// A datagram on the simulated link: (arrival, tiebreak, towards the receiver?, bytes)
type InFlight = (Instant, u64, bool, Vec<u8>);

fn rng_delay(n: u64, seed: u64) -> u64 {
    let mut r = SplitMix64::new(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    r.next_u64()
}

/// Each gap times out on its own clock: with a frame lost every 10 ms and
/// a 100 ms reorder timeout, every loss is declared about 100 ms after it
/// was noticed and the stream closes on FIN soon after the end, instead
/// of gaps queueing one timeout behind another
#[test]
fn gaps_time_out_independently() {
    let scfg = SenderConfig {
        max_datagram: 24 + 100,
        framing: Framing::Bytes,
        heartbeat_interval: Duration::from_millis(100),
        ..SenderConfig::default()
    };
    let mut tx = Sender::new(5, 1, &scfg);
    let mut rx = Receiver::new(ReceiverConfig {
        reorder_timeout: Duration::from_millis(100),
        ..ReceiverConfig::default()
    });
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let t0 = Instant::now();
    let mut frames = Vec::new();
    for i in 0..200u64 {
        let now = t0 + Duration::from_millis(i);
        tx.push(now, &[b'x'; 100], |f| frames.push((now, f.to_vec())));
    }
    tx.finish(t0 + Duration::from_millis(200), |f| {
        frames.push((t0 + Duration::from_millis(200), f.to_vec()))
    });
    while let Some(at) = tx.poll_timeout() {
        tx.handle_timeout(at, |f| frames.push((at, f.to_vec())));
    }
    let mut closed_at = None;
    let mut gaps = Vec::new();
    let mut i = 0;
    let mut clock = t0;
    while clock < t0 + Duration::from_secs(3) && closed_at.is_none() {
        while i < frames.len() && frames[i].0 <= clock {
            let Datagram::Mpx(r, _) = classify(&frames[i].1) else {
                panic!()
            };
            let dropped = r.frame_type == FrameType::Data && r.seq % 10 == 5;
            if !dropped {
                rx.handle_datagram(clock, from, &frames[i].1);
            }
            i += 1;
        }
        if rx.poll_timeout().is_some_and(|t| t <= clock) {
            rx.handle_timeout(clock);
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Gap { first, .. } => gaps.push((first, clock - t0)),
                Event::Closed { reason, .. } => {
                    assert_eq!(reason, CloseReason::Fin);
                    closed_at = Some(clock - t0);
                }
                _ => {}
            }
        }
        clock += Duration::from_millis(1);
    }
    assert_eq!(gaps.len(), 20);
    for (first, at) in &gaps {
        // frame n was noticed missing at about n + 1 ms, declared 100 ms later
        let expect = Duration::from_millis(first + 101);
        assert!(
            at.abs_diff(expect) <= Duration::from_millis(2),
            "gap {first} declared at {at:?}"
        );
    }
    // the last gap is declared at about 296 ms; the stream then lingers
    // one reorder timeout after its end (so a forged FIN cannot cut a
    // stream whose sender goes on): about 396 ms, where gaps queueing
    // behind each other would take 2 s
    let closed_at = closed_at.expect("closed");
    assert!(
        closed_at < Duration::from_millis(450),
        "closed at {closed_at:?}"
    );
}

/// What FEC must have achieved, computed from the link's record: per
/// stream the frames that stay lost, and over all streams the blocks
/// rebuilt, the blocks given up and the frames rebuilt
#[derive(Debug, Default, PartialEq, Eq)]
struct FecTruth {
    lost: BTreeMap<StreamKey, Vec<u64>>,
    recovered_blocks: u64,
    unrecoverable_blocks: u64,
    rebuilt: u64,
    /// blocks with at least one FEC frame delivered
    seen_blocks: u64,
}

fn fec_truth(sim: &Sim) -> FecTruth {
    let mut t = FecTruth::default();
    let frames = &sim.truth.frames;
    let mut covered = 0usize;
    for (&(key, base), &(k, fec_arrived)) in &sim.truth.fec_blocks {
        covered += k as usize;
        let missing: Vec<u64> = (base..base + k)
            .filter(|q| frames.get(&(key, *q)).expect("source frame sent").1 == 0)
            .collect();
        if fec_arrived > 0 {
            t.seen_blocks += 1;
        }
        if missing.is_empty() {
            continue;
        }
        if fec_arrived >= missing.len() as u64 {
            t.recovered_blocks += 1;
            t.rebuilt += missing.len() as u64;
        } else {
            if fec_arrived > 0 {
                t.unrecoverable_blocks += 1;
            }
            t.lost.entry(key).or_default().extend(missing);
        }
    }
    assert_eq!(covered, frames.len(), "every DATA frame is in a block");
    t
}

/// Check delivery and counters against the link's record, FEC included:
/// frames of rebuilt blocks are delivered, the rest are exact gaps
fn check_fec(sim: &Sim, out: &Outcome, rx: &Receiver, streams: usize) -> FecTruth {
    let truth = fec_truth(sim);
    assert_eq!(out.closed.len(), streams, "every stream closes");
    let mut repaired = 0;
    for (&key, &(reason, stats)) in &out.closed {
        assert_eq!(reason, CloseReason::Fin, "{key}");
        let lost = truth.lost.get(&key).cloned().unwrap_or_default();
        let mut want = Vec::new();
        let mut dups = 0u64;
        let mut datagrams = 0u64;
        for (&(_, seq), (payload, copies)) in sim.truth.frames.range((key, 0)..=(key, u64::MAX)) {
            dups += u64::from(copies.saturating_sub(1));
            if lost.binary_search(&seq).is_err() {
                want.extend_from_slice(payload);
                datagrams += 1;
            }
        }
        let got = out.delivered.get(&key).cloned().unwrap_or_default();
        assert!(
            got == want,
            "{key}: delivered {} bytes, expected {}",
            got.len(),
            want.len()
        );
        // the lost frames are reported as exact gaps: one per run
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &q in &lost {
            match runs.last_mut() {
                Some((first, n)) if *first + *n == q => *n += 1,
                _ => runs.push((q, 1)),
            }
        }
        let gaps = out.gaps.get(&key).cloned().unwrap_or_default();
        assert_eq!(gaps, runs, "{key}: gaps");
        assert_eq!(stats.lost, lost.len() as u64, "{key} lost");
        assert_eq!(stats.gaps, runs.len() as u64, "{key} gaps");
        assert_eq!(stats.duplicates, dups, "{key} duplicates");
        assert_eq!((stats.late, stats.repaired), (0, 0), "{key} late/repaired");
        assert_eq!(stats.datagrams, datagrams, "{key} datagrams");
        repaired += stats.fec_repaired;
    }
    let rs = rx.stats();
    assert_eq!(repaired, truth.rebuilt, "frames rebuilt and used");
    assert_eq!(rs.fec_repaired, truth.rebuilt);
    assert_eq!(rs.fec_recovered_blocks, truth.recovered_blocks);
    assert_eq!(rs.fec_unrecoverable_blocks, truth.unrecoverable_blocks);
    // a clean last block may arrive after its stream closed on FIN
    assert!(
        rs.fec_blocks <= truth.seen_blocks && rs.fec_blocks + streams as u64 >= truth.seen_blocks,
        "blocks {} seen {}",
        rs.fec_blocks,
        truth.seen_blocks
    );
    assert_eq!((rs.fec_invalid, rs.fec_dropped_symbols), (0, 0));
    assert_eq!(rx.fec_bytes(), 0, "FEC state freed when streams close");
    assert_eq!(rx.buffered_bytes(), 0);
    truth
}

#[test]
fn fec_rebuilds_random_loss_without_a_return_path() {
    for seed in [71u64, 72, 73, 74, 75] {
        let inputs = vec![lines(seed, 400_000), lines(seed + 1000, 100_000)];
        let link = LinkConfig {
            drop: 0.05,
            dup: 0.01,
            base_delay: Duration::from_millis(10),
            // no reordering: a frame still in flight when its block is
            // rebuilt would be rebuilt, and its copy counted a duplicate
            jitter: Duration::ZERO,
        };
        let fec = FecConfig::default(); // 10 %, blocks of 256 frames
        let (sim, out, rx) = run_fec(seed, link, &inputs, ReceiverConfig::default(), Some(fec));
        let truth = check_fec(&sim, &out, &rx, 2);
        let lost: u64 = sim.truth.frames.values().filter(|(_, c)| *c == 0).count() as u64;
        let overhead = sim.truth.fec_frames as f64 / sim.truth.frames.len() as f64;
        let byte_overhead = sim.truth.fec_bytes as f64 / sim.truth.data_bytes as f64;
        eprintln!(
            "seed {seed}: {} frames, {lost} lost on the link, {} rebuilt in {} blocks, {} blocks unrecoverable, overhead {:.1} % of frames, {:.1} % of bytes",
            sim.truth.frames.len(),
            truth.rebuilt,
            truth.recovered_blocks,
            truth.unrecoverable_blocks,
            overhead * 100.0,
            byte_overhead * 100.0
        );
        assert!(lost > 100, "seed {seed}: the link must lose frames");
        // 5 % loss against 10 % overhead in blocks of 256: each block
        // fails with probability ~0.001, so these seeds lose nothing
        assert_eq!(truth.lost, BTreeMap::new(), "seed {seed}");
        assert_eq!(truth.rebuilt, lost);
        // ceil(10 % of each block); in bytes more, as these frames are
        // small (a symbol is padded to the block's longest frame, a
        // multiple of 64 bytes)
        assert!((0.10..0.11).contains(&overhead), "overhead {overhead}");
    }
}

#[test]
fn fec_loss_beyond_the_overhead_leaves_exact_gaps() {
    for seed in [81u64, 82, 83] {
        let inputs = vec![lines(seed, 300_000)];
        let link = LinkConfig {
            drop: 0.12,
            dup: 0.0,
            base_delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
        };
        let fec = FecConfig {
            overhead_percent: 10,
            block_frames: 64,
            ..FecConfig::default()
        };
        let (sim, out, rx) = run_fec(seed, link, &inputs, ReceiverConfig::default(), Some(fec));
        let truth = check_fec(&sim, &out, &rx, 1);
        eprintln!("seed {seed}: {truth:?}");
        assert!(
            truth.unrecoverable_blocks > 0 && truth.recovered_blocks > 0,
            "seed {seed}: some blocks are rebuilt, some cannot be"
        );
    }
}

#[test]
fn receiver_without_fec_counts_and_drops_fec_frames() {
    let inputs = vec![lines(91, 100_000)];
    let link = LinkConfig {
        drop: 0.0,
        dup: 0.0,
        base_delay: Duration::from_millis(5),
        jitter: Duration::ZERO,
    };
    let rcfg = ReceiverConfig {
        fec: false,
        ..ReceiverConfig::default()
    };
    let (sim, out, rx) = run_fec(91, link, &inputs, rcfg, Some(FecConfig::default()));
    check(&sim, &out, 1);
    let fec_frames = sim.truth.fec_blocks.values().map(|(_, n)| n).sum::<u64>();
    assert!(fec_frames > 0);
    // FEC frames that came before the stream closed count as unknown
    // type, the rest as after close: none breaks the stream (the 3
    // closing heartbeats arrive while the stream lingers after its FIN)
    let rs = rx.stats();
    assert!(rs.unknown_type > 0);
    assert_eq!(rs.unknown_type + rs.after_close, fec_frames);
    assert_eq!(rs.fec_frames, 0);
}

/// With reordering a frame may still be on its way when its block is
/// rebuilt: it is then rebuilt too and its late copy counts as a
/// duplicate. Delivery stays byte-exact and nothing is lost.
#[test]
fn fec_with_reordering_is_still_exact() {
    for seed in [61u64, 62, 63] {
        let inputs = vec![lines(seed, 300_000)];
        let link = LinkConfig {
            drop: 0.05,
            dup: 0.0,
            base_delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
        };
        let (sim, out, rx) = run_fec(
            seed,
            link,
            &inputs,
            ReceiverConfig::default(),
            Some(FecConfig::default()),
        );
        let key = *out.closed.keys().next().unwrap();
        let (reason, stats) = out.closed[&key];
        assert_eq!(reason, CloseReason::Fin);
        let want: Vec<u8> = sim
            .truth
            .frames
            .values()
            .flat_map(|(p, _)| p.clone())
            .collect();
        assert!(out.delivered[&key] == want, "seed {seed}: not byte-exact");
        let lost = sim.truth.frames.values().filter(|(_, c)| *c == 0).count() as u64;
        assert_eq!(
            (stats.lost, stats.gaps, stats.late),
            (0, 0, 0),
            "seed {seed}"
        );
        assert!(
            lost > 0 && stats.fec_repaired >= lost,
            "seed {seed}: {stats}"
        );
        // every frame rebuilt early has a copy still coming: a duplicate
        // (or, at the very end, a frame after close)
        let early = stats.fec_repaired - lost;
        assert!(
            stats.duplicates <= early && stats.duplicates + rx.stats().after_close >= early,
            "seed {seed}: {stats}"
        );
        eprintln!("seed {seed}: {lost} lost, {stats}");
    }
}
