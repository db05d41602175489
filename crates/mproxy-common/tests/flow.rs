//! Flow control on a virtual clock: an unpaced sender, a link that loses
//! 1% each way, and receivers whose socket queue holds 300 datagrams and
//! is drained at a fixed pace (a receiver busy writing to disk). With
//! WINDOW frames the sender slows to the receiver and repair fills the
//! link's losses; without them the queue overflows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    Event, FlowConfig, FlowControl, FlowEvent, Receiver, ReceiverConfig, Sender, SenderConfig,
    StreamStats,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram, FrameType};
use mproxy_testsupport::SplitMix64;

const TICK: Duration = Duration::from_micros(100);
const QUEUE: usize = 300;
const PAYLOAD: usize = 1000;

struct Rx {
    addr: SocketAddr,
    rx: Receiver,
    /// the socket's receive queue
    queue: VecDeque<Vec<u8>>,
    /// datagrams it takes per tick
    pace: usize,
    overflow: u64,
    got: Vec<u8>,
    closed: Option<StreamStats>,
    /// stops reading and answering at this time (killed)
    dies_at: Option<Instant>,
}

struct Outcome {
    rx: Vec<(Vec<u8>, Option<StreamStats>, u64)>,
    flow: Vec<FlowEvent>,
    sent: u64,
    elapsed: Duration,
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SplitMix64::new(seed).fill(&mut v);
    v
}

/// Send `input` unpaced to `paces.len()` receivers (datagrams per 100 µs
/// each), with or without flow control
fn run(seed: u64, input: &[u8], paces: &[(usize, Option<Duration>)], flow: bool) -> Outcome {
    let mut rng = SplitMix64::new(seed);
    let t0 = Instant::now();
    let scfg = SenderConfig {
        max_datagram: 24 + PAYLOAD,
        framing: Framing::Bytes,
        heartbeat_interval: Duration::from_millis(100),
        repair_buffer: 8 << 20,
    };
    let mut tx = Sender::new(0xf10, 1, &scfg);
    let mut fc = FlowControl::new(FlowConfig::default(), tx.next_seq());
    let sender_addr: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut rxs: Vec<Rx> = paces
        .iter()
        .enumerate()
        .map(|(i, &(pace, dies))| Rx {
            addr: SocketAddr::from(([192, 0, 2, 10 + i as u8], 9)),
            rx: Receiver::new(ReceiverConfig {
                nack: true,
                window: flow,
                // the socket queue holds 300
                window_frames: 256,
                reorder_window: 512,
                reorder_bytes: 1 << 20,
                jitter_seed: seed + i as u64,
                ..ReceiverConfig::default()
            }),
            queue: VecDeque::new(),
            pace,
            overflow: 0,
            got: Vec::new(),
            closed: None,
            dies_at: dies.map(|d| t0 + d),
        })
        .collect();
    // in flight: (arrival, tiebreak, to: None = sender / Some(i) = receiver i, from, bytes)
    type Flight = Reverse<(Instant, u64, Option<usize>, SocketAddr, Vec<u8>)>;
    let mut link: BinaryHeap<Flight> = BinaryHeap::new();
    let mut n = 0u64;
    let lossy = |rng: &mut SplitMix64| (rng.next_u64() % 100) == 0;
    let mut offset = 0;
    let mut now = t0;
    let mut flow_events = Vec::new();
    let mut sent = 0u64;
    let mut finished_at = None;
    loop {
        // the sender: as much as flow control allows (or everything)
        let mut out: Vec<Vec<u8>> = Vec::new();
        while offset < input.len() && (!flow || fc.allows(now, tx.next_seq())) {
            let end = (offset + PAYLOAD).min(input.len());
            tx.push(now, &input[offset..end], |f| out.push(f.to_vec()));
            offset = end;
            if offset == input.len() {
                tx.finish(now, |f| out.push(f.to_vec()));
                finished_at = Some(now);
            }
        }
        if tx.poll_timeout().is_some_and(|t| t <= now) {
            tx.handle_timeout(now, |f| out.push(f.to_vec()));
        }
        while let Some(e) = fc.poll_event() {
            flow_events.push(e);
        }
        // the link delivers what is due
        while let Some(Reverse((at, ..))) = link.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, _, to, from, bytes)) = link.pop().unwrap();
            match to {
                Some(i) => {
                    let r = &mut rxs[i];
                    if r.dies_at.is_some_and(|d| now >= d) {
                        continue;
                    }
                    if r.queue.len() >= QUEUE {
                        r.overflow += 1;
                    } else {
                        r.queue.push_back(bytes);
                    }
                }
                None => {
                    if let Datagram::Mpx(repr, payload) = classify(&bytes) {
                        match repr.frame_type {
                            FrameType::Nack => {
                                tx.handle_nack(now, payload, |f| out.push(f.to_vec()));
                            }
                            FrameType::Window => {
                                fc.on_window(now, from, repr.seq, payload, PAYLOAD);
                            }
                            other => panic!("unexpected {other} to the sender"),
                        }
                    }
                }
            }
        }
        sent += out.len() as u64;
        for f in out {
            for i in 0..rxs.len() {
                if lossy(&mut rng) {
                    continue;
                }
                n += 1;
                let delay = Duration::from_micros(1000 + rng.next_u64() % 500);
                link.push(Reverse((now + delay, n, Some(i), sender_addr, f.clone())));
            }
        }
        // the receivers: read at their pace, answer
        for r in &mut rxs {
            if r.dies_at.is_some_and(|d| now >= d) {
                continue;
            }
            for _ in 0..r.pace {
                let Some(d) = r.queue.pop_front() else {
                    break;
                };
                r.rx.handle_datagram(now, sender_addr, &d);
            }
            if r.rx.poll_timeout().is_some_and(|t| t <= now) {
                r.rx.handle_timeout(now);
            }
            while let Some(t) = r.rx.poll_transmit() {
                if lossy(&mut rng) {
                    continue;
                }
                n += 1;
                link.push(Reverse((
                    now + Duration::from_millis(1),
                    n,
                    None,
                    r.addr,
                    t.bytes,
                )));
            }
            while let Some(ev) = r.rx.poll_event() {
                match ev {
                    Event::Data { payload, .. } => r.got.extend_from_slice(&payload),
                    Event::Closed { stats, .. } => {
                        eprintln!("{:?}", r.rx.stats());
                        r.closed = Some(stats)
                    }
                    Event::Gap { first, count, .. } => {
                        eprintln!("{:?} gap {first} {count}", now - t0)
                    }
                    _ => {}
                }
            }
        }
        let live_done = rxs
            .iter()
            .all(|r| r.closed.is_some() || r.dies_at.is_some_and(|d| now >= d));
        if live_done && tx.poll_timeout().is_none() {
            break;
        }
        now += TICK;
        assert!(now - t0 < Duration::from_secs(60), "simulation did not end");
    }
    Outcome {
        rx: rxs
            .into_iter()
            .map(|r| (r.got, r.closed, r.overflow))
            .collect(),
        flow: flow_events,
        sent,
        elapsed: finished_at.map_or(now, |f| f) - t0,
    }
}

#[test]
fn window_paces_an_unpaced_sender_to_a_slow_receiver() {
    let input = data(8 << 20, 1);
    for seed in [1u64, 2, 3] {
        // 10 datagrams per 100 µs: ~100 MB/s
        let o = run(seed, &input, &[(10, None)], true);
        let (got, closed, overflow) = &o.rx[0];
        let stats = closed.expect("stream closed");
        eprintln!(
            "seed {seed}: {} frames sent for {} bytes, queue overflow {overflow}, {stats}, \
             sent in {:?}",
            o.sent,
            input.len(),
            o.elapsed
        );
        assert!(
            got == &input,
            "seed {seed}: {} of {} bytes",
            got.len(),
            input.len()
        );
        assert_eq!(stats.lost, 0, "seed {seed}: {stats}");
        assert!(
            *overflow < 50,
            "seed {seed}: the window let the queue overflow {overflow} times"
        );
        // no slower than the receiver (8 MB at ~10 MB per 100 ms) by much
        assert!(o.elapsed < Duration::from_millis(1500), "{:?}", o.elapsed);
    }
}

/// The control experiment: the same link and receiver without WINDOW
/// frames overflows the queue and loses data even with NACK repair
#[test]
fn without_window_the_slow_receiver_is_overrun() {
    let input = data(8 << 20, 1);
    let o = run(1, &input, &[(10, None)], false);
    let (got, closed, overflow) = &o.rx[0];
    let stats = closed.expect("stream closed");
    eprintln!("no flow control: overflow {overflow}, {stats}");
    assert!(*overflow > 1000, "{overflow}");
    assert!(stats.lost > 0 && got.len() < input.len(), "{stats}");
}

/// Two receivers at different paces: the sender follows the slower one
/// and both get everything; then one is killed mid-transfer: the sender
/// stops waiting for it after 2 s of silence and the other still gets
/// everything
#[test]
fn slowest_receiver_sets_the_pace_and_a_dead_one_is_dropped() {
    let input = data(4 << 20, 2);
    let o = run(4, &input, &[(20, None), (5, None)], true);
    for (i, (got, closed, overflow)) in o.rx.iter().enumerate() {
        let stats = closed.expect("closed");
        eprintln!("receiver {i}: overflow {overflow}, {stats}");
        assert!(got == &input, "receiver {i}");
        assert_eq!(stats.lost, 0);
        assert!(*overflow < 50, "receiver {i}: {overflow}");
    }
    assert_eq!(
        o.flow
            .iter()
            .filter(|e| matches!(e, FlowEvent::Joined(_)))
            .count(),
        2
    );

    let o = run(
        5,
        &input,
        &[(20, None), (5, Some(Duration::from_millis(100)))],
        true,
    );
    let (got, closed, _) = &o.rx[0];
    assert!(got == &input, "the live receiver misses data");
    assert_eq!(closed.expect("closed").lost, 0);
    let dead = o.flow.iter().find_map(|e| match e {
        FlowEvent::TimedOut(a) => Some(*a),
        _ => None,
    });
    assert_eq!(
        dead,
        Some(SocketAddr::from(([192, 0, 2, 11], 9))),
        "{:?}",
        o.flow
    );
    // stalled ~2 s on the dead receiver, then at the live one's pace
    assert!(o.elapsed < Duration::from_secs(4), "{:?}", o.elapsed);
}
