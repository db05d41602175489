//! Honest delivery at the receiver: a receiver that starts mid-stream
//! joins where the stream is (no duplicates for an output appended to
//! after a restart), or reaches back for what the sender still holds; a
//! stream that ends without its FIN, or with frames missing, says exactly
//! which frames and how many bytes it lost and where it stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, Join, Receiver, ReceiverConfig, Sender, SenderConfig, StreamStats,
};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, parse_nack, Datagram, Flags, FrameType, Repr};

const SESSION: u64 = 0xde1;

fn from() -> SocketAddr {
    "192.0.2.1:9".parse().unwrap()
}

/// `n` lines of 31 to 50 bytes: one frame each (two never fit)
fn lines(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{i:04} {}\n", "x".repeat(25 + (i * 7) % 20)).into_bytes())
        .collect()
}

fn sender() -> Sender {
    let cfg = SenderConfig {
        max_datagram: 24 + 50,
        framing: Framing::Lines,
        heartbeat_interval: Duration::from_millis(100),
        repair_buffer: 1 << 20,
    };
    Sender::new(SESSION, 1, &cfg)
}

/// A heartbeat of the stream at `seq`, with the stream byte offset of
/// `seq` in payload bytes 8..16 (what the sender session adds)
fn heartbeat(seq: u32, offset: u64, fin: bool) -> Vec<u8> {
    let repr = Repr {
        frame_type: FrameType::Heartbeat,
        flags: if fin { Flags::FIN } else { Flags::NONE },
        session: SESSION,
        stream: 1,
        seq,
    };
    let mut p = [0u8; 16];
    p[8..].copy_from_slice(&offset.to_be_bytes());
    let mut b = vec![0u8; 40];
    repr.emit_with_payload(&mut b, &p).unwrap();
    b
}

#[derive(Default)]
struct Out {
    data: Vec<u8>,
    first_seq: Option<u64>,
    closed: Option<(CloseReason, StreamStats)>,
    /// lowest sequence number any NACK asked for
    lowest_nacked: Option<u64>,
}

/// Feed `frames` at 1 ms steps, answer NACKs from `tx`, then let time
/// pass until the stream closes
fn drive(rx: &mut Receiver, tx: &mut Sender, frames: &[Vec<u8>], t0: Instant) -> Out {
    let mut out = Out::default();
    let mut now = t0;
    let mut pending: Vec<Vec<u8>> = frames.to_vec();
    pending.reverse();
    for _ in 0..20_000 {
        if let Some(f) = pending.pop() {
            rx.handle_datagram(now, from(), &f);
        }
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        while let Some(t) = rx.poll_transmit() {
            if let Datagram::Mpx(r, p) = classify(&t.bytes) {
                if r.frame_type == FrameType::Nack {
                    for range in parse_nack(p) {
                        let low = u64::from(range.start);
                        out.lowest_nacked = Some(out.lowest_nacked.map_or(low, |l| l.min(low)));
                    }
                    let mut again = Vec::new();
                    tx.handle_nack(now, p, |f| again.push(f.to_vec()));
                    // re-sent frames arrive before what is still queued
                    for f in again.into_iter().rev() {
                        pending.push(f);
                    }
                }
            }
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Data { payload, .. } => out.data.extend_from_slice(&payload),
                Event::Opened { first_seq, .. } => out.first_seq = Some(first_seq),
                Event::Closed { reason, stats, .. } => out.closed = Some((reason, stats)),
                Event::Gap { .. } => {}
            }
        }
        if out.closed.is_some() {
            break;
        }
        now += Duration::from_millis(1);
    }
    out
}

/// All frames of `input` (one line each), FIN included
fn frames_of(tx: &mut Sender, input: &[Vec<u8>], t0: Instant) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for l in input {
        tx.push(t0, l, |f| frames.push(f.to_vec()));
    }
    tx.finish(t0, |f| frames.push(f.to_vec()));
    frames
}

fn config(join: Join) -> ReceiverConfig {
    ReceiverConfig {
        nack: true,
        join,
        jitter_seed: 5,
        ..ReceiverConfig::default()
    }
}

/// A server restarted after 60 of 100 lines, appending to the same file:
/// the new process starts where the stream is and asks for nothing before
/// it, so the two outputs together are the input once (it was 80 lines
/// for 60 sent: the young stream was re-requested from 0)
#[test]
fn a_restarted_receiver_joins_where_the_stream_is() {
    let input = lines(100);
    let t0 = Instant::now();
    let mut tx = sender();
    // frames of a stream older than YOUNG_FOR (2 s): a receiver that
    // meets it on a later frame joins where it is
    tx.set_epoch(t0);
    let t0 = t0 + Duration::from_secs(3);
    let frames = frames_of(&mut tx, &input, t0);
    // the first process gets frames 0..60, then dies
    let mut first = Receiver::new(config(Join::Current));
    let a = drive(&mut first, &mut tx, &frames[..60], t0);
    assert_eq!(a.data, input[..60].concat());
    // the second starts with frame 60
    let mut second = Receiver::new(config(Join::Current));
    let b = drive(
        &mut second,
        &mut tx,
        &frames[60..],
        t0 + Duration::from_secs(1),
    );
    assert_eq!(b.first_seq, Some(60));
    assert_eq!(
        b.lowest_nacked, None,
        "nothing before the join is asked for"
    );
    let mut appended = a.data.clone();
    appended.extend_from_slice(&b.data);
    assert!(appended == input.concat(), "no duplicates, nothing missing");
    let (reason, stats) = b.closed.expect("closed");
    assert_eq!(
        (reason, stats.lost, stats.first_seq),
        (CloseReason::Fin, 0, 60)
    );
}

/// A fresh stream whose OPEN frame is lost: its frames are YOUNG (first
/// sent within 2 s of the start), so the receiver starts at 0 and asks
/// for frame 0 instead of joining at 1
#[test]
fn a_young_stream_whose_open_frame_is_lost_starts_at_0() {
    let input = lines(10);
    let t0 = Instant::now();
    let mut tx = sender();
    let frames = frames_of(&mut tx, &input, t0);
    let mut rx = Receiver::new(config(Join::Current));
    let out = drive(&mut rx, &mut tx, &frames[1..], t0);
    assert_eq!(out.first_seq, Some(0));
    assert_eq!(out.lowest_nacked, Some(0), "frame 0 is asked for");
    assert!(out.data == input.concat(), "repaired from the sender");
}

/// Frames of the join arriving out of order: delivery waits for the
/// lowest of them, so the start is not cut
#[test]
fn a_join_starts_at_the_lowest_frame_seen_meanwhile() {
    let input = lines(40);
    let t0 = Instant::now();
    let mut tx = sender();
    tx.set_epoch(t0);
    let t0 = t0 + Duration::from_secs(3);
    let mut frames = frames_of(&mut tx, &input, t0);
    frames.drain(..20);
    frames.swap(0, 3); // 23 arrives first, 20 fourth
    let mut rx = Receiver::new(config(Join::Current));
    let out = drive(&mut rx, &mut tx, &frames, t0);
    assert_eq!(out.first_seq, Some(20));
    assert!(out.data == input[20..].concat());
}

/// `Join::Earliest` asks for what the sender still holds: the whole
/// stream here, since it is younger than the reorder window
#[test]
fn join_earliest_asks_for_what_the_sender_holds() {
    let input = lines(100);
    let t0 = Instant::now();
    let mut tx = sender();
    let frames = frames_of(&mut tx, &input, t0);
    let mut rx = Receiver::new(config(Join::Earliest));
    let out = drive(&mut rx, &mut tx, &frames[60..], t0);
    assert_eq!(out.first_seq, Some(0));
    assert_eq!(out.lowest_nacked, Some(0));
    assert!(out.data == input.concat(), "{} bytes", out.data.len());
    assert_eq!(out.closed.unwrap().1.lost, 0);
}

/// A sender that dies: its last frames lost, its last heartbeat says
/// where it was and how many bytes it had sent. The stream closes idle
/// with exactly those frames and bytes reported missing and the last
/// sequence number seen.
#[test]
fn a_stream_closed_without_fin_reports_exactly_what_is_missing() {
    let input = lines(50);
    let t0 = Instant::now();
    let mut tx = sender();
    let frames = frames_of(&mut tx, &input, t0);
    assert_eq!(frames.len(), 51, "one frame per line, then the FIN");
    let before = |n: usize| input[..n].iter().map(Vec::len).sum::<usize>() as u64;
    // the sender dies; its last heartbeat is at 50 (not flagged FIN)
    // frames 20..23 and 44..50 (the FIN among them) are lost
    let mut sent: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .filter(|(i, _)| !(20..23).contains(i) && *i < 44)
        .map(|(_, f)| f.clone())
        .collect();
    sent.push(heartbeat(50, before(50), false));
    let mut rx = Receiver::new(ReceiverConfig {
        nack: false,
        ..config(Join::Current)
    });
    let out = drive(&mut rx, &mut sender(), &sent, t0);
    let (reason, stats) = out.closed.expect("closed");
    assert_eq!(reason, CloseReason::Idle);
    assert_eq!((stats.lost, stats.gaps), (3 + 6, 2));
    assert_eq!(stats.last_seq, Some(43));
    assert_eq!(stats.end, None);
    let lost_bytes = (before(23) - before(20)) + (before(50) - before(44));
    assert_eq!(stats.bytes_lost, Some(lost_bytes));
    let shown = stats.to_string();
    assert!(
        shown.contains(&format!("{lost_bytes} bytes lost")),
        "{shown}"
    );

    // the same without offsets in the heartbeat (an older sender): the
    // frames are exact, the bytes unknown

    let last = sent.len() - 1;
    sent[last] = {
        let repr = Repr {
            frame_type: FrameType::Heartbeat,
            flags: Flags::NONE,
            session: SESSION,
            stream: 1,
            seq: 50,
        };
        let mut b = vec![0u8; 32];
        repr.emit_with_payload(&mut b, &[0; 8]).unwrap();
        b
    };
    let mut rx = Receiver::new(ReceiverConfig {
        nack: false,
        ..config(Join::Current)
    });
    let out = drive(&mut rx, &mut sender(), &sent, t0);
    let (_, stats) = out.closed.expect("closed");
    assert_eq!((stats.lost, stats.bytes_lost), (9, None));
}

/// A stream that ends with its FIN after unrepaired losses: the closing
/// heartbeats carry the total, so the bytes lost are exact
#[test]
fn a_stream_with_losses_reports_the_bytes_lost() {
    let input = lines(30);
    let t0 = Instant::now();
    let mut tx = sender();
    let frames = frames_of(&mut tx, &input, t0);
    let total = input.iter().map(Vec::len).sum::<usize>() as u64;
    // one frame per line, then an empty FIN frame: 7, 8, the last line
    // and the FIN frame are lost; a closing heartbeat arrives
    assert_eq!(frames.len(), 31);
    let sent: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .filter(|(i, _)| ![7, 8, 29, 30].contains(i))
        .map(|(_, f)| f.clone())
        .chain([heartbeat(31, total, true)])
        .collect();
    let mut rx = Receiver::new(ReceiverConfig {
        nack: false,
        ..config(Join::Current)
    });
    let out = drive(&mut rx, &mut sender(), &sent, t0);
    let (reason, stats) = out.closed.expect("closed");
    assert_eq!(reason, CloseReason::Fin);
    assert_eq!((stats.lost, stats.gaps), (4, 2));
    assert_eq!(
        stats.bytes_lost,
        Some((input[7].len() + input[8].len() + input[29].len()) as u64)
    );
    assert_eq!(stats.end, Some(31));
}

/// Frames after a FIN are counted, and a forged one from elsewhere does
/// not reopen or extend the stream
#[test]
fn frames_after_fin_are_counted() {
    let input = lines(10);
    let t0 = Instant::now();
    let mut tx = sender();
    let mut frames = frames_of(&mut tx, &input, t0);
    let beyond = |seq: u32| {
        let repr = Repr {
            frame_type: FrameType::Data,
            flags: Flags::NONE,
            session: SESSION,
            stream: 1,
            seq,
        };
        let mut b = vec![0u8; 27];
        repr.emit_with_payload(&mut b, b"bad").unwrap();
        b
    };
    let mut rx = Receiver::new(config(Join::Current));
    let evil: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let mut out = Out::default();
    let mut now = t0;
    frames.push(Vec::new()); // a marker: send the forged frames here
    for f in &frames {
        if f.is_empty() {
            rx.handle_datagram(now, evil, &beyond(11));
            rx.handle_datagram(now, evil, &beyond(12));
        } else {
            rx.handle_datagram(now, from(), f);
        }
        now += Duration::from_millis(1);
    }
    for _ in 0..1000 {
        rx.handle_timeout(now);
        while let Some(ev) = rx.poll_event() {
            match ev {
                Event::Data { payload, .. } => out.data.extend_from_slice(&payload),
                Event::Closed { reason, stats, .. } => out.closed = Some((reason, stats)),
                _ => {}
            }
        }
        now += Duration::from_millis(1);
    }
    let (reason, stats) = out.closed.expect("closed");
    assert_eq!(reason, CloseReason::Fin);
    assert_eq!(stats.beyond_fin, 2, "{stats}");
    assert!(out.data == input.concat());
    // after the close, more of them are counted receiver-wide
    rx.handle_datagram(now, evil, &beyond(13));
    assert_eq!(rx.stats().beyond_fin, 3);
}
