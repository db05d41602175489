#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end tests of the `mproxy-reverseproxy` binary with `--mpx`
//! framing: streams per input, reassembly in the outputs
//!
//! Every test that opens a socket runs inside a private network namespace
//! (`in_netns`), so fixed ports are safe and no multicast leaves the test.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mproxy_common::mpx::{
    CloseReason, Event, Receiver, ReceiverConfig, ReceiverStats, Sender, SenderConfig, StreamKey,
    StreamStats,
};
use mproxy_common::wire::{classify, Datagram, Flags, FrameType, HEADER_LEN, MAGIC};
use mproxy_testsupport::{
    in_netns, spawn, wait_for_tcp_bound, wait_for_udp_bound, wait_until, SplitMix64,
};

/// About `len` bytes of lines `"{tag},{n},{letters}\n"`, 20 to 200 bytes each
fn tagged_lines(tag: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 256);
    let mut n = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("{tag},{n:07},").as_bytes());
        for _ in 0..rng.range(10, 190) {
            out.push(b'a' + (rng.next_u64() % 26) as u8);
        }
        out.push(b'\n');
        n += 1;
    }
    out
}

/// Write `data` to a new connection to `to` in 4 KiB pieces, 2 ms apart
/// (about 2 MB/s, so a slow test receiver on a busy machine keeps up), then close
fn tcp_feed(to: &str, data: Vec<u8>) -> thread::JoinHandle<()> {
    let mut conn = TcpStream::connect(to).unwrap();
    thread::spawn(move || {
        for chunk in data.chunks(4096) {
            conn.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
    })
}

/// One stream as a test receiver reassembled it
#[derive(Debug)]
struct Reassembled {
    key: StreamKey,
    data: Vec<u8>,
    reason: CloseReason,
    stats: StreamStats,
}

/// Reassemble the mpx streams arriving on `sock` until `streams` of them
/// have closed (or `timeout`); raw datagrams are a failure
fn mpx_collector(
    sock: UdpSocket,
    streams: usize,
    timeout: Duration,
) -> thread::JoinHandle<(Vec<Reassembled>, ReceiverStats)> {
    big_rcvbuf(&sock);
    thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut rx = Receiver::new(ReceiverConfig::default());
        let mut data: BTreeMap<StreamKey, Vec<u8>> = BTreeMap::new();
        let mut done = Vec::new();
        let mut buf = vec![0u8; 65536];
        while done.len() < streams && Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let raw = rx.handle_datagram(Instant::now(), from, &buf[..n]);
                assert!(raw.is_none(), "a raw datagram of {n} bytes");
            }
            if rx.poll_timeout().is_some_and(|t| t <= Instant::now()) {
                rx.handle_timeout(Instant::now());
            }
            while let Some(ev) = rx.poll_event() {
                match ev {
                    Event::Data { key, payload } => {
                        data.entry(key).or_default().extend_from_slice(&payload)
                    }
                    Event::Closed { key, reason, stats } => done.push(Reassembled {
                        key,
                        data: data.remove(&key).unwrap_or_default(),
                        reason,
                        stats,
                    }),
                    Event::Opened { .. } | Event::Gap { .. } => {}
                }
            }
        }
        assert_eq!(rx.stats().checksum_errors + rx.stats().truncated, 0);
        (done, rx.stats())
    })
}

/// The heartbeat count in the summary of an mpx TCP input
fn heartbeats_sent(stderr: &str) -> u64 {
    stderr
        .split_once("mpx: one stream per connection, ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no heartbeat count:\n{stderr}"))
}

/// The lines of `bytes` that start with `tag` and a comma, concatenated
fn lines_tagged(bytes: &[u8], tag: &str) -> Vec<u8> {
    let prefix = format!("{tag},");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.starts_with(prefix.as_bytes()))
        .flatten()
        .copied()
        .collect()
}

#[test]
fn mpx_two_tcp_inputs_are_two_streams() {
    in_netns(|_ns| {
        let out_sock = UdpSocket::bind("127.0.0.1:9210").unwrap();
        let mut p = spawn(&mut reverseproxy(&[
            "--mpx",
            "--framing",
            "lines",
            "--tcp-listen-addr",
            "127.0.0.1:9010",
            "--tcp-output-addr",
            "127.0.0.1:9110",
            "--udp-output-addr",
            "127.0.0.1:9210",
        ]));
        wait_for_tcp_bound(9010, STARTUP);
        wait_for_tcp_bound(9110, STARTUP);
        let a = tagged_lines("A", 1 << 20, 10);
        let b = tagged_lines("B", 1 << 20, 11);
        let total = a.len() + b.len();
        let reader = tcp_reader(addr("127.0.0.1:9110"), total, Duration::from_secs(30));
        wait_for_clients(&p, 1);
        let collector = mpx_collector(out_sock, 2, Duration::from_secs(30));

        let feeds = [
            tcp_feed("127.0.0.1:9010", a.clone()),
            tcp_feed("127.0.0.1:9010", b.clone()),
        ];
        for f in feeds {
            f.join().unwrap();
        }

        // the UDP output forwards the frames: two streams, each one input
        let (mut streams, rx_stats) = collector.join().unwrap();
        assert_eq!(streams.len(), 2, "streams closed: {streams:?} {rx_stats:?}");
        streams.sort_by_key(|s| s.data.first().copied());
        assert_eq!(streams[0].key.session, streams[1].key.session);
        let mut ids = [streams[0].key.stream, streams[1].key.stream];
        ids.sort_unstable();
        assert_eq!(ids, [1, 2], "stream ids from 1, one per connection");
        for (s, want) in streams.iter().zip([&a, &b]) {
            assert_eq!(s.data.len(), want.len(), "{}: byte count", s.key);
            assert!(s.data == *want, "{}: bytes differ", s.key);
            assert_eq!(s.reason, CloseReason::Fin, "{}", s.key);
            assert_eq!((s.stats.gaps, s.stats.lost), (0, 0), "{}", s.key);
        }

        // the TCP client gets both, whole lines, each input's in order
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total, "tcp client: byte count");
        assert!(lines_tagged(&got, "A") == a, "tcp client: input A differs");
        assert!(lines_tagged(&got, "B") == b, "tcp client: input B differs");

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert_eq!(
            stderr.matches("stream closed: ").count(),
            2,
            "the tcp output logs each stream's end:\n{stderr}"
        );
        assert!(
            stderr.contains("tcp input 127.0.0.1:9010: 2 connections (0 rejected)"),
            "{stderr}"
        );
        // after FIN, three closing heartbeats per stream, although the
        // connections are gone
        let heartbeats = heartbeats_sent(&stderr);
        assert!(heartbeats >= 6, "{heartbeats} heartbeats");
        let line = stderr
            .lines()
            .find(|l| l.contains("tcp output 127.0.0.1:9110: "))
            .unwrap_or_else(|| panic!("no tcp output summary:\n{stderr}"));
        assert!(
            line.contains("2 streams (0 refused, 0 evicted)") && line.contains("0 gaps (0 lost)"),
            "{line}"
        );
    });
}

#[test]
fn mpx_tcp_client_gets_bytes_without_headers() {
    in_netns(|_ns| {
        let mut cmd = reverseproxy(&[
            "--mpx",
            "--tcp-listen-addr",
            "127.0.0.1:9011",
            "--tcp-output-addr",
            "127.0.0.1:9111",
            "--max-datagram",
            "1000",
            "--tee",
        ]);
        cmd.stdout(Stdio::piped());
        let mut p = spawn(&mut cmd);
        let mut stdout = p.child_mut().stdout.take().unwrap();
        let tee = thread::spawn(move || {
            let mut all = Vec::new();
            stdout.read_to_end(&mut all).unwrap();
            all
        });
        wait_for_tcp_bound(9011, STARTUP);
        wait_for_tcp_bound(9111, STARTUP);

        let mut data = vec![0u8; 500_000];
        SplitMix64::new(12).fill(&mut data);
        // binary data that looks like a frame: it must arrive as bytes, not be parsed
        data[..2].copy_from_slice(&MAGIC);
        let client = TcpStream::connect("127.0.0.1:9111").unwrap();
        wait_for_clients(&p, 1);
        let mut input = TcpStream::connect("127.0.0.1:9011").unwrap();
        for chunk in data.chunks(4096) {
            input.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        let got = read_bytes(
            client.try_clone().unwrap(),
            data.len(),
            Duration::from_secs(20),
        );
        assert_eq!(got.len(), data.len(), "byte count");
        assert!(got == data, "bytes differ");
        // the input stays open and idle: heartbeats, which carry no bytes
        let extra = read_bytes(client.try_clone().unwrap(), 1, Duration::from_millis(1500));
        assert!(extra.is_empty(), "{} bytes while idle", extra.len());
        // then ends: FIN and closing heartbeats, which carry no bytes either
        drop(input);
        wait_until(STARTUP, "the stream to close", || {
            p.stderr_text().contains("stream closed: ")
        });
        let extra = read_bytes(client, 1, Duration::from_millis(500));
        assert!(extra.is_empty(), "{} bytes after the end", extra.len());

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        let teed = tee.join().unwrap();
        assert!(teed == data, "--tee: {} bytes on stdout", teed.len());
        assert!(
            stderr.contains("stream closed: 500000 bytes") && stderr.contains("reason=Fin"),
            "{stderr}"
        );
        assert!(stderr.contains(", 0 dropped for slow"), "{stderr}");
        let heartbeats = heartbeats_sent(&stderr);
        assert!(
            heartbeats >= 4,
            "an idle heartbeat and 3 closing ones: {heartbeats}"
        );
    });
}

/// An mpx frame of some other sender (session 0xfeed, stream 9)
fn foreign_frame(payload: &[u8]) -> Vec<u8> {
    let mut s = Sender::new(0xfeed, 9, &SenderConfig::default());
    let mut out = Vec::new();
    s.push(Instant::now(), payload, |f| out.push(f.to_vec()));
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn mpx_udp_input_frames_raw_datagrams_and_passes_frames() {
    in_netns(|_ns| {
        let out_sock = UdpSocket::bind("127.0.0.1:9212").unwrap();
        big_rcvbuf(&out_sock);
        out_sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // inputs and outputs in two processes, so the output outlives the input
        let mut out = spawn(&mut reverseproxy(&["--udp-output-addr", "127.0.0.1:9212"]));
        wait_until(STARTUP, "the output to start", || {
            out.stderr_text().contains("started")
        });
        let mut p = spawn(&mut reverseproxy(&[
            "--mpx",
            "--udp-listen-addr",
            "127.0.0.1:9012",
            "--max-datagram",
            "1024",
        ]));
        wait_for_udp_bound(9012, STARTUP);

        let mut raw = payloads(100, 500, 13);
        raw.push(payloads(1, 3000, 14).remove(0));
        let foreign = foreign_frame(b"already framed\n");
        let mut invalid = foreign.clone();
        invalid[HEADER_LEN] ^= 1; // checksum no longer matches
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_paced(&sender, addr("127.0.0.1:9012"), &raw, 10);
        send_paced(
            &sender,
            addr("127.0.0.1:9012"),
            &[foreign.clone(), invalid.clone()],
            10,
        );

        // 100 frames of one datagram each, 3 for the big one, the two passed through
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while got.len() < 105 {
            let (n, _) = out_sock.recv_from(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        let mut stream = None;
        let mut payloads_seen = Vec::new();
        for d in &got[..103] {
            let Datagram::Mpx(repr, payload) = classify(d) else {
                panic!("not a frame: {} bytes", d.len())
            };
            assert_eq!(repr.frame_type, FrameType::Data);
            assert!(d.len() <= 1024);
            assert_eq!(*stream.get_or_insert(repr.stream), repr.stream);
            payloads_seen.push(payload.to_vec());
        }
        assert_eq!(stream, Some(1));
        assert!(payloads_seen[..100] == raw[..100], "one frame per datagram");
        assert_eq!(payloads_seen[100].len(), 1000);
        assert!(payloads_seen[100..].concat() == raw[100], "split datagram");
        assert!(got[103] == foreign, "a frame is forwarded untouched");
        assert!(got[104] == invalid, "so is an invalid one");

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert!(
            stderr.contains(
                "mpx stream 1: 101 raw datagrams framed (1 split), 2 frames passed through"
            ),
            "{stderr}"
        );
        // at shutdown: FIN, then the three closing heartbeats (flagged FIN;
        // idle heartbeats before them are not)
        let mut fin = false;
        let mut closing = 0;
        while let Ok((n, _)) = out_sock.recv_from(&mut buf) {
            if let Datagram::Mpx(repr, _) = classify(&buf[..n]) {
                let flagged = repr.flags.contains(Flags::FIN);
                fin |= repr.frame_type == FrameType::Data && flagged;
                closing += usize::from(repr.frame_type == FrameType::Heartbeat && flagged);
            }
            if closing == 3 {
                break;
            }
        }
        assert!(
            fin && closing == 3,
            "FIN {fin}, {closing} closing heartbeats"
        );
        interrupt_ok(&mut out, Duration::from_secs(3));
    });
}

#[test]
fn udp_output_strip_sends_reassembled_payloads() {
    in_netns(|_ns| {
        let out_sock = UdpSocket::bind("127.0.0.1:9213").unwrap();
        big_rcvbuf(&out_sock);
        out_sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut p = spawn(&mut reverseproxy(&[
            "--mpx",
            "--udp-listen-addr",
            "127.0.0.1:9013",
            "--udp-output-addr",
            "127.0.0.1:9213",
            "--udp-output-strip",
        ]));
        wait_for_udp_bound(9013, STARTUP);
        wait_until(STARTUP, "the proxy to start", || {
            p.stderr_text().contains("started")
        });
        let mut rng = SplitMix64::new(15);
        let data: Vec<Vec<u8>> = (0..500)
            .map(|_| {
                let mut d = vec![0u8; rng.range(1, 1400)];
                rng.fill(&mut d);
                d[0] = b'x'; // raw, whatever the random bytes
                d
            })
            .collect();
        // received while sending: the socket buffer would not hold them all
        let want = data.len();
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while got.len() < want {
                match out_sock.recv_from(&mut buf) {
                    Ok((n, _)) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            (got, out_sock)
        });
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_paced(&sender, addr("127.0.0.1:9013"), &data, 10);
        let (got, out_sock) = reader.join().unwrap();
        assert_eq!(got.len(), data.len(), "datagram count");
        for (i, (got, want)) in got.iter().zip(&data).enumerate() {
            assert!(got == want, "datagram {i} differs");
        }
        let mut buf = vec![0u8; 65536];
        // idle: heartbeats are not payloads, nothing more arrives
        out_sock
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        assert!(
            out_sock.recv_from(&mut buf).is_err(),
            "a datagram after the data"
        );
        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        let line = stderr
            .lines()
            .find(|l| l.contains("udp output 127.0.0.1:9213: "))
            .unwrap_or_else(|| panic!("no udp output summary:\n{stderr}"));
        assert!(
            line.contains("500 datagrams (") && line.contains("; mpx: "),
            "{line}"
        );
    });
}
