//! Deterministic simulation: Sender -> seeded lossy, reordering,
//! duplicating link -> Receiver, on a virtual clock. Every counter is
//! checked exactly against what the link did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, Receiver, ReceiverConfig, Sender, SenderConfig, StreamKey, StreamStats,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram, FrameType};
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
            FrameType::Data => {
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
    let mut sim = Sim::new(seed, link);
    let scfg = SenderConfig {
        max_datagram: 24 + 200,
        framing: Framing::Lines,
        heartbeat_interval: Duration::from_millis(100),
    };
    let mut senders: Vec<Sender> = (0..inputs.len())
        .map(|i| Sender::new(0x5eed_0000 + i as u64, i as u32 + 1, &scfg))
        .collect();
    let mut offsets = vec![0usize; inputs.len()];
    let mut rx = Receiver::new(rcfg);
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
