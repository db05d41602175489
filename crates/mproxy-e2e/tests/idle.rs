//! A client whose input is idle still serves its receivers: NACKs are
//! answered at once, not when the next line arrives (the regression of
//! the sender-session reshaping), so a sparse `tail -F`-style feed over a
//! lossy link is repaired byte-exact. Each test in its own namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mproxy_common::wire::{classify, emit_nack, Datagram, Flags, FrameType, NackRange, Repr};
use mproxy_e2e::{reached_len, start, start_server, stop, wait_exit};
use mproxy_testsupport::{in_netns, LossyRelay, RelayConfig, TempDir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// The next mpx frame on `sock` that `want` accepts, with its source
fn next_frame(
    sock: &UdpSocket,
    want: impl Fn(&Repr) -> bool,
    timeout: Duration,
) -> Option<(Repr, Vec<u8>, std::net::SocketAddr)> {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        sock.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Datagram::Mpx(r, p) = classify(&buf[..n]) {
            if want(&r) {
                return Some((r, p.to_vec(), from));
            }
        }
    }
    None
}

/// One line into a FIFO, then silence: a NACK for it is answered within
/// a timer tick (the old client answered only when the next line came)
#[test]
fn idle_input_nack_is_answered_at_once() {
    in_netns(|_| {
        let dir = TempDir::new();
        let fifo = dir.join("feed");
        mkfifo(&fifo);
        let rx = UdpSocket::bind("127.0.0.1:9500").unwrap();
        let client = start(
            "mproxy-client",
            &[
                "--mpx",
                "--path",
                s(&fifo),
                "--server-addr",
                "127.0.0.1:9500",
            ],
        );
        let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        feed.write_all(b"one line\n").unwrap();
        feed.flush().unwrap();
        let (first, payload, from) = next_frame(
            &rx,
            |r| r.frame_type == FrameType::Data,
            Duration::from_secs(10),
        )
        .expect("the line as a DATA frame");
        assert_eq!((first.seq, payload.as_slice()), (0, &b"one line\n"[..]));
        // the input stays idle; a receiver asks for the frame again
        std::thread::sleep(Duration::from_millis(300));
        let mut ranges = Vec::new();
        emit_nack(&[NackRange { start: 0, count: 1 }], &mut ranges);
        let nack = Repr {
            frame_type: FrameType::Nack,
            flags: Flags::NONE,
            session: first.session,
            stream: first.stream,
            seq: 0,
        };
        let mut frame = vec![0u8; 24 + ranges.len()];
        let n = nack.emit_with_payload(&mut frame, &ranges).unwrap();
        let asked = Instant::now();
        rx.send_to(&frame[..n], from).unwrap();
        let (again, payload, _) = next_frame(
            &rx,
            |r| r.frame_type == FrameType::Data && r.flags.contains(Flags::RETRANSMIT),
            Duration::from_secs(3),
        )
        .expect("a re-send while the input is idle");
        let latency = asked.elapsed();
        eprintln!("re-send {latency:?} after the NACK, input idle");
        assert_eq!((again.seq, payload.as_slice()), (0, &b"one line\n"[..]));
        drop(feed);
        let (code, log) = wait_exit(client);
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("done: read 9 B"), "{log}");
        assert!(log.contains("1 frames re-sent"), "{log}");
    });
}

/// A sparse feed (a line every 350 ms, longer than the receiver's gap
/// timeout) through a relay losing 25% each way: every lost line is
/// repaired while the input is idle, and the output is byte-exact
#[test]
fn sparse_feed_over_lossy_relay_is_repaired_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let fifo = dir.join("feed");
        mkfifo(&fifo);
        let out = dir.join("out.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9511",
                "--accept",
                "mpx",
                "--path",
                s(&out),
            ],
            &[9511],
        );
        let relay = LossyRelay::start(
            "127.0.0.1:9510".parse().unwrap(),
            "127.0.0.1:9511".parse().unwrap(),
            RelayConfig {
                seed: 11,
                drop: 0.25,
                return_path: true,
                return_drop: 0.25,
                ..RelayConfig::default()
            },
        );
        let client = start(
            "mproxy-client",
            &[
                "--mpx",
                "--path",
                s(&fifo),
                "--server-addr",
                "127.0.0.1:9510",
            ],
        );
        let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let mut sent = Vec::new();
        for i in 0..12 {
            let line = format!("$GPGGA,{i:04},4916.45,N,12311.12,W\n");
            feed.write_all(line.as_bytes()).unwrap();
            feed.flush().unwrap();
            sent.extend_from_slice(line.as_bytes());
            std::thread::sleep(Duration::from_millis(350));
        }
        drop(feed);
        let (code, client_log) = wait_exit(client);
        let done = reached_len(&out, sent.len() as u64, Duration::from_secs(10));
        let rec = relay.stop();
        let server_log = stop(server);
        eprintln!("relay: {rec:?}\nclient: {client_log}\nserver: {server_log}");
        assert_eq!(code, Some(0), "{client_log}");
        assert!(done, "output incomplete");
        assert_eq!(std::fs::read(&out).unwrap(), sent);
        assert!(rec.dropped > 0, "the seed must drop something: {rec:?}");
        assert!(server_log.contains(" 0 gaps (0 lost)"), "{server_log}");
    });
}
