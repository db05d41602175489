#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end tests of the `mproxy-reverseproxy` binary
//!
//! Every test that opens a socket runs inside a private network namespace
//! (`in_netns`), so fixed ports are safe and no multicast leaves the test.
//! The `--mpx` tests are in `reverseproxy_mpx.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mproxy_testsupport::{
    in_netns, spawn, wait_for_tcp_bound, wait_for_udp_bound, wait_until, SplitMix64,
};

#[test]
fn udp_input_reaches_three_tcp_clients_and_a_udp_output() {
    in_netns(|_ns| {
        let out_sock = UdpSocket::bind("127.0.0.1:9200").unwrap();
        big_rcvbuf(&out_sock);
        let mut p = spawn(&mut reverseproxy(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "127.0.0.1:9100",
            "--udp-output-addr",
            "127.0.0.1:9200",
        ]));
        wait_for_tcp_bound(9100, STARTUP);
        wait_for_udp_bound(9000, STARTUP);

        let data = payloads(2000, 1000, 1);
        let expected: Vec<u8> = data.concat();
        let readers: Vec<_> = (0..3)
            .map(|_| tcp_reader(addr("127.0.0.1:9100"), expected.len(), STARTUP))
            .collect();
        wait_for_clients(&p, 3);
        let udp_reader = thread::spawn(move || {
            out_sock
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while got.len() < 2000 {
                match out_sock.recv_from(&mut buf) {
                    Ok((n, _)) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got
        });

        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_paced(&sender, addr("127.0.0.1:9000"), &data, 20);

        for (i, r) in readers.into_iter().enumerate() {
            let got = r.join().unwrap();
            assert_eq!(got.len(), expected.len(), "client {i}: byte count");
            assert!(got == expected, "client {i}: bytes differ");
        }
        let got = udp_reader.join().unwrap();
        assert_eq!(got.len(), data.len(), "udp output: datagram count");
        assert!(got == data, "udp output: datagrams differ");

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert!(
            stderr.contains("udp input 127.0.0.1:9000: 2000 datagrams received, 2000 datagrams"),
            "{stderr}"
        );
        assert!(
            stderr.contains(
                "udp output 127.0.0.1:9200: 2000 datagrams from the group, 2000 datagrams"
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains("0 dropped for slow or departed clients"),
            "{stderr}"
        );
    });
}

#[test]
fn tcp_input_reaches_tcp_client_and_tee() {
    in_netns(|_ns| {
        let mut cmd = reverseproxy(&[
            "--tcp-listen-addr",
            "127.0.0.1:9001",
            "--tcp-output-addr",
            "127.0.0.1:9101",
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
        wait_for_tcp_bound(9001, STARTUP);
        wait_for_tcp_bound(9101, STARTUP);

        let mut data = vec![0u8; 300_000];
        SplitMix64::new(2).fill(&mut data);
        let reader = tcp_reader(addr("127.0.0.1:9101"), data.len(), STARTUP);
        wait_for_clients(&p, 1);

        let mut input = TcpStream::connect("127.0.0.1:9001").unwrap();
        for chunk in data.chunks(4096) {
            input.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        drop(input);

        let got = reader.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "tcp client: bytes differ");

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        let teed = tee.join().unwrap();
        assert!(teed == data, "--tee: {} bytes on stdout", teed.len());
        assert!(
            stderr.contains("tcp input 127.0.0.1:9001: 1 connections (0 rejected), 293.0 KiB read"),
            "{stderr}"
        );
        // stdout carries data only: no log text mixed in
        assert!(!String::from_utf8_lossy(&teed).contains("summary"));
    });
}

#[test]
fn tcp_input_eof_sends_nothing_and_stays_idle() {
    in_netns(|_ns| {
        let watch = UdpSocket::bind("127.0.0.1:9202").unwrap();
        watch
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut p = spawn(&mut reverseproxy(&[
            "--tcp-listen-addr",
            "127.0.0.1:9002",
            "--udp-output-addr",
            "127.0.0.1:9202",
            "--framing",
            "lines",
        ]));
        wait_for_tcp_bound(9002, STARTUP);
        // the output's group socket must exist before anything is sent
        wait_until(STARTUP, "the proxy to start", || {
            p.stderr_text().contains("started")
        });

        // one connection that closes without a byte, one that sends a line
        drop(TcpStream::connect("127.0.0.1:9002").unwrap());
        let mut c = TcpStream::connect("127.0.0.1:9002").unwrap();
        c.write_all(b"hello\nunterminated").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = watch.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
        let (n, _) = watch.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"unterminated", "the tail is flushed at EOF");
        drop(c);

        // after EOF: no datagrams at all (the original sent empty ones
        // forever), and no CPU spent
        thread::sleep(Duration::from_millis(200));
        let before = cpu_ticks(p.id());
        watch
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let extra = watch.recv_from(&mut buf);
        let after = cpu_ticks(p.id());
        assert!(extra.is_err(), "datagram after EOF: {extra:?}");
        let used = (after - before) as f64 / clock_ticks_per_second() as f64;
        assert!(used < 0.2, "{used:.2} s of CPU in 1 s of idling after EOF");

        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert!(
            stderr.contains(
                "tcp input 127.0.0.1:9002: 2 connections (0 rejected), 18 B read, 2 datagrams"
            ),
            "{stderr}"
        );
    });
}

#[test]
fn stalled_client_does_not_hold_back_others() {
    in_netns(|_ns| {
        let mut p = spawn(&mut reverseproxy(&[
            "--udp-listen-addr",
            "127.0.0.1:9003",
            "--tcp-output-addr",
            "127.0.0.1:9103",
            "--client-queue",
            "256",
        ]));
        wait_for_tcp_bound(9103, STARTUP);
        wait_for_udp_bound(9003, STARTUP);

        // the stalled client connects first and never reads
        let stalled = TcpStream::connect("127.0.0.1:9103").unwrap();
        wait_for_clients(&p, 1);
        let data = payloads(8000, 1400, 3);
        let expected = data.concat();
        let reader = tcp_reader(
            addr("127.0.0.1:9103"),
            expected.len(),
            Duration::from_secs(20),
        );
        wait_for_clients(&p, 2);

        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_paced(&sender, addr("127.0.0.1:9003"), &data, 10);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len(), "reading client: byte count");
        assert!(got == expected, "reading client: bytes differ");

        // shutdown is prompt even with a writer blocked on the stalled client
        let started = Instant::now();
        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(stderr.contains("is not keeping up"), "{stderr}");
        let stalled_port = stalled.local_addr().unwrap().port();
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("client 127.0.0.1:{stalled_port}:")))
            .unwrap_or_else(|| panic!("no summary line for the stalled client:\n{stderr}"));
        let dropped: u64 = line
            .rsplit_once(" written, ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no drop count in: {line}"));
        assert!(dropped > 0, "{line}");
        drop(stalled);
    });
}

#[test]
fn sigint_exits_zero_with_summary() {
    in_netns(|_ns| {
        let mut p = spawn(&mut reverseproxy(&[
            "--tcp-output-addr",
            "127.0.0.1:9104",
            "--multicast-addr",
            "[ff15::77:18]:9918",
            "--iface",
            "lo",
        ]));
        wait_for_tcp_bound(9104, STARTUP);
        let started = Instant::now();
        let stderr = interrupt_ok(&mut p, Duration::from_secs(2));
        assert!(started.elapsed() < Duration::from_secs(1), "slow shutdown");
        assert!(
            stderr.contains("tcp output 127.0.0.1:9104: 0 datagrams"),
            "{stderr}"
        );
    });
}

/// Run with `args`, expect exit 2 and exactly one line on stderr containing `want`
fn expect_usage_error(args: &[&str], want: &[&str]) {
    let mut p = spawn(&mut reverseproxy(args));
    let status = p
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{args:?}: still running"));
    let stderr = p.stderr_text();
    assert_eq!(status.code(), Some(2), "{args:?}: {status}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{stderr}");
    for w in want {
        assert!(lines[0].contains(w), "{args:?}: '{w}' not in: {}", lines[0]);
    }
}

#[test]
fn bad_input_exits_2_with_one_line() {
    in_netns(|_ns| {
        expect_usage_error(
            &[
                "--multicast-addr",
                "127.0.0.1:9",
                "--tcp-output-addr",
                "127.0.0.1:9105",
            ],
            &["--multicast-addr 127.0.0.1:9", "not a multicast address"],
        );
        expect_usage_error(
            &["--tcp-listen-addr", "nonsense"],
            &["--tcp-listen-addr", "'nonsense'"],
        );
        expect_usage_error(&[], &["nothing to do", "--udp-listen-addr"]);
        expect_usage_error(
            &["--udp-listen-addr", "0.0.0.0:9918"],
            &["--udp-listen-addr 0.0.0.0:9918", "group's own traffic"],
        );

        let busy = TcpListener::bind("127.0.0.1:9006").unwrap();
        expect_usage_error(
            &["--tcp-listen-addr", "127.0.0.1:9006"],
            &["binding --tcp-listen-addr 127.0.0.1:9006", "in use"],
        );
        expect_usage_error(
            &["--tcp-output-addr", "127.0.0.1:9006"],
            &["binding --tcp-output-addr 127.0.0.1:9006", "in use"],
        );
        drop(busy);
    });
}

/// Read exactly `n` bytes (bounded by a 5 s timeout)
fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Closed by the proxy: EOF (or a reset) within 5 s
fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "{what} still open"
    );
}

#[test]
fn max_clients_evicts_the_client_that_made_the_least_progress() {
    in_netns(|_ns| {
        let mut p = spawn(&mut reverseproxy(&[
            "--udp-listen-addr",
            "127.0.0.1:9007",
            "--tcp-output-addr",
            "127.0.0.1:9107",
            "--max-clients",
            "2",
        ]));
        wait_for_tcp_bound(9107, STARTUP);
        wait_for_udp_bound(9007, STARTUP);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // on an idle group nobody has taken a byte: the oldest goes first
        let mut x = TcpStream::connect("127.0.0.1:9107").unwrap();
        let mut y = TcpStream::connect("127.0.0.1:9107").unwrap();
        wait_for_clients(&p, 2);
        let mut z = TcpStream::connect("127.0.0.1:9107").unwrap();
        assert_closed(&mut x, "the oldest client that never took a byte");
        wait_for_clients(&p, 3);

        // y and z both take data: the one with fewer bytes goes, the
        // older one on a tie
        sender.send_to(b"hello", "127.0.0.1:9007").unwrap();
        assert_eq!(read_exact_n(&mut y, 5), b"hello");
        assert_eq!(read_exact_n(&mut z, 5), b"hello");
        let w = TcpStream::connect("127.0.0.1:9107").unwrap();
        assert_closed(&mut y, "the older of two equal readers");
        wait_for_clients(&p, 4);

        // a client that leaves frees its slot: at once on a reset, at the
        // next datagram after a plain close (it might only have half-closed)
        drop(z);
        wait_until(STARTUP, "the closed client to be dropped", || {
            sender.send_to(b"ping", "127.0.0.1:9007").unwrap();
            thread::sleep(Duration::from_millis(20));
            p.stderr_text().contains("disconnected")
        });
        let c = TcpStream::connect("127.0.0.1:9107").unwrap();
        wait_for_clients(&p, 5);
        let stderr = interrupt_ok(&mut p, Duration::from_secs(3));
        assert!(stderr.contains("--max-clients"), "{stderr}");
        assert!(
            stderr.contains("5 clients (0 rejected, 2 evicted"),
            "{stderr}"
        );
        drop((w, c));
    });
}
