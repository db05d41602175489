//! `mproxy-reverseproxy` under many clients and hostile ones, each test in
//! its own network namespace: many TCP and TLS readers of a 20 Mbit/s
//! group (every one byte-exact, the proxy's threads and memory measured),
//! TLS 1.2 and 1.3 handshakes on an idle group, idle connections and
//! slowloris handshakes that must not lock a reader out, and non-reading
//! clients of 60 KB datagrams whose memory must stay within the byte
//! bound and be handed back when they leave.
//!
//! The reader counts of the always-run tests are small; set
//! `MPROXY_RP_SCALE=full` for 1,000 TCP and 1,000 TLS readers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod pki;
mod rp;

use mproxy_e2e::stop;
use mproxy_testsupport::{
    in_netns, skip, wait_for_tcp_bound, wait_for_udp_bound, wait_until, ChildGuard, SplitMix64,
    TempDir,
};
use rp::fleet::Fleet;
use rp::{
    addr, args, client_config, number_before, proc_status, read_upto, set_small_rcvbuf, start_rp,
    tls_connect, wait_for_clients, Pki, STARTUP,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Raise this process's soft limit on open files to the hard limit (the
/// proxy, its child, raises its own)
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for the kernel to fill in, then to set.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Threads of a process
fn threads(pid: u32) -> u64 {
    proc_status(pid, "Threads")
}

/// Datagram `i` of `len` bytes: an 8-byte sequence number, then bytes
/// drawn from it, so any run of whole datagrams can be checked alone
fn numbered_one(i: u64, len: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; len];
    d[..8].copy_from_slice(&i.to_be_bytes());
    SplitMix64::new(seed ^ i).fill(&mut d[8..]);
    d
}

/// Datagrams 0 to `n` of [`numbered_one`]
fn numbered(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n as u64).map(|i| numbered_one(i, len, seed)).collect()
}

/// Send `data` to `to` at `bytes_per_s`, paced against the clock (not by
/// sleeps adding up), until done or `stop` is set
fn feed<D: AsRef<[u8]>>(
    to: SocketAddr,
    data: impl IntoIterator<Item = D>,
    bytes_per_s: u64,
    stop: &AtomicBool,
) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t0 = Instant::now();
    let mut sent = 0u64;
    for d in data {
        let d = d.as_ref();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let due = t0 + Duration::from_secs_f64(sent as f64 / bytes_per_s as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        sock.send_to(d, to).unwrap();
        sent += d.len() as u64;
    }
}

/// A rustls client trusting `ca` that speaks only `version`
fn client_with(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert.der().clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn full_size() -> bool {
    std::env::var("MPROXY_RP_SCALE").is_ok_and(|v| v == "full")
}

// ---------------------------------------------------------------- many readers

/// `readers` readers (TLS if `tls`) of a 20 Mbit/s group for `secs`
/// seconds: every one byte-exact; threads and peak RSS reported, RSS
/// within the documented bound
fn many_readers(readers: usize, tls: bool, secs: u64) {
    raise_nofile();
    let dir = TempDir::new();
    let pki = Pki::new(dir.path());
    let scheme = if tls { "tls://" } else { "" };
    // the feed fits in the queue: a reader the test process serves late
    // loses nothing; the log still holds one copy for all of them
    let queue_mib = 16;
    let mut a = args(&[
        "--udp-listen-addr",
        "127.0.0.1:9000",
        "--tcp-output-addr",
        &format!("{scheme}127.0.0.1:9100"),
        "--max-clients",
        &readers.to_string(),
        "--client-queue",
        &format!("{queue_mib}MiB"),
    ]);
    if tls {
        a.extend(pki.server_args());
    }
    let p = start_rp(&a);
    let pid = p.id();
    wait_for_tcp_bound(9100, STARTUP);
    wait_for_udp_bound(9000, STARTUP);
    let rss_start = proc_status(pid, "VmRSS");
    let config = client_config(&pki.ca, None);
    let t = Instant::now();
    // TLS handshakes in waves below --max-handshakes (a quarter of the slots)
    let wave = if tls { 8 } else { 32 };
    let mut fleet = Fleet::connect(
        &p,
        addr("127.0.0.1:9100"),
        readers,
        tls.then_some(&config),
        wave,
    );
    let connect_s = t.elapsed().as_secs_f64();
    let rss_connected = proc_status(pid, "VmRSS");

    // 20 Mbit/s: 2,500 datagrams of 1,000 bytes a second
    let rate = 20_000_000 / 8;
    let data = numbered(2500 * secs as usize, 1000, 17);
    let expected = data.concat();
    let stop_feed = AtomicBool::new(false);
    let t = Instant::now();
    thread::scope(|s| {
        s.spawn(|| feed(addr("127.0.0.1:9000"), &data, rate, &stop_feed));
        fleet.read_all(&expected, Duration::from_secs(60 + 10 * secs));
        stop_feed.store(true, Ordering::Relaxed);
    });
    let read_s = t.elapsed().as_secs_f64();
    let thread_count = threads(pid);
    let peak_kb = proc_status(pid, "VmHWM");
    let text = stop(p);
    if let Some((i, why)) = fleet.failure() {
        panic!("reader {i}: {why}; proxy: {text}");
    }
    let short: Vec<_> = fleet
        .readers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.at != expected.len())
        .map(|(i, r)| (i, r.at))
        .take(5)
        .collect();
    assert!(
        short.is_empty(),
        "readers short of {} bytes: {short:?}; proxy: {text}",
        expected.len()
    );
    // The documented bound: the shared log (here the whole feed, below the
    // queue) plus two chunks and 1 MiB of spares; per client 4 KiB plain,
    // 96 KiB TLS (rustls session and one 64 KiB feed of records); 8 MiB of
    // receive buffers and allocator slack.
    let log_kb = (expected.len() as u64 / 1024).min(queue_mib << 10) + 512 + 1024;
    let per_client_kb = if tls { 96 } else { 4 };
    let bound_kb = rss_start + log_kb + per_client_kb * readers as u64 + 8 * 1024;
    eprintln!(
        "{readers} {} readers of {} MB at 20 Mbit/s: all byte-exact; connected in {connect_s:.1} s, \
         read in {read_s:.1} s; proxy threads {thread_count}; RSS {rss_start} kB at start, \
         {rss_connected} kB with the clients, peak {peak_kb} kB (bound {bound_kb} kB)",
        if tls { "TLS" } else { "TCP" },
        expected.len() / 1_000_000
    );
    // main thread, the signal thread, the UDP input, the TCP output:
    // whatever the readers
    assert_eq!(thread_count, 4, "threads");
    assert!(
        peak_kb <= bound_kb,
        "peak RSS {peak_kb} kB over {bound_kb} kB"
    );
    let dropped = number_before(&text, "tcp output ", " dropped for slow");
    assert_eq!(dropped, 0, "{text}");
}

#[test]
fn many_tcp_readers_of_a_20_mbit_group_are_byte_exact() {
    in_netns(|_| {
        if full_size() {
            many_readers(1000, false, 2);
        } else {
            many_readers(150, false, 1);
        }
    });
}

#[test]
fn many_tls_readers_of_a_20_mbit_group_are_byte_exact() {
    in_netns(|_| {
        if full_size() {
            many_readers(1000, true, 2);
        } else {
            many_readers(50, true, 1);
        }
    });
}

// ---------------------------------------------------------------- TLS 1.2 and 1.3

/// Connect with `config` and time the handshake; the session reads one
/// datagram sent afterwards
fn timed_handshake(p: &ChildGuard, config: &Arc<ClientConfig>) -> Duration {
    let t = Instant::now();
    let mut s = tls_connect(addr("127.0.0.1:9443"), config).unwrap();
    let took = t.elapsed();
    // the proxy keeps what arrives from its accept on, handshake or not
    assert!(p.stderr_text().contains(" connected"));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender
        .send_to(b"after the handshake", "127.0.0.1:9000")
        .unwrap();
    let (got, err) = read_upto(&mut s, 19, STARTUP);
    assert!(
        err.is_none() && got == b"after the handshake",
        "{got:?} {err:?}"
    );
    took
}

#[test]
fn tls12_and_tls13_handshakes_finish_on_an_idle_group() {
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
        // nothing is sent to the group: the server's last flight of a TLS
        // 1.2 handshake (ChangeCipherSpec, Finished) must leave on its own
        let tls12 = timed_handshake(&p, &client_with(&pki, &rustls::version::TLS12));
        let tls13 = timed_handshake(&p, &client_with(&pki, &rustls::version::TLS13));
        eprintln!("handshakes on an idle group: TLS 1.2 {tls12:?}, TLS 1.3 {tls13:?}");
        // the bug left TLS 1.2 clients waiting for ever; 1 s leaves room
        // for a loaded machine (the figures are printed above)
        assert!(tls12 < Duration::from_secs(1), "TLS 1.2: {tls12:?}");
        assert!(tls13 < Duration::from_secs(1), "TLS 1.3: {tls13:?}");
        python_tls12(&pki);
        let text = stop(p);
        let failures = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " TLS failures");
        assert_eq!(failures, 0, "{text}");
    });
}

/// Python's ssl module (OpenSSL) limited to TLS 1.2: a client none of this
/// code wrote
fn python_tls12(pki: &Pki) {
    let script = "import socket, ssl, sys, time\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n\
        ctx.load_verify_locations(sys.argv[1])\n\
        t = time.monotonic()\n\
        s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', 9443), timeout=5),\n\
                            server_hostname='127.0.0.1')\n\
        print(s.version(), round((time.monotonic() - t) * 1000, 1))\n";
    let Ok(out) = Command::new("python3")
        .args(["-c", script])
        .arg(&pki.ca.cert_pem)
        .output()
    else {
        return skip("python3 not found");
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3 TLS 1.2 client: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("python3 ssl client: {} ms", text.trim());
    assert!(text.starts_with("TLSv1.2 "), "{text}");
}

// ---------------------------------------------------------------- idle and slow attackers

/// Datagrams of 1,000 bytes at 4 MB/s, from a thread, until `stop`
fn background_feed(stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let data = (0..).map(|i| numbered_one(i, 1000, 23));
        feed(addr("127.0.0.1:9000"), data, 4_000_000, &stop);
    })
}

/// What a reader that joined mid-feed got: whole, consecutive, intact
/// datagrams of [`background_feed`]; how many
fn check_joined_mid_feed(got: &[u8]) -> usize {
    assert_eq!(
        got.len() % 1000,
        0,
        "not whole datagrams: {} bytes",
        got.len()
    );
    let first = u64::from_be_bytes(got[..8].try_into().unwrap());
    for (k, d) in got.chunks(1000).enumerate() {
        let seq = first + k as u64;
        let mut want = vec![0u8; 1000];
        want[..8].copy_from_slice(&seq.to_be_bytes());
        SplitMix64::new(23 ^ seq).fill(&mut want[8..]);
        assert!(d == want.as_slice(), "datagram {k} (seq {seq}) differs");
    }
    got.len() / 1000
}

#[test]
fn idle_connections_do_not_lock_a_reader_out() {
    in_netns(|_| {
        raise_nofile();
        let p = start_rp(&args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "127.0.0.1:9100",
        ]));
        wait_for_tcp_bound(9100, STARTUP);
        wait_for_udp_bound(9000, STARTUP);
        let stop_feed = Arc::new(AtomicBool::new(false));
        let feeder = background_feed(Arc::clone(&stop_feed));
        // 300 connections that never read, over the 256 slots
        let mut idle = Vec::new();
        for wave in 0..10 {
            for _ in 0..30 {
                let s = TcpStream::connect("127.0.0.1:9100").unwrap();
                set_small_rcvbuf(&s);
                idle.push(s);
            }
            wait_for_clients(&p, 30 * (wave + 1));
        }
        let t = Instant::now();
        let mut reader = TcpStream::connect("127.0.0.1:9100").unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let (first, _) = read_upto(&mut reader, 1, Duration::from_secs(5));
        let served = t.elapsed();
        let (rest, err) = read_upto(&mut reader, 1_000_000, Duration::from_secs(20));
        stop_feed.store(true, Ordering::Relaxed);
        feeder.join().unwrap();
        let mut got = [&first[..], &rest].concat();
        got.truncate(got.len() / 1000 * 1000);
        let n = check_joined_mid_feed(&got);
        assert!(err.is_none() && n >= 1000, "{n} datagrams, {err:?}");
        let text = stop(p);
        eprintln!("after 300 idle connections a reader was served in {served:?}");
        assert!(served < Duration::from_secs(1), "served after {served:?}");
        let evicted = number_before(&text, "tcp output 127.0.0.1:9100: ", " evicted");
        let rejected = number_before(&text, "tcp output 127.0.0.1:9100: ", " rejected");
        assert!(evicted >= 45 && rejected == 0, "{text}");
        drop(idle);
    });
}

/// A real ClientHello, to trickle out a byte at a time
fn client_hello(pki: &Pki) -> Vec<u8> {
    let config = client_config(&pki.ca, None);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

#[test]
fn slowloris_handshakes_do_not_delay_a_tls_reader() {
    in_netns(|_| {
        raise_nofile();
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
        let hello = client_hello(&pki);
        // 300 handshakes that send one byte of their ClientHello a second
        let mut slow: Vec<TcpStream> = Vec::new();
        for wave in 0..10 {
            for _ in 0..30 {
                let s = TcpStream::connect("127.0.0.1:9443").unwrap();
                s.set_nonblocking(true).unwrap();
                slow.push(s);
            }
            wait_for_clients(&p, 30 * (wave + 1));
        }
        let stop_trickle = Arc::new(AtomicBool::new(false));
        let quit = Arc::clone(&stop_trickle);
        let trickle = thread::spawn(move || {
            for byte in hello.iter().take(8) {
                for s in &mut slow {
                    let _ = s.write(std::slice::from_ref(byte));
                }
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until && !quit.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            slow
        });
        thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        let mut good = tls_connect(addr("127.0.0.1:9443"), &client_config(&pki.ca, None)).unwrap();
        let handshake = t.elapsed();
        let data = numbered(2000, 1000, 29);
        let expected = data.concat();
        let never = AtomicBool::new(false);
        feed(addr("127.0.0.1:9000"), &data, 4_000_000, &never);
        let (got, err) = read_upto(&mut good, expected.len(), Duration::from_secs(20));
        stop_trickle.store(true, Ordering::Relaxed);
        let slow = trickle.join().unwrap();
        let text = stop(p);
        eprintln!("a TLS reader among 300 slowloris handshakes: handshake in {handshake:?}");
        assert!(handshake < Duration::from_secs(1), "{handshake:?}");
        assert!(
            err.is_none() && got == expected,
            "{} bytes, {err:?}",
            got.len()
        );
        // every slowloris beyond the 64 handshakes at once made room
        let evicted = number_before(&text, "tcp output tls://127.0.0.1:9443: ", " evicted");
        assert!(evicted >= 300 - 64, "{text}");
        drop(slow);
    });
}

// ---------------------------------------------------------------- memory

#[test]
fn staggered_non_readers_of_60_kb_datagrams_stay_within_the_byte_bound() {
    in_netns(|_| {
        let p = start_rp(&args(&[
            "--udp-listen-addr",
            "127.0.0.1:9000",
            "--tcp-output-addr",
            "127.0.0.1:9100",
            "--client-queue",
            "4MiB",
        ]));
        let pid = p.id();
        wait_for_tcp_bound(9100, STARTUP);
        wait_for_udp_bound(9000, STARTUP);
        // one reader throughout, reading everything
        let mut reader = TcpStream::connect("127.0.0.1:9100").unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        wait_for_clients(&p, 1);
        let stop_feed = Arc::new(AtomicBool::new(false));
        let quit = Arc::clone(&stop_feed);
        // 60 KB datagrams at 6 MB/s
        let feeder = thread::spawn(move || {
            let data: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 60_000]).collect();
            feed(
                addr("127.0.0.1:9000"),
                data.iter().cycle().take(3000),
                6_000_000,
                &quit,
            );
        });
        let done = Arc::new(AtomicBool::new(false));
        let reading = Arc::clone(&done);
        let drain = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            while !reading.load(Ordering::Relaxed) {
                if let Ok(n) = reader.read(&mut buf) {
                    total += n;
                }
            }
            total
        });
        thread::sleep(Duration::from_secs(1));
        let baseline = proc_status(pid, "VmRSS");
        let mut stalled = Vec::new();
        for k in 0..4 {
            let s = TcpStream::connect("127.0.0.1:9100").unwrap();
            set_small_rcvbuf(&s);
            stalled.push(s);
            wait_for_clients(&p, 2 + k);
            thread::sleep(Duration::from_secs(1));
        }
        let peak = proc_status(pid, "VmHWM");
        let departed = p.stderr_text().matches("disconnected").count();
        drop(stalled);
        // they reset (unread data): gone at the next write
        wait_until(STARTUP, "the four to be gone", || {
            p.stderr_text().matches("disconnected").count() >= departed + 4
        });
        let mut after = proc_status(pid, "VmRSS");
        let deadline = Instant::now() + Duration::from_secs(5);
        while after > baseline + baseline / 10 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            after = proc_status(pid, "VmRSS");
        }
        stop_feed.store(true, Ordering::Relaxed);
        feeder.join().unwrap();
        done.store(true, Ordering::Relaxed);
        let read = drain.join().unwrap();
        let text = stop(p);
        // the bound: one queue (4 MiB) and one datagram in the shared log,
        // two chunks, 1 MiB of spares; 4 MiB of allocator slack
        let bound = baseline + 4096 + 64 + 512 + 1024 + 4096;
        eprintln!(
            "four non-readers of 60 KB datagrams: RSS {baseline} kB before, peak {peak} kB \
             (bound {bound} kB), {after} kB after they left; the reader read {read} bytes"
        );
        assert!(peak <= bound, "peak {peak} kB over {bound} kB");
        assert!(
            after <= baseline + baseline / 10,
            "RSS {after} kB after they left, {baseline} kB before"
        );
        let missed = number_before(&text, "tcp output 127.0.0.1:9100: ", " dropped for slow");
        assert!(missed > 0, "{text}");
    });
}
