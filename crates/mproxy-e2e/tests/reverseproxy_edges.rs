//! The TCP/TLS edges of `mproxy-reverseproxy`, each test in its own
//! network namespace: `tls://` outputs and inputs (rustls clients of this
//! test, certificates made here with rcgen, and `openssl s_client` as a
//! client none of this code wrote), mutual TLS, fan-out isolation from a
//! stalled client under both `--slow-client` policies (with the proxy's
//! memory and missed counts checked), and connections that reset, never
//! speak or half-close (with the proxy's descriptors checked).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod pki;
mod rp;

use mproxy_e2e::{run, stop};
use mproxy_testsupport::{
    in_netns, skip, spawn_with_stdin, wait_for_tcp_bound, wait_for_udp_bound, wait_until, TempDir,
};
use rp::{
    addr, args, client_config, fd_count, number_before, payloads, proc_status, read_compare,
    read_upto, s, send_paced, set_linger_zero, set_small_rcvbuf, start_rp, tls_connect,
    wait_for_clients, Pki, TlsStream, STARTUP,
};

// ---------------------------------------------------------------- TLS tests

#[test]
fn tls_output_is_byte_exact_and_a_wrong_ca_fails() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let mut a = args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "tls://127.0.0.1:9443",
        ]);
        a.extend(pki.server_args());
        let p = start_rp(&a);
        wait_for_tcp_bound(9443, STARTUP);
        wait_for_udp_bound(9000, STARTUP);
        wait_until(STARTUP, "the proxy to start", || {
            p.stderr_text().contains("started")
        });

        // a client that does not trust the proxy's CA cannot connect
        let rogue = client_config(&pki.rogue_ca, None);
        let Err(err) = tls_connect(addr("127.0.0.1:9443"), &rogue) else {
            panic!("a client trusting another CA must fail");
        };
        assert!(
            format!("{err}").contains("UnknownIssuer"),
            "unexpected error: {err}"
        );

        let good = client_config(&pki.ca, None);
        let mut readers: Vec<TlsStream> = (0..2)
            .map(|_| tls_connect(addr("127.0.0.1:9443"), &good).unwrap())
            .collect();
        wait_for_clients(&p, 3);
        let data = payloads(3000, 1000, 7);
        let expected = data.concat();
        let feeder = thread::spawn(move || send_paced(addr("127.0.0.1:9000"), &data, 4));
        for (i, r) in readers.iter_mut().enumerate() {
            let (got, err) = read_upto(r, expected.len(), Duration::from_secs(40));
            assert!(err.is_none(), "reader {i}: {err:?}");
            assert_eq!(got.len(), expected.len(), "reader {i}: byte count");
            assert!(got == expected, "reader {i}: bytes differ");
        }
        feeder.join().unwrap();
        let text = stop(p);
        assert!(text.contains("TLS handshake failed"), "{text}");
        let failures = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " TLS failures");
        assert_eq!(failures, 1, "{text}");
    });
}

#[test]
fn tls_client_ca_refuses_a_client_without_certificate() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let mut a = args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "tls://127.0.0.1:9443",
            "--tls-client-ca",
            s(&pki.ca.cert_pem),
        ]);
        a.extend(pki.server_args());
        let p = start_rp(&a);
        wait_for_tcp_bound(9443, STARTUP);
        wait_for_udp_bound(9000, STARTUP);

        // TLS 1.3: the client's handshake ends before the server has
        // checked it, so the refusal arrives as an alert at the first read
        let anonymous = client_config(&pki.ca, None);
        let refused = match tls_connect(addr("127.0.0.1:9443"), &anonymous) {
            Err(e) => e,
            Ok(mut s) => {
                let (got, err) = read_upto(&mut s, 1, STARTUP);
                assert!(got.is_empty(), "a client without a certificate got data");
                err.expect("a client without a certificate must be refused")
            }
        };
        assert!(
            format!("{refused}").contains("CertificateRequired"),
            "unexpected error: {refused}"
        );

        let with_cert = client_config(&pki.ca, Some(&pki.client));
        let mut reader = tls_connect(addr("127.0.0.1:9443"), &with_cert).unwrap();
        wait_for_clients(&p, 2);
        wait_until(STARTUP, "the refused client to be reaped", || {
            p.stderr_text()
                .contains("--tls-client-ca requires a client certificate")
        });
        let data = payloads(500, 1000, 8);
        let expected = data.concat();
        send_paced(addr("127.0.0.1:9000"), &data, 4);
        let (got, err) = read_upto(&mut reader, expected.len(), Duration::from_secs(20));
        assert!(err.is_none(), "{err:?}");
        assert!(
            got == expected,
            "mTLS reader: {} of {} bytes, or they differ",
            got.len(),
            expected.len()
        );
        let text = stop(p);
        let failures = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " TLS failures");
        assert_eq!(failures, 1, "{text}");
    });
}

#[test]
fn tls_input_reaches_a_plain_output_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let mut a = args(&[
            "--tcp-listen-addr",
            "tls://127.0.0.1:9001",
            "--tcp-output-addr",
            "127.0.0.1:9100",
        ]);
        a.extend(pki.server_args());
        let p = start_rp(&a);
        wait_for_tcp_bound(9001, STARTUP);
        wait_for_tcp_bound(9100, STARTUP);
        wait_until(STARTUP, "the proxy to start", || {
            p.stderr_text().contains("started")
        });
        let mut reader = TcpStream::connect("127.0.0.1:9100").unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        wait_for_clients(&p, 1);

        // a wrong CA on the input side fails too, and is counted
        let rogue = client_config(&pki.rogue_ca, None);
        assert!(tls_connect(addr("127.0.0.1:9001"), &rogue).is_err());

        let expected = payloads(1, 1 << 20, 9).concat();
        let mut feed = tls_connect(addr("127.0.0.1:9001"), &client_config(&pki.ca, None)).unwrap();
        let writer = {
            let data = expected.clone();
            thread::spawn(move || {
                // ~4 MB/s: the group's receive buffers never overflow
                for c in data.chunks(4096) {
                    feed.write_all(c).unwrap();
                    feed.flush().unwrap();
                    thread::sleep(Duration::from_millis(1));
                }
                feed.conn.send_close_notify();
                feed.flush().unwrap();
                feed
            })
        };
        let (got, err) = read_upto(&mut reader, expected.len(), Duration::from_secs(40));
        let _feed = writer.join().unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got.len(), expected.len(), "byte count");
        assert!(got == expected, "bytes differ");
        let text = stop(p);
        let key = "tcp input tls://127.0.0.1:9001: ";
        assert_eq!(number_before(&text, key, " connections"), 2, "{text}");
        assert_eq!(number_before(&text, key, " TLS failures"), 1, "{text}");
    });
}

#[test]
fn tls_output_read_by_openssl_s_client() {
    in_netns(|_| {
        if Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            skip("openssl not found (apt-get install openssl)");
            return;
        }
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let mut a = args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "tls://127.0.0.1:9443",
        ]);
        a.extend(pki.server_args());
        let p = start_rp(&a);
        wait_for_tcp_bound(9443, STARTUP);
        wait_for_udp_bound(9000, STARTUP);

        // s_client writes what it receives to stdout; -quiet keeps it
        // running when stdin is idle, -verify_return_error makes a bad
        // certificate fatal
        let out_path = dir.join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let mut openssl = spawn_with_stdin(
            Command::new("openssl")
                .args(["s_client", "-connect", "127.0.0.1:9443", "-CAfile"])
                .arg(&pki.ca.cert_pem)
                .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-quiet"])
                .stdin(Stdio::piped())
                .stdout(out),
        );
        wait_for_clients(&p, 1);
        // no need to wait for the handshake: the 2000 datagrams fit in the
        // client's queue (--client-queue, 4 MiB by default) until it is done
        let data = payloads(2000, 1000, 10);
        let expected = data.concat();
        send_paced(addr("127.0.0.1:9000"), &data, 4);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0) < expected.len() as u64
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        let _stdin = openssl.child_mut().stdin.take();
        openssl.kill();
        let got = std::fs::read(&out_path).unwrap();
        let text = stop(p);
        assert_eq!(
            got.len(),
            expected.len(),
            "openssl got {} of {} bytes; openssl: {}; proxy: {text}",
            got.len(),
            expected.len(),
            openssl.stderr_text()
        );
        assert!(got == expected, "bytes differ");
        assert!(!openssl.stderr_text().contains("verify error"));
        let failures = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " TLS failures");
        assert_eq!(failures, 0, "{text}");
    });
}

#[test]
fn tls_bad_files_exit_2_with_one_line_naming_the_file() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "this is not PEM at all\n").unwrap();
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let (garbage, broken) = (s(&garbage), s(&broken));
        let (cert, key) = (s(&pki.server.cert_pem), s(&pki.server.key_pem));
        let out = ["--tcp-output-addr", "tls://127.0.0.1:9443"];
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["--tls-cert", "/nonexistent/c.pem", "--tls-key", key],
                vec!["--tls-cert", "/nonexistent/c.pem", "cannot read"],
            ),
            (
                vec!["--tls-cert", garbage, "--tls-key", key],
                vec!["--tls-cert", garbage, "no PEM certificate"],
            ),
            (
                vec!["--tls-cert", broken, "--tls-key", key],
                vec!["--tls-cert", broken, "not valid PEM"],
            ),
            (
                vec!["--tls-cert", cert, "--tls-key", "/nonexistent/k.pem"],
                vec!["--tls-key", "/nonexistent/k.pem"],
            ),
            (
                vec!["--tls-cert", cert, "--tls-key", garbage],
                vec!["--tls-key", garbage, "no PEM private key"],
            ),
            (
                vec!["--tls-cert", cert, "--tls-key", s(&pki.client.key_pem)],
                vec!["--tls-key", "does not fit"],
            ),
            (
                vec![
                    "--tls-cert",
                    cert,
                    "--tls-key",
                    key,
                    "--tls-client-ca",
                    garbage,
                ],
                vec!["--tls-client-ca", garbage],
            ),
            (vec!["--tls-cert", cert], vec!["--tls-cert needs --tls-key"]),
            (vec![], vec!["needs --tls-cert and --tls-key"]),
        ];
        for (extra, wanted) in cases {
            check_exit_2(&[&out[..], &extra].concat(), &wanted);
        }
        check_exit_2(
            &["--tcp-output-addr", "127.0.0.1:9100", "--tls-cert", cert],
            &["--tls-cert only applies to TLS listeners"],
        );
        check_exit_2(
            &["--tcp-listen-addr", "ssl://127.0.0.1:9100"],
            &["--tcp-listen-addr"],
        );
        // nothing was left listening
        assert!(!mproxy_testsupport::is_tcp_listening(9443));
    });
}

fn check_exit_2(args: &[&str], wanted: &[&str]) {
    let out = run("mproxy-reverseproxy", args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    for w in wanted {
        assert!(err.contains(w), "{args:?}: '{w}' missing from: {err}");
    }
}

// ---------------------------------------------------------------- fan-out isolation

/// Datagrams of the fan-out tests (16.8 MB; large datagrams, so 49
/// clients cost fewer system calls), and the queue each client gets (in
/// datagrams of this size: `--client-queue` is in bytes)
const FAN_DATAGRAMS: usize = 4200;
const FAN_LEN: usize = 4000;
const FAN_QUEUE: usize = 256;
const FAN_READERS: usize = 49;
/// Longest the feed waits for its slowest reader, in all
const FAN_FEED_LIMIT: Duration = Duration::from_secs(60);

/// The fan-out tests take both cores of a small machine: one at a time
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a fan-out run measured
struct FanOut {
    /// The proxy's stderr after SIGINT (summary included)
    text: String,
    /// The stalled client's summary line
    stalled_line: String,
    /// Peak RSS minus RSS before the feed, kB
    rss_growth_kb: u64,
    /// The allowed growth, kB
    rss_bound_kb: u64,
    /// Bytes the stalled client could still read afterwards (what its
    /// socket buffers held; the kernel may reset the proxy's orphaned
    /// end before the rest arrives)
    stalled_bytes: usize,
    /// Those bytes are the start of the feed, in order
    stalled_in_order: bool,
}

/// 49 reading clients and one that never reads, ~16 MB through the group
fn fan_out_with_stalled_client(policy: &str) -> FanOut {
    let _one_at_a_time = HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let p = start_rp(&args(&[
        "--udp-listen-addr",
        "127.0.0.1:9000",
        "--tcp-output-addr",
        "127.0.0.1:9100",
        "--client-queue",
        &format!("{}B", FAN_QUEUE * FAN_LEN),
        "--slow-client",
        policy,
        "--rcvbuf",
        "8388608",
    ]));
    let pid = p.id();
    wait_for_tcp_bound(9100, STARTUP);
    wait_for_udp_bound(9000, STARTUP);
    wait_until(STARTUP, "the proxy to start", || {
        p.stderr_text().contains("started")
    });

    // the stalled client connects first and never reads
    let stalled = TcpStream::connect("127.0.0.1:9100").unwrap();
    set_small_rcvbuf(&stalled);
    let stalled_port = stalled.local_addr().unwrap().port();
    wait_for_clients(&p, 1);
    let data = payloads(FAN_DATAGRAMS, FAN_LEN, 11);
    let expected = Arc::new(data.concat());
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..FAN_READERS).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = (0..FAN_READERS)
        .map(|i| {
            let mut sock = TcpStream::connect("127.0.0.1:9100").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let expected = Arc::clone(&expected);
            let progress = Arc::clone(&progress);
            thread::spawn(move || {
                read_compare(&mut sock, &expected, &progress[i], Duration::from_secs(45))
            })
        })
        .collect();
    wait_for_clients(&p, FAN_READERS + 1);
    let rss_before = proc_status(pid, "VmRSS");

    // In lockstep with the slowest reader: never more than half a queue
    // ahead of it, so however busy the machine, no reading client's queue
    // can overflow (only the stalled one's). No rate is assumed.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let slowest = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    let until = Instant::now() + FAN_FEED_LIMIT;
    for (i, d) in data.iter().enumerate() {
        let behind = i.saturating_sub(FAN_QUEUE / 2) * FAN_LEN;
        while slowest() < behind && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        sock.send_to(d, addr("127.0.0.1:9000")).unwrap();
    }
    for (i, r) in readers.into_iter().enumerate() {
        let (len, exact) = r.join().unwrap();
        assert!(
            exact,
            "reader {i}: {len} of {} bytes, or they differ; proxy: {}",
            expected.len(),
            p.stderr_text()
        );
    }
    let peak = proc_status(pid, "VmHWM");
    // Bounded queues hold at most FAN_QUEUE payloads per client, shared
    // between the clients: the stalled one pins one queue's worth (1 MB)
    // that the others have long released, and the readers' queues span at
    // most another queue's worth of distinct payloads. Allow twice that,
    // plus 4 MB of allocator slack (8.1 MB); an unbounded queue would pin
    // the ~13 MB of the 16.8 MB sent that the stalled client's socket
    // buffers (~4 MB) could not take.
    let rss_bound_kb = (4 * FAN_QUEUE * (FAN_LEN + 64)) as u64 / 1024 + 4096;
    let stalled_key = format!("client 127.0.0.1:{stalled_port}:");
    if policy == "disconnect" {
        wait_until(STARTUP, "the stalled client to be disconnected", || {
            p.stderr_text()
                .lines()
                .any(|l| l.contains(&stalled_key) && l.contains("not keeping up"))
        });
    }
    let text = stop(p);
    let stalled_line = text
        .lines()
        .find(|l| l.contains(&stalled_key))
        .unwrap_or_else(|| panic!("no line for the stalled client:\n{text}"))
        .to_string();
    // what the stalled client can still read: the proxy is gone, so EOF
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (got, _) = read_upto(&mut stalled, usize::MAX, Duration::from_secs(10));
    let stalled_in_order = expected.starts_with(&got);
    FanOut {
        text,
        stalled_line,
        rss_growth_kb: peak.saturating_sub(rss_before),
        rss_bound_kb,
        stalled_bytes: got.len(),
        stalled_in_order,
    }
}

/// "N datagrams (..) written, M dropped" of a client summary line
fn written_and_missed(line: &str) -> (u64, u64) {
    let written = number_before(line, "client ", " datagrams (");
    let missed = number_before(line, " written, ", " dropped");
    (written, missed)
}

#[test]
fn stalled_client_with_slow_client_drop_loses_only_its_own_datagrams() {
    in_netns(|_| {
        let r = fan_out_with_stalled_client("drop");
        eprintln!(
            "slow-client drop: RSS grew {} kB (bound {} kB); stalled: {}",
            r.rss_growth_kb, r.rss_bound_kb, r.stalled_line
        );
        assert!(
            r.rss_growth_kb <= r.rss_bound_kb,
            "RSS grew {} kB, more than {} kB",
            r.rss_growth_kb,
            r.rss_bound_kb
        );
        let (written, missed) = written_and_missed(&r.stalled_line);
        assert!(missed > 0, "{}", r.stalled_line);
        // every datagram from the group is either written or counted as missed
        let from_group = number_before(&r.text, "tcp output 127.0.0.1:9100: ", " datagrams (");
        assert_eq!(from_group, FAN_DATAGRAMS as u64, "{}", r.text);
        assert_eq!(
            written + missed,
            from_group,
            "{}\n{}",
            r.stalled_line,
            r.text
        );
        // it got the start of the feed, in order, and never more than was
        // written (plus the half-written one counted as missed)
        assert!(
            r.stalled_in_order,
            "the stalled client's bytes are out of order"
        );
        assert!(
            r.stalled_bytes <= (written as usize + 1) * FAN_LEN,
            "stalled client read {} bytes for {written} datagrams written",
            r.stalled_bytes
        );
        assert!(r.text.contains("is not keeping up"), "{}", r.text);
        assert!(r.text.contains(", 0 disconnected as slow"), "{}", r.text);
    });
}

#[test]
fn stalled_client_with_slow_client_disconnect_is_cut_off_and_counted() {
    in_netns(|_| {
        let r = fan_out_with_stalled_client("disconnect");
        eprintln!(
            "slow-client disconnect: RSS grew {} kB (bound {} kB); stalled: {}",
            r.rss_growth_kb, r.rss_bound_kb, r.stalled_line
        );
        assert!(
            r.rss_growth_kb <= r.rss_bound_kb,
            "RSS grew {} kB, more than {} kB",
            r.rss_growth_kb,
            r.rss_bound_kb
        );
        assert!(
            r.stalled_line.contains("--slow-client disconnect"),
            "{}",
            r.stalled_line
        );
        let (written, missed) = written_and_missed(&r.stalled_line);
        assert!(missed >= 1, "{}", r.stalled_line);
        // cut off early: far from everything was written or counted
        assert!(
            written + missed < FAN_DATAGRAMS as u64 / 2,
            "{}",
            r.stalled_line
        );
        assert!(
            r.stalled_in_order,
            "the stalled client's bytes are out of order"
        );
        assert!(
            r.stalled_bytes <= (written as usize + 1) * FAN_LEN,
            "stalled client read {} bytes for {written} datagrams written",
            r.stalled_bytes
        );
        assert!(r.text.contains(", 1 disconnected as slow"), "{}", r.text);
    });
}

// ---------------------------------------------------------------- resets, silence, half-close

#[test]
fn resets_silent_and_half_closed_clients_are_survived_and_fds_return() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let mut a = args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "127.0.0.1:9100",
            "--tcp-output-addr",
            "tls://127.0.0.1:9443",
            "--tcp-listen-addr",
            "tls://127.0.0.1:9001",
            "--tcp-listen-addr",
            "127.0.0.1:9002",
            "--tls-handshake-timeout",
            "1",
        ]);
        a.extend(pki.server_args());
        let p = start_rp(&a);
        let pid = p.id();
        for port in [9100, 9443, 9001, 9002] {
            wait_for_tcp_bound(port, STARTUP);
        }
        wait_until(STARTUP, "the proxy to start", || {
            p.stderr_text().contains("started")
        });
        let baseline = fd_count(pid);
        let good = client_config(&pki.ca, None);

        let mut held = Vec::new();
        for port in [9100, 9443, 9001, 9002] {
            let to = addr(&format!("127.0.0.1:{port}"));
            for _ in 0..10 {
                // connect and reset at once
                let s = TcpStream::connect(to).unwrap();
                set_linger_zero(&s);
                drop(s);
                // connect and never send anything (TLS: no ClientHello)
                held.push(TcpStream::connect(to).unwrap());
                // connect, half-close, keep the socket
                let s = TcpStream::connect(to).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                held.push(s);
            }
            if port == 9443 || port == 9001 {
                // a finished TLS session, then a reset
                for _ in 0..5 {
                    let s = tls_connect(to, &good).unwrap();
                    set_linger_zero(&s.sock);
                    drop(s);
                }
            }
        }
        // Resets and every TLS connection that never handshakes go (the
        // silent ones after the 1 s handshake timeout), and so do the
        // half-closed plain inputs (EOF). What stays: the 10 silent and the
        // 10 half-closed plain output clients (they may still read), and
        // the 10 silent plain input connections.
        wait_until(
            STARTUP,
            "only the 30 live plain connections to stay",
            || fd_count(pid) == baseline + 30,
        );

        // the group still reaches a well-behaved reader on each output
        let before = p.stderr_text().matches(" connected").count();
        let mut plain = TcpStream::connect("127.0.0.1:9100").unwrap();
        plain
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut tls = tls_connect(addr("127.0.0.1:9443"), &good).unwrap();
        let data = payloads(1000, 1000, 12);
        let expected = data.concat();
        wait_for_clients(&p, before + 2);
        send_paced(addr("127.0.0.1:9000"), &data, 4);
        let (got, err) = read_upto(&mut plain, expected.len(), Duration::from_secs(20));
        assert!(
            err.is_none() && got == expected,
            "plain reader: {} bytes, {err:?}",
            got.len()
        );
        let (got, err) = read_upto(&mut tls, expected.len(), Duration::from_secs(20));
        assert!(
            err.is_none() && got == expected,
            "TLS reader: {} bytes, {err:?}",
            got.len()
        );

        // everyone leaves; a few more datagrams flush out the clients that
        // only half-closed (a write tells whether they still read)
        drop(held);
        drop(plain);
        drop(tls);
        let deadline = Instant::now() + Duration::from_secs(20);
        while fd_count(pid) > baseline && Instant::now() < deadline {
            send_paced(addr("127.0.0.1:9000"), &payloads(4, 100, 13), 4);
            thread::sleep(Duration::from_millis(100));
        }
        let now = fd_count(pid);
        assert_eq!(
            now,
            baseline,
            "descriptors: {now} now, {baseline} before; proxy: {}",
            p.stderr_text()
        );
        let text = stop(p);
        // per TLS listener 10 silent connections timed out; the output also
        // counts the 10 that closed without a ClientHello
        let out_fail = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " TLS failures");
        let in_fail = number_before(&text, "tcp input tls://127.0.0.1:9001: ", " TLS failures");
        assert!(out_fail >= 20 && in_fail >= 10, "{text}");
    });
}
