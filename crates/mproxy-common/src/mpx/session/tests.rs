use super::*;
use crate::wire::{emit_nack, Flags, NackRange, Repr, WindowAdvert};
use std::net::SocketAddr;

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 9000))
}

fn mpx_config() -> SessionConfig {
    SessionConfig {
        mpx: Some((0x5e55, 1)),
        max_datagram: HEADER_LEN + 8,
        repair_buffer: 1 << 20,
        ..SessionConfig::default()
    }
}

/// Everything the session wants to send at `now`
fn drain(s: &mut SenderSession, now: Instant) -> Vec<(Dest, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit(now) {
        for f in t.frames {
            out.push((t.dest, f.to_vec()));
        }
    }
    out
}

fn parse(f: &[u8]) -> (Repr, Vec<u8>) {
    match classify(f) {
        Datagram::Mpx(r, p) => (r, p.to_vec()),
        _ => panic!("not an mpx frame"),
    }
}

fn nack(session: u64, stream: u32, start: u32, count: u16) -> Vec<u8> {
    let mut payload = Vec::new();
    emit_nack(&[NackRange { start, count }], &mut payload);
    frame(FrameType::Nack, session, stream, 0, &payload)
}

fn frame(frame_type: FrameType, session: u64, stream: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let repr = Repr {
        frame_type,
        flags: Flags::NONE,
        session,
        stream,
        seq,
    };
    let mut buf = vec![0u8; HEADER_LEN + payload.len()];
    let n = repr.emit_with_payload(&mut buf, payload).unwrap();
    buf.truncate(n);
    buf
}

fn window(session: u64, stream: u32, next: u32, frames: u32, id: u64) -> Vec<u8> {
    let adv = WindowAdvert {
        frames,
        bytes: u32::MAX,
        receiver: id,
    }
    .emit();
    frame(FrameType::Window, session, stream, next, &adv)
}

#[test]
fn test_frames_go_out_in_order_then_fin_and_closing_heartbeats() {
    let t0 = Instant::now();
    let mut s = SenderSession::new(mpx_config(), t0);
    assert!(s.writable(t0) > 0);
    s.push(t0, b"abc\ndef\nghi\n");
    s.finish(t0);
    let out = drain(&mut s, t0);
    let seqs: Vec<_> = out.iter().map(|(_, f)| parse(f).0.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert!(parse(&out[2].1).0.flags.contains(Flags::FIN));
    assert!(!s.is_done());
    // closing heartbeats, then a quiet linger ends the session
    let mut now = t0;
    let mut hbs = 0;
    while !s.is_done() {
        now = s.poll_timeout().expect("a timer while not done");
        s.handle_timeout(now);
        for (_, f) in drain(&mut s, now) {
            let (r, p) = parse(&f);
            assert_eq!(r.frame_type, FrameType::Heartbeat);
            assert!(r.flags.contains(Flags::FIN));
            assert_eq!(r.seq, 3);
            assert_eq!(p[8..16], 12u64.to_be_bytes(), "stream offset");
            hbs += 1;
        }
    }
    assert_eq!(hbs, 3);
    assert!(now >= t0 + LINGER_QUIET);
}

#[test]
fn test_idle_input_still_answers_nacks() {
    // the regression of issue 11: a NACK while no input arrives is
    // answered at once, not when the next input comes
    let t0 = Instant::now();
    let mut s = SenderSession::new(mpx_config(), t0);
    s.push(t0, b"one\n");
    let sent = drain(&mut s, t0);
    assert_eq!(sent.len(), 1);
    let t1 = t0 + Duration::from_millis(300);
    s.handle_datagram(t1, 0, peer(), &nack(0x5e55, 1, 0, 1));
    let again = drain(&mut s, t1);
    assert_eq!(again.len(), 1);
    let (r, p) = parse(&again[0].1);
    assert_eq!(r.seq, 0);
    assert!(r.flags.contains(Flags::RETRANSMIT));
    assert_eq!(p, b"one\n");
}

#[test]
fn test_nack_for_queued_frames_is_not_answered() {
    let t0 = Instant::now();
    let mut s = SenderSession::new(mpx_config(), t0);
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    // nothing went out yet: a NACK for them re-sends nothing
    s.handle_datagram(t0, 0, peer(), &nack(0x5e55, 1, 0, 2));
    let out = drain(&mut s, t0);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|(_, f)| !parse(f).0.flags.contains(Flags::RETRANSMIT)));
}

#[test]
fn test_foreign_and_malformed_datagrams_are_ignored() {
    let t0 = Instant::now();
    let mut s = SenderSession::new(mpx_config(), t0);
    s.push(t0, b"x\n");
    let _ = drain(&mut s, t0);
    s.handle_datagram(t0, 0, peer(), &nack(0xdead, 1, 0, 1));
    s.handle_datagram(t0, 0, peer(), b"$GPGGA,raw");
    s.handle_datagram(t0, 0, peer(), &[0xa7, 0x4d, 0x13]);
    assert!(drain(&mut s, t0).is_empty());
    assert_eq!(s.stats().ignored, 3);
    assert_eq!(s.stats().control, 0);
}

#[test]
fn test_window_holds_data_and_pokes_until_it_opens() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        flow: Some(FlowConfig::default()),
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0);
    // a receiver allows frames 0..2
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 2, 7));
    let w = s.writable(t0);
    assert_eq!(w, 2 * 8, "two frames of 8 payload bytes");
    s.push(t0, b"aaaaaaa\nbbbbbbb\nccccccc\n");
    let out = drain(&mut s, t0);
    assert_eq!(out.len(), 2, "the third frame waits for the window");
    assert_eq!(s.writable(t0), 0);
    // held back: heartbeats poke the receiver every FLOW_POKE
    let at = s.poll_timeout().expect("poke timer");
    assert_eq!(at, t0 + FLOW_POKE);
    s.handle_timeout(at);
    let pokes = drain(&mut s, at);
    assert_eq!(pokes.len(), 1);
    assert_eq!(parse(&pokes[0].1).0.frame_type, FrameType::Heartbeat);
    // the window opens: the held frame goes
    s.handle_datagram(at, 0, peer(), &window(0x5e55, 1, 2, 4, 7));
    let out = drain(&mut s, at);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0].1).0.seq, 2);
    assert_eq!(s.stats().flow_wait, FLOW_POKE);
}

#[test]
fn test_retransmits_pass_a_closed_window() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        flow: Some(FlowConfig::default()),
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0);
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 1, 7));
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    assert_eq!(drain(&mut s, t0).len(), 1);
    s.handle_datagram(t0, 0, peer(), &nack(0x5e55, 1, 0, 1));
    let out = drain(&mut s, t0);
    assert_eq!(out.len(), 1);
    assert!(parse(&out[0].1).0.flags.contains(Flags::RETRANSMIT));
}

#[test]
fn test_pacing_spaces_datagrams_without_sleeping() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        mpx: None,
        max_datagram: 1000,
        framing: Framing::Bytes,
        rate: Some(Rate::from_bytes_per_sec(1_000_000).unwrap_or_else(|| unreachable!())),
        ..SessionConfig::default()
    };
    let mut s = SenderSession::new(cfg, t0);
    // 50 ms of the rate may be read ahead
    assert_eq!(s.writable(t0), 50_000);
    s.push(t0, &[7u8; 50_000]);
    let mut now = t0;
    let mut sent = 0;
    while sent < 50 {
        for (_, f) in drain(&mut s, now) {
            assert_eq!(f.len(), 1000);
            sent += 1;
        }
        if sent < 50 {
            now = s.poll_timeout().expect("pacing timer");
        }
    }
    // 50 kB at 1 MB/s less the 4 kB burst: about 46 ms
    let took = now - t0;
    assert!(
        took >= Duration::from_millis(45) && took <= Duration::from_millis(47),
        "{took:?}"
    );
    s.finish(now);
    assert!(s.is_done());
}

#[test]
fn test_stripe_spreads_frames_and_probes_every_path() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        mode: Mode::Stripe,
        paths: vec![
            PathConfig {
                weight: 1,
                rate: None,
            },
            PathConfig {
                weight: 3,
                rate: None,
            },
        ],
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0);
    s.handle_timeout(t0);
    let probes = drain(&mut s, t0);
    let dests: Vec<_> = probes.iter().map(|(d, _)| *d).collect();
    assert_eq!(dests, [Dest::Path(0), Dest::Path(1)]);
    for _ in 0..40 {
        s.push(t0, b"1234567\n");
    }
    let mut per = [0; 2];
    for (d, _) in drain(&mut s, t0) {
        match d {
            Dest::Path(i) => per[i] += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(per, [10, 30]);
}

#[test]
fn test_local_failure_moves_frames_to_another_path() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        mode: Mode::Stripe,
        paths: vec![
            PathConfig {
                weight: 1,
                rate: None,
            };
            2
        ],
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0);
    s.push(t0, b"1234567\n");
    let t = s.poll_transmit(t0).expect("a frame");
    let Dest::Path(first) = t.dest else {
        panic!("{:?}", t.dest)
    };
    let n = t.frames.len();
    s.on_path_failure(t0, first, n);
    assert!(matches!(
        s.poll_event(),
        Some(SessionEvent::Path {
            state: PathState::Dead,
            cause: PathCause::LocalFailure,
            ..
        })
    ));
    let again = drain(&mut s, t0);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, Dest::Path(1 - first));
    assert_eq!(parse(&again[0].1).0.seq, 0);
}

#[test]
fn test_shutdown_sends_everything_at_once() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        flow: Some(FlowConfig::default()),
        rate: Some(Rate::from_bytes_per_sec(1000).unwrap_or_else(|| unreachable!())),
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0);
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 1, 7));
    s.push(t0, &[b'x'; 80]);
    s.shutdown(t0);
    let out = drain(&mut s, t0);
    // 10 data frames, then FIN
    assert_eq!(out.len(), 11);
    assert!(s.is_done());
}

#[test]
fn test_idle_heartbeat_carries_next_seq_and_offset() {
    let t0 = Instant::now();
    let mut s = SenderSession::new(mpx_config(), t0);
    s.push(t0, b"hello\n");
    let _ = drain(&mut s, t0);
    let at = s.poll_timeout().expect("heartbeat timer");
    assert_eq!(at, t0 + Duration::from_secs(1));
    s.handle_timeout(at);
    let out = drain(&mut s, at);
    assert_eq!(out.len(), 1);
    let (r, p) = parse(&out[0].1);
    assert_eq!((r.frame_type, r.seq), (FrameType::Heartbeat, 1));
    assert!(!r.flags.contains(Flags::FIN));
    assert_eq!(p[..8], 1_000_000u64.to_be_bytes());
    assert_eq!(p[8..16], 6u64.to_be_bytes());
}
