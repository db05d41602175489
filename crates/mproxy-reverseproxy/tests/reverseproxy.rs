#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end tests of the `mproxy-reverseproxy` binary
//!
//! Every test that opens a socket runs inside a private network namespace
//! (`in_netns`), so fixed ports are safe and no multicast leaves the test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mproxy_common::mpx::{
    CloseReason, Event, Receiver, ReceiverConfig, ReceiverStats, Sender, SenderConfig, StreamKey,
    StreamStats,
};
use mproxy_common::wire::{classify, Datagram, Flags, FrameType, HEADER_LEN, MAGIC};
use mproxy_testsupport::{
    bin, in_netns, spawn, wait_for_tcp_bound, wait_for_udp_bound, wait_until, ChildGuard,
    SplitMix64,
};

const STARTUP: Duration = Duration::from_secs(10);

fn reverseproxy(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("mproxy-reverseproxy"));
    cmd.args(args).stdout(Stdio::null());
    cmd
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Deterministic payloads of `len` bytes each
fn payloads(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut p = vec![0u8; len];
            rng.fill(&mut p);
            p
        })
        .collect()
}

/// Send each payload as a datagram, pausing 1 ms after every `burst`
fn send_paced(sock: &UdpSocket, to: SocketAddr, payloads: &[Vec<u8>], burst: usize) {
    for (i, p) in payloads.iter().enumerate() {
        sock.send_to(p, to).unwrap();
        if (i + 1) % burst == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A TCP client of a `--tcp-output-addr` that reads `want` bytes (or
/// until `timeout`) on its own thread
fn tcp_reader(to: SocketAddr, want: usize, timeout: Duration) -> thread::JoinHandle<Vec<u8>> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
    thread::spawn(move || read_bytes(stream, want, timeout))
}

fn read_bytes(mut stream: TcpStream, want: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // a signal, e.g. SIGCHLD of another test's child
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("reading from {:?}: {e}", stream.peer_addr()),
        }
    }
    got
}

/// Wait until the proxy logged `n` "client ... connected" lines
fn wait_for_clients(p: &ChildGuard, n: usize) {
    wait_until(STARTUP, &format!("{n} clients connected"), || {
        p.stderr_text().matches(" connected").count() >= n
    });
}

/// SIGINT, then expect exit 0 within `within`; returns stderr
fn interrupt_ok(p: &mut ChildGuard, within: Duration) -> String {
    p.interrupt();
    let status = p
        .wait_timeout(within)
        .unwrap_or_else(|| panic!("no exit {within:?} after SIGINT:\n{}", p.stderr_text()));
    let stderr = p.stderr_text();
    assert!(status.success(), "exit {status}:\n{stderr}");
    assert!(stderr.contains("summary"), "no summary:\n{stderr}");
    stderr
}

/// utime + stime of a process, in clock ticks
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the ")" that ends the command name; utime and stime are 14 and 15
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

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

/// Ask for a 4 MiB receive buffer (the kernel may grant less)
fn big_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let size: libc::c_int = 4 << 20;
    // SAFETY: `size` outlives the call and its length is passed along.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of_val(&size) as libc::socklen_t,
        );
    }
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
