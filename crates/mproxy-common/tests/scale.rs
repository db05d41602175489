//! A thousand receivers on one multicast group, each losing 1 % of what
//! reaches it, independently, with NACK repair: the sans-IO `Sender`
//! answers NACKs from its repair buffer and re-sends to the whole group;
//! receivers overhear each other's NACKs. On a virtual clock.
//!
//! NORM's goal (RFC 5740) is that suppression keeps both the NACKs and
//! the re-sends near one per lost frame however large the group; the
//! test reports both and asserts every receiver ends byte-exact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, Join, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram, FrameType, Repr};
use mproxy_testsupport::SplitMix64;

/// What happens next on the virtual clock
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum What {
    /// datagram `id` reaches receiver `i`
    ToReceiver(usize, usize),
    /// datagram `id` (a NACK) reaches the sender
    ToSender(usize),
    /// receiver `i`'s timer
    Timer(usize),
}

struct Group {
    receivers: Vec<Receiver>,
    /// one-way delay sender <-> receiver i (receivers reach each other
    /// through the same network: d_i + d_j)
    delay: Vec<Duration>,
    /// what receiver i delivered so far (bytes matched against the input)
    offset: Vec<usize>,
    closed: Vec<Option<CloseReason>>,
    armed: Vec<Option<Instant>>,
    datagrams: Vec<(Repr, Vec<u8>)>,
    queue: BinaryHeap<Reverse<(Instant, u64, What)>>,
    n: u64,
    rng: SplitMix64,
    loss: f64,
    /// receivers that lost each frame's first transmission
    first_losses: Vec<u32>,
}

impl Group {
    fn lost(&mut self) -> bool {
        (self.rng.next_u64() as f64 / u64::MAX as f64) < self.loss
    }

    fn push(&mut self, at: Instant, what: What) {
        self.n += 1;
        self.queue.push(Reverse((at, self.n, what)));
    }

    fn store(&mut self, bytes: &[u8]) -> usize {
        let Datagram::Mpx(repr, payload) = classify(bytes) else {
            panic!("not a frame")
        };
        self.datagrams.push((repr, payload.to_vec()));
        self.datagrams.len() - 1
    }

    /// The sender multicasts a frame: each receiver loses it on its own
    fn multicast(&mut self, now: Instant, bytes: &[u8]) {
        let id = self.store(bytes);
        let (repr, _) = &self.datagrams[id];
        let original = repr.frame_type == FrameType::Data
            && !repr.flags.contains(mproxy_common::wire::Flags::RETRANSMIT);
        let seq = repr.seq as usize;
        for i in 0..self.receivers.len() {
            if self.lost() {
                if original {
                    if self.first_losses.len() <= seq {
                        self.first_losses.resize(seq + 1, 0);
                    }
                    self.first_losses[seq] += 1;
                }
                continue;
            }
            let at = now + self.delay[i];
            self.push(at, What::ToReceiver(i, id));
        }
    }

    /// Receiver `i` sends a NACK: to the sender and to the group
    fn nack(&mut self, now: Instant, i: usize, bytes: &[u8]) {
        let id = self.store(bytes);
        if !self.lost() {
            let at = now + self.delay[i];
            self.push(at, What::ToSender(id));
        }
        for j in 0..self.receivers.len() {
            if j == i || self.lost() {
                continue;
            }
            let at = now + self.delay[i] + self.delay[j];
            self.push(at, What::ToReceiver(j, id));
        }
    }

    fn arm(&mut self, i: usize) {
        if let Some(t) = self.receivers[i].poll_timeout() {
            if self.armed[i].is_none_or(|a| t < a) {
                self.armed[i] = Some(t);
                self.push(t, What::Timer(i));
            }
        }
    }

    /// After input or a timer: NACKs out, data checked, timer re-armed
    fn after(&mut self, now: Instant, i: usize, input: &[u8]) {
        while let Some(t) = self.receivers[i].poll_transmit() {
            if t.frame_type == FrameType::Nack {
                self.nack(now, i, &t.bytes);
            }
        }
        while let Some(ev) = self.receivers[i].poll_event() {
            match ev {
                Event::Data { payload, .. } => {
                    let o = self.offset[i];
                    assert!(
                        input.get(o..o + payload.len()) == Some(&payload[..]),
                        "receiver {i}: wrong bytes at {o}"
                    );
                    self.offset[i] += payload.len();
                    self.receivers[i].recycle(payload);
                }
                Event::Closed { reason, stats, .. } => {
                    assert_eq!(stats.lost, 0, "receiver {i}: {stats}");
                    self.closed[i] = Some(reason);
                }
                Event::Gap { first, count, .. } => {
                    panic!(
                        "receiver {i}: frames {first}..{} given up at {now:?}: {:?}",
                        first + count,
                        self.receivers[i].stats()
                    )
                }
                Event::Opened { .. } => {}
            }
        }
        self.arm(i);
    }
}

struct Outcome {
    lost_frames: u64,
    losses: u64,
    nacks: u64,
    resent: u64,
    suppressed: u64,
    end: Duration,
}

fn run(receivers: usize, frames: usize, loss: f64, rcfg: &ReceiverConfig, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let mut rng = SplitMix64::new(seed);
    let mut input = vec![0u8; frames * 200];
    rng.fill(&mut input);
    let scfg = SenderConfig {
        max_datagram: 24 + 200,
        framing: Framing::Bytes,
        heartbeat_interval: Duration::from_millis(100),
        repair_buffer: 4 << 20,
    };
    let mut tx = Sender::new(0x6709, 1, &scfg);
    let mut g = Group {
        receivers: (0..receivers)
            .map(|i| {
                Receiver::new(ReceiverConfig {
                    jitter_seed: seed * 10_000 + i as u64 + 1,
                    ..rcfg.clone()
                })
            })
            .collect(),
        delay: (0..receivers)
            .map(|_| Duration::from_micros(1000 + rng.next_u64() % 4000))
            .collect(),
        offset: vec![0; receivers],
        closed: vec![None; receivers],
        armed: vec![None; receivers],
        datagrams: Vec::new(),
        queue: BinaryHeap::new(),
        n: 0,
        rng: SplitMix64::new(seed ^ 0x5ca1e),
        loss,
        first_losses: Vec::new(),
    };
    let from: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut now = t0;
    let mut offset = 0;
    let tick = Duration::from_millis(1);
    let mut next_push = t0;
    loop {
        let mut out = Vec::new();
        if offset < input.len() && now >= next_push {
            let end = (offset + 200).min(input.len());
            tx.push(now, &input[offset..end], |f| out.push(f.to_vec()));
            offset = end;
            if offset == input.len() {
                tx.finish(now, |f| out.push(f.to_vec()));
            }
            next_push = now + tick;
        }
        if tx.poll_timeout().is_some_and(|t| t <= now) {
            tx.handle_timeout(now, |f| out.push(f.to_vec()));
        }
        for f in out {
            g.multicast(now, &f);
        }
        while let Some(Reverse((at, _, _))) = g.queue.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, _, what)) = g.queue.pop().unwrap();
            match what {
                What::ToReceiver(i, id) => {
                    let (repr, payload) = &g.datagrams[id];
                    g.receivers[i].handle_frame(now, from, *repr, payload);
                    g.after(now, i, &input);
                }
                What::ToSender(id) => {
                    let mut resent = Vec::new();
                    let payload = g.datagrams[id].1.clone();
                    tx.handle_nack(now, &payload, |f| resent.push(f.to_vec()));
                    for f in resent {
                        g.multicast(now, &f);
                    }
                }
                What::Timer(i) => {
                    if g.armed[i].is_some_and(|a| a <= now) {
                        g.armed[i] = None;
                        g.receivers[i].handle_timeout(now);
                        g.after(now, i, &input);
                    }
                }
            }
        }
        if g.closed.iter().all(Option::is_some) {
            break;
        }
        let mut next = [
            (offset < input.len()).then_some(next_push),
            tx.poll_timeout(),
            g.queue.peek().map(|Reverse((at, ..))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something is pending while receivers are open");
        next = next.max(now + Duration::from_nanos(1));
        now = next;
        assert!(now - t0 < Duration::from_secs(60), "did not settle");
    }
    for i in 0..receivers {
        assert_eq!(g.closed[i], Some(CloseReason::Fin), "receiver {i}");
        assert_eq!(g.offset[i], input.len(), "receiver {i} not byte-exact");
    }
    let stats: Vec<_> = g.receivers.iter().map(Receiver::stats).collect();
    Outcome {
        lost_frames: g.first_losses.iter().filter(|&&c| c > 0).count() as u64,
        losses: g.first_losses.iter().map(|&c| u64::from(c)).sum(),
        nacks: stats.iter().map(|s| s.nacks_sent).sum(),
        suppressed: stats.iter().map(|s| s.nacks_suppressed).sum(),
        resent: tx.stats().retransmitted,
        end: now - t0,
    }
}

fn group_config() -> ReceiverConfig {
    ReceiverConfig {
        nack: true,
        // the receivers are up before the stream starts: a lost OPEN
        // frame is asked for like any other
        join: Join::Earliest,
        ..ReceiverConfig::default()
    }
}

/// 1 000 receivers, 1 % loss each: byte-exact everywhere, about one NACK
/// and one re-send per lost frame
#[test]
fn a_thousand_receivers_repair_with_about_one_nack_per_loss() {
    // SCALE_BACKOFF_MS / SCALE_GROUP try other settings (see PROTOCOL.md §11)
    let mut cfg = group_config();
    if let Some(ms) = std::env::var("SCALE_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.nack_backoff = Duration::from_millis(ms);
    }
    if let Some(g) = std::env::var("SCALE_GROUP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.nack_group_size = g;
    }
    let o = run(1000, 300, 0.01, &cfg, 1);
    let per = |n: u64| n as f64 / o.lost_frames as f64;
    eprintln!(
        "1000 receivers, 1 % loss: {} frames lost somewhere ({} losses), {} NACKs ({:.2} per lost \
         frame), {} re-sends ({:.2} per lost frame), {} suppressed checks, done at {:?}",
        o.lost_frames,
        o.losses,
        o.nacks,
        per(o.nacks),
        o.resent,
        per(o.resent),
        o.suppressed,
        o.end
    );
    assert!(o.lost_frames > 270, "nearly every frame is lost somewhere");
    assert!(
        per(o.nacks) < 2.0,
        "{:.2} NACKs per lost frame",
        per(o.nacks)
    );
    assert!(
        per(o.resent) < 1.5,
        "{:.2} re-sends per lost frame",
        per(o.resent)
    );
}
