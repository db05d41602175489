use super::*;
use crate::wire::{emit_nack, FeedbackReport, Flags, NackRange, Repr, WindowAdvert};
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

/// A WINDOW frame echoing `token` (what a receiver that got a heartbeat sends)
fn window_tok(
    session: u64,
    stream: u32,
    next: u32,
    frames: u32,
    id: u64,
    token: Option<u64>,
) -> Vec<u8> {
    let mut adv = WindowAdvert {
        frames,
        bytes: u32::MAX,
        receiver: id,
    }
    .emit()
    .to_vec();
    if let Some(t) = token {
        adv.extend_from_slice(&t.to_be_bytes());
    }
    frame(FrameType::Window, session, stream, next, &adv)
}

/// A WINDOW frame with the session's current token (secret 0)
fn window(session: u64, stream: u32, next: u32, frames: u32, id: u64) -> Vec<u8> {
    let token = Guard::new(0, T0.with(|t| *t), 0).token(T0.with(|t| *t));
    window_tok(session, stream, next, frames, id, Some(token))
}

std::thread_local! {
    /// The instant every test session starts at (tokens depend on it)
    static T0: Instant = Instant::now();
}

fn t0() -> Instant {
    T0.with(|t| *t)
}

/// Only the DATA frames of `out`
fn data_only(out: Vec<(Dest, Vec<u8>)>) -> Vec<(Dest, Vec<u8>)> {
    out.into_iter()
        .filter(|(_, f)| parse(f).0.frame_type == FrameType::Data)
        .collect()
}

#[test]
fn test_frames_go_out_in_order_then_fin_and_closing_heartbeats() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    assert!(s.writable(t0) > 0);
    s.push(t0, b"abc\ndef\nghi\n");
    s.finish(t0);
    let out = drain(&mut s, t0);
    // first a heartbeat: it carries the echo token receivers return
    assert_eq!(parse(&out[0].1).0.frame_type, FrameType::Heartbeat);
    let out = data_only(out);
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
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    s.push(t0, b"one\n");
    let sent = data_only(drain(&mut s, t0));
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
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    // nothing went out yet: a NACK for them re-sends nothing
    s.handle_datagram(t0, 0, peer(), &nack(0x5e55, 1, 0, 2));
    let out = data_only(drain(&mut s, t0));
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|(_, f)| !parse(f).0.flags.contains(Flags::RETRANSMIT)));
}

#[test]
fn test_foreign_and_malformed_datagrams_are_ignored() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
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
    let t0 = t0();
    let cfg = SessionConfig {
        flow_control: true,
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    // a receiver allows frames 0..2
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 2, 7));
    let w = s.writable(t0);
    assert_eq!(w, 2 * 8, "two frames of 8 payload bytes");
    s.push(t0, b"aaaaaaa\nbbbbbbb\nccccccc\n");
    let out = data_only(drain(&mut s, t0));
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
    let t0 = t0();
    let cfg = SessionConfig {
        flow_control: true,
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 1, 7));
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    assert_eq!(data_only(drain(&mut s, t0)).len(), 1);
    s.handle_datagram(t0, 0, peer(), &nack(0x5e55, 1, 0, 1));
    let out = drain(&mut s, t0);
    assert_eq!(out.len(), 1);
    assert!(parse(&out[0].1).0.flags.contains(Flags::RETRANSMIT));
}

#[test]
fn test_pacing_spaces_datagrams_without_sleeping() {
    let t0 = t0();
    let cfg = SessionConfig {
        mpx: None,
        max_datagram: 1000,
        framing: Framing::Bytes,
        rate: Some(Rate::from_bytes_per_sec(1_000_000).unwrap_or_else(|| unreachable!())),
        ..SessionConfig::default()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
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
    let t0 = t0();
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
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.handle_timeout(t0);
    let probes = drain(&mut s, t0);
    let dests: Vec<_> = probes.iter().map(|(d, _)| *d).collect();
    assert_eq!(dests, [Dest::Path(0), Dest::Path(1)]);
    for _ in 0..40 {
        s.push(t0, b"1234567\n");
    }
    let mut per = [0; 2];
    for (d, _) in data_only(drain(&mut s, t0)) {
        match d {
            Dest::Path(i) => per[i] += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(per, [10, 30]);
}

#[test]
fn test_local_failure_moves_frames_to_another_path() {
    let t0 = t0();
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
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.push(t0, b"1234567\n");
    // the opening heartbeat goes to every path
    let hb = s.poll_transmit(t0).expect("a heartbeat");
    assert_eq!(hb.dest, Dest::Paths(0b11));
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
    let t0 = t0();
    let cfg = SessionConfig {
        flow_control: true,
        rate: Some(Rate::from_bytes_per_sec(1000).unwrap_or_else(|| unreachable!())),
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 1, 7));
    s.push(t0, &[b'x'; 80]);
    s.shutdown(t0);
    let out = data_only(drain(&mut s, t0));
    // 10 data frames, then FIN
    assert_eq!(out.len(), 11);
    assert!(s.is_done());
}

#[test]
fn test_idle_heartbeat_carries_next_seq_and_offset() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    s.push(t0, b"hello\n");
    let _ = drain(&mut s, t0);
    // step through the timers (the end of flow control's first wait
    // comes first) until the heartbeat goes
    let mut out = Vec::new();
    let mut at = t0;
    while out.is_empty() {
        at = s.poll_timeout().expect("a timer");
        s.handle_timeout(at);
        out = drain(&mut s, at);
    }
    assert_eq!(at, t0 + Duration::from_secs(1));
    assert_eq!(out.len(), 1);
    let (r, p) = parse(&out[0].1);
    assert_eq!((r.frame_type, r.seq), (FrameType::Heartbeat, 1));
    assert!(!r.flags.contains(Flags::FIN));
    assert_eq!(p[..8], 1_000_000u64.to_be_bytes());
    assert_eq!(p[8..16], 6u64.to_be_bytes());
    assert_eq!(p[16..24], s.guard.token(at).to_be_bytes());
}

/// Run the session's timers and drain what it sends until `until` or done
fn run_until(
    s: &mut SenderSession,
    mut now: Instant,
    until: Instant,
) -> (Instant, Vec<(Dest, Vec<u8>)>) {
    let mut out = drain(s, now);
    while !s.is_done() {
        let Some(at) = s.poll_timeout() else { break };
        if at > until {
            break;
        }
        now = now.max(at);
        s.handle_timeout(now);
        out.extend(drain(s, now));
    }
    (now, out)
}

#[test]
fn test_end_waits_for_confirmation_then_exits_at_once() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 64, 7));
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    s.finish(t0);
    let _ = drain(&mut s, t0);
    // FIN is frame 2: the end is 3. The receiver has confirmed 0 so far
    let (now, out) = run_until(&mut s, t0, t0 + Duration::from_secs(1));
    assert!(!s.is_done(), "still owed");
    let fin_hbs = out
        .iter()
        .filter(|(_, f)| parse(f).0.flags.contains(Flags::FIN))
        .count();
    assert!(fin_hbs >= 6, "FIN heartbeats keep poking: {fin_hbs}");
    let d = s.delivery(now);
    assert!(!d.confirmed());
    assert_eq!(d.receivers[0].confirmed_seq, 0);
    // the receiver confirms the end: done at the next timer, not after a linger
    s.handle_datagram(now, 0, peer(), &window(0x5e55, 1, 3, 64, 7));
    let at = s.poll_timeout().expect("a timer");
    s.handle_timeout(at);
    assert!(s.is_done());
    assert!(at <= now + CONFIRM_POKE);
    let d = s.delivery(at);
    assert!(d.confirmed() && d.receivers[0].complete, "{d}");
    assert_eq!(d.bytes, 16);
}

#[test]
fn test_silent_receiver_is_given_up_with_its_offset() {
    let t0 = t0();
    let cfg = SessionConfig {
        flow: FlowConfig {
            receiver_timeout: Duration::from_secs(2),
            ..FlowConfig::default()
        },
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 0, 64, 7));
    s.push(t0, b"aaaaaaa\nbbbbbbb\n");
    let _ = drain(&mut s, t0);
    // the receiver confirms the first frame (8 bytes), then goes silent
    s.handle_datagram(t0, 0, peer(), &window(0x5e55, 1, 1, 64, 7));
    s.finish(t0);
    let (now, _) = run_until(&mut s, t0, t0 + Duration::from_secs(60));
    assert!(s.is_done());
    assert!(
        now >= t0 + Duration::from_secs(2) && now < t0 + Duration::from_secs(3),
        "{now:?}"
    );
    let d = s.delivery(now);
    assert!(!d.confirmed());
    let r = d.receivers[0];
    assert_eq!(
        (r.confirmed_seq, r.confirmed_offset, r.complete),
        (1, Some(8), false)
    );
    assert_eq!(r.state, PeerState::TimedOut);
    let mut given_up = false;
    while let Some(ev) = s.poll_event() {
        given_up |= matches!(ev, SessionEvent::GivenUp(r) if r.confirmed_offset == Some(8));
    }
    assert!(given_up);
    assert!(
        d.to_string().contains("confirmed up to byte 8 (frame 1)"),
        "{d}"
    );
}

#[test]
fn test_windows_without_the_echo_token_are_ignored() {
    let t0 = t0();
    let cfg = SessionConfig {
        flow_control: true,
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    // a stranger who never saw a heartbeat: no token, or a guessed one
    s.handle_datagram(t0, 0, peer(), &window_tok(0x5e55, 1, 0, 0, 9, None));
    s.handle_datagram(t0, 0, peer(), &window_tok(0x5e55, 1, 0, 0, 9, Some(12345)));
    assert_eq!(s.stats().unverified, 2);
    // ...so the initial window still applies, not a window of 0
    assert!(s.writable(t0) > 0);
}

#[test]
fn test_nack_amplification_is_bounded_for_strangers() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    for _ in 0..100 {
        s.push(t0, b"1234567\n");
    }
    let _ = drain(&mut s, t0);
    // a stranger asks for everything, again and again
    let stranger = SocketAddr::from(([198, 51, 100, 7], 4000));
    let mut nack_bytes = 0u64;
    let mut resent_bytes = 0u64;
    for i in 0..50 {
        let now = t0 + Duration::from_millis(20 * i);
        let n = nack(0x5e55, 1, 0, 100);
        nack_bytes += n.len() as u64;
        s.handle_datagram(now, 0, stranger, &n);
        resent_bytes += drain(&mut s, now)
            .iter()
            .map(|(_, f)| f.len() as u64)
            .sum::<u64>();
    }
    assert!(resent_bytes > 0);
    assert!(
        resent_bytes <= 2 * nack_bytes,
        "{resent_bytes} re-sent for {nack_bytes} NACK bytes"
    );
    // a receiver that returned the token gets what it asks for
    let rx = peer();
    s.handle_datagram(t0, 0, rx, &window(0x5e55, 1, 0, 1024, 7));
    let now = t0 + Duration::from_secs(2);
    s.handle_datagram(now, 0, rx, &nack(0x5e55, 1, 0, 100));
    let got = data_only(drain(&mut s, now)).len();
    assert_eq!(got, 100);
}

#[test]
fn test_crafted_nack_costs_work_by_frames_resent_not_by_its_ranges() {
    let t0 = t0();
    let mut s = SenderSession::new(mpx_config(), t0).unwrap();
    s.push(t0, b"1234567\n");
    let _ = drain(&mut s, t0);
    // 128 ranges of 65,535 frames each, mostly never sent
    let mut payload = Vec::new();
    let ranges: Vec<NackRange> = (0..128u32)
        .map(|i| NackRange {
            start: i.wrapping_mul(0x0100_0000),
            count: u16::MAX,
        })
        .collect();
    emit_nack(&ranges, &mut payload);
    let f = frame(FrameType::Nack, 0x5e55, 1, 0, &payload);
    for _ in 0..64 {
        s.handle_datagram(t0, 0, peer(), &f);
    }
    // 64 x 128 x 65,535 iterations (~0.3 s) before; now the ranges are
    // clipped by arithmetic: work = ranges + frames looked up
    let st = s.stats().sender.unwrap();
    assert!(st.retransmitted <= 64, "{st:?}");
    assert!(st.nack_work <= 64 * (128 + 1), "{st:?}");
}

#[test]
fn test_frames_in_flight_on_a_dead_path_are_reinjected() {
    let t0 = t0();
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
    let mut s = SenderSession::new(cfg, t0).unwrap();
    let tok = s.guard.token(t0);
    let report = |frames: u64| {
        let mut p = FeedbackReport {
            echo_ts_us: 0,
            echo_delay_us: 0,
            frames,
            bytes: 0,
        }
        .to_bytes()
        .to_vec();
        p.extend_from_slice(&tok.to_be_bytes());
        frame(FrameType::Feedback, 0x5e55, 0, 0, &p)
    };
    // both paths report (so they can die), then 10 frames go out
    s.handle_datagram(t0, 0, peer(), &report(0));
    s.handle_datagram(t0, 1, peer(), &report(0));
    for _ in 0..10 {
        s.push(t0, b"1234567\n");
    }
    let sent = data_only(drain(&mut s, t0));
    let on0: Vec<u32> = sent
        .iter()
        .filter(|(d, _)| *d == Dest::Path(0))
        .map(|(_, f)| parse(f).0.seq)
        .collect();
    assert_eq!(on0.len(), 5);
    // path 1 keeps reporting; path 0 falls silent and is declared dead
    let mut now = t0;
    let mut again = Vec::new();
    while now < t0 + Duration::from_secs(2) {
        now += Duration::from_millis(100);
        s.handle_datagram(now, 1, peer(), &report(100));
        s.handle_timeout(now);
        again.extend(drain(&mut s, now));
    }
    let resent: Vec<u32> = again
        .iter()
        .map(|(_, f)| parse(f).0)
        .filter(|r| r.flags.contains(Flags::RETRANSMIT))
        .map(|r| r.seq)
        .collect();
    // frames were counted as in flight on path 0 (probes included): all
    // its data frames go out again, on path 1
    for seq in &on0 {
        assert!(resent.contains(seq), "{seq} not reinjected: {resent:?}");
    }
    assert!(again
        .iter()
        .filter(|(_, f)| parse(f).0.flags.contains(Flags::RETRANSMIT))
        .all(|(d, _)| *d == Dest::Path(1)));
    assert_eq!(s.stats().reinjected, on0.len() as u64);
}

#[test]
fn test_keyed_session_seals_everything_and_opens_only_authentic_control() {
    use crate::mpx::auth::{Key, Keyring, Opener, OpenerConfig, Sealer, Suite};
    use std::time::SystemTime;
    let t0 = t0();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ring = Keyring::new(vec![Key::from_bytes(&[5u8; 32])]).unwrap();
    let cfg = SessionConfig {
        keys: Some(SessionKeys {
            keyring: ring.clone(),
            suite: Suite::default(),
            opener: OpenerConfig::default(),
            wall_start: wall,
        }),
        max_datagram: 200,
        ..mpx_config()
    };
    let mut s = SenderSession::new(cfg, t0).unwrap();
    s.push(t0, &[b'x'; 500]);
    s.finish(t0);
    let out = drain(&mut s, t0);
    // every datagram is keyed, within max_datagram, and opens to the plain frame
    let mut rx = Opener::new(&ring, &OpenerConfig::default());
    let mut payload = Vec::new();
    for (_, f) in &out {
        assert!(f.len() <= 200, "{}", f.len());
        assert!(crate::mpx::auth::is_keyed(f));
        assert!(!f.windows(8).any(|w| w == b"xxxxxxxx"), "payload in clear");
        let mut b = f.clone();
        let o = rx.open(wall, &mut b).unwrap();
        if o.repr.frame_type == FrameType::Data {
            payload.extend_from_slice(&b[o.payload]);
        }
    }
    assert_eq!(payload, vec![b'x'; 500]);
    // an unkeyed NACK (a stranger) is refused and counted
    s.handle_datagram(t0, 0, peer(), &nack(0x5e55, 1, 0, 1));
    assert!(drain(&mut s, t0).is_empty());
    assert_eq!(s.stats().auth.unwrap().unkeyed, 1);
    // a sealed NACK from a member is answered, and the re-send is sealed anew
    let mut member = Sealer::new(&ring, Suite::default(), wall).unwrap();
    let plain = nack(0x5e55, 1, 0, 1);
    let mut buf = plain.clone();
    buf.resize(plain.len() + crate::mpx::auth::OVERHEAD, 0);
    let n = member.seal(wall, &mut buf, plain.len()).unwrap();
    s.handle_datagram(t0, 0, peer(), &buf[..n]);
    let again = drain(&mut s, t0);
    assert_eq!(again.len(), 1);
    let mut b = again[0].1.clone();
    let o = rx.open(wall, &mut b).expect("a fresh seal, not a replay");
    assert!(o.repr.flags.contains(Flags::RETRANSMIT));
}
