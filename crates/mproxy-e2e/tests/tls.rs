//! TLS upstreams of `mproxy-proxy`, each test in its own network namespace
//!
//! The certificates are made here with rcgen: a test CA, server
//! certificates for 127.0.0.1/localhost (valid, expired, for another name),
//! a second CA nobody trusts, and a client certificate. The feed servers are
//! rustls servers in a thread of the test, and `openssl s_server` as a peer
//! none of this code wrote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod pki;

use mproxy_e2e::{reached_len, run, start, start_server, stop, wait_for_len, TIMEOUT};
use mproxy_testsupport::{
    assert_files_equal, in_netns, skip, spawn_with_stdin, wait_for_tcp_bound, wait_until, TempDir,
};
use pki::{issue, make_ca, Issued, Leaf};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------- certificates

/// Everything the tests need, in `dir`
struct Pki {
    ca: Issued,
    server: Issued,
    expired: Issued,
    other_name: Issued,
    rogue_server: Issued,
    client: Issued,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = make_ca(dir, "ca");
        let rogue_ca = make_ca(dir, "rogue-ca");
        let local = ["127.0.0.1", "localhost"];
        Self {
            server: issue(dir, "server", &ca, &local, Leaf::Server),
            expired: issue(dir, "expired", &ca, &local, Leaf::ExpiredServer),
            other_name: issue(dir, "other-name", &ca, &["feed.test"], Leaf::Server),
            rogue_server: issue(dir, "rogue-server", &rogue_ca, &local, Leaf::Server),
            client: issue(dir, "client", &ca, &["mproxy-client.test"], Leaf::Client),
            ca,
        }
    }

    /// A server presenting `cert`; with `client_ca`, client certificates
    /// signed by it are required
    fn server_config(cert: &Issued, client_ca: Option<&Issued>) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match client_ca {
            None => b.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.cert.der().clone()).unwrap();
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                b.with_client_cert_verifier(v)
            }
        };
        Arc::new(
            b.with_single_cert(cert.chain(), cert.private_key())
                .unwrap(),
        )
    }
}

// ---------------------------------------------------------------- feed server

/// What the feed server does with one accepted connection
enum Step {
    /// Handshake, send, close_notify, close
    Feed(Vec<u8>),
    /// Like `Feed`, in writes of `chunk` bytes, each only once the
    /// receiving end reports (through `progress`) all but the last
    /// unfinished line of what was written: so no UDP receive buffer can
    /// overflow, however busy the machine is
    Lockstep {
        data: Vec<u8>,
        chunk: usize,
        progress: Progress,
    },
    /// Handshake, send, then close the TCP connection without close_notify
    /// (what a killed feed process looks like)
    Kill(Vec<u8>),
    /// Handshake, then send nothing until the client closes
    Silent,
    /// Stop listening (checked before the next accept)
    Exit,
}

/// How far the receiving end of a paced feed has got, in bytes
type Progress = Arc<dyn Fn() -> usize + Send + Sync>;

/// Longest line of a paced feed: the proxy may hold back that much
const LOCKSTEP_SLACK: usize = 256;

/// Progress of a paced feed: the length of `mproxy-server`'s output file
/// (it flushes whenever its sockets run dry, as they do while we wait)
fn file_progress(path: &Path) -> Progress {
    let path = path.to_path_buf();
    Arc::new(move || {
        std::fs::metadata(&path)
            .map(|m| usize::try_from(m.len()).unwrap())
            .unwrap_or(0)
    })
}

/// Wait (at most 10 s) until `progress` is within `LOCKSTEP_SLACK` of `written`
fn wait_progress(progress: &Progress, written: usize, stop: &AtomicBool) {
    let until = Instant::now() + Duration::from_secs(10);
    while progress() + LOCKSTEP_SLACK < written
        && Instant::now() < until
        && !stop.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A TLS feed server in a thread; after its plan it keeps connections
/// open and silent
struct FeedServer {
    stop: Arc<AtomicBool>,
    stats: Arc<FeedStats>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct FeedStats {
    accepted: AtomicUsize,
    handshakes: AtomicUsize,
    handshake_failures: AtomicUsize,
    /// Silent connections the client closed
    closed_by_client: AtomicUsize,
}

impl FeedServer {
    fn start(port: u16, config: Arc<ServerConfig>, plan: Vec<Step>) -> Self {
        // The previous server on this port may still be going away (its
        // rejected connections unwinding): retry, bounded.
        let mut listener = None;
        wait_until(TIMEOUT, &format!("binding TCP port {port}"), || {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
            listener.is_some()
        });
        let listener = listener.unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FeedStats::default());
        let thread = {
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            std::thread::spawn(move || serve(&listener, &config, plan, &stop, &stats))
        };
        Self {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    fn failures(&self) -> usize {
        self.stats.handshake_failures.load(Ordering::Relaxed)
    }

    /// Wait until the server thread ends by itself (plan ended with Exit)
    fn join(mut self) {
        let t = self.thread.take().unwrap();
        wait_until(TIMEOUT, "the feed server to exit", || t.is_finished());
        t.join().unwrap();
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("feed server thread panicked");
            }
        }
    }
}

fn serve(
    listener: &TcpListener,
    config: &Arc<ServerConfig>,
    plan: Vec<Step>,
    stop: &AtomicBool,
    stats: &FeedStats,
) {
    let deadline = Instant::now() + TIMEOUT;
    let mut plan = plan.into_iter();
    let mut next = plan.next();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if matches!(next, Some(Step::Exit)) {
            return;
        }
        let sock = match listener.accept() {
            Ok((sock, _)) => sock,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let step = next.take().unwrap_or(Step::Silent);
        next = plan.next();
        let Some(mut tls) = handshake(sock, config) else {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.handshakes.fetch_add(1, Ordering::Relaxed);
        match step {
            Step::Feed(data) => {
                if tls.write_all(&data).and_then(|()| tls.flush()).is_ok() {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                linger(tls.sock, stop);
            }
            Step::Lockstep {
                data,
                chunk,
                progress,
            } => {
                let mut written = 0;
                let sent = data.chunks(chunk).try_for_each(|c| {
                    tls.write_all(c).and_then(|()| tls.flush())?;
                    written += c.len();
                    wait_progress(&progress, written, stop);
                    Ok::<(), io::Error>(())
                });
                if sent.is_ok() {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                linger(tls.sock, stop);
            }
            Step::Kill(data) => {
                let _ = tls.write_all(&data).and_then(|()| tls.flush());
                linger(tls.sock, stop);
            }
            Step::Silent | Step::Exit => {
                // wait for the client to go away (EOF, close_notify, error)
                tls.sock
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let closed = loop {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break false;
                    }
                    match tls.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break true,
                    }
                };
                if closed {
                    stats.closed_by_client.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The server side of the handshake; `None` if it fails
fn handshake(
    mut sock: TcpStream,
    config: &Arc<ServerConfig>,
) -> Option<StreamOwned<ServerConnection, TcpStream>> {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn = ServerConnection::new(Arc::clone(config)).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return None;
        }
    }
    Some(StreamOwned::new(conn, sock))
}

/// Half-close and wait (bounded) for the client to close too, so the
/// kernel never answers with a reset that could discard data in flight
fn linger(sock: TcpStream, stop: &AtomicBool) {
    let _ = sock.shutdown(Shutdown::Write);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    let mut sock = sock;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------- helpers

fn feed(tag: &str, lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("!AIVDM,1,1,,A,{tag} line {i} over TLS,0*00\n").into_bytes())
        .collect()
}

/// Start the proxy with one upstream and `extra` flags, forwarding to `down`
fn start_proxy(upstream: &str, down: u16, extra: &[&str]) -> mproxy_testsupport::ChildGuard {
    let down = format!("127.0.0.1:{down}");
    let mut args = vec![
        "--tcp-connect-addr",
        upstream,
        "--udp-downstream-addr",
        &down,
        "--framing",
        "lines",
        "--reconnect-max",
        "1",
    ];
    args.extend_from_slice(extra);
    start("mproxy-proxy", &args)
}

/// The number in front of `what` in the proxy's summary line for `upstream`
/// (e.g. `count(text, "tls 127.0.0.1:9970", "connects")`)
fn count(text: &str, upstream: &str, what: &str) -> u64 {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(&format!("{upstream}: ")))
        .unwrap_or_else(|| panic!("no summary for {upstream} in: {text}"));
    let part = &line[line.find(&format!("{upstream}: ")).unwrap()..];
    let at = part
        .find(&format!(" {what}"))
        .unwrap_or_else(|| panic!("no '{what}' for {upstream} in: {line}"));
    let digits: String = part[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count before '{what}' in: {line}"))
}

/// Run a failing configuration until the feed server saw `n` failed
/// handshakes; returns the proxy's stderr (with its summary)
fn until_failures(server: &FeedServer, proxy: mproxy_testsupport::ChildGuard, n: usize) -> String {
    let start = Instant::now();
    while server.failures() < n {
        assert!(
            start.elapsed() < TIMEOUT,
            "only {} failed handshakes; proxy said: {}",
            server.failures(),
            proxy.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // the proxy is still running: it must stop cleanly on SIGINT
    stop(proxy)
}

fn assert_nothing_written(out: &Path) {
    let len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 0, "{} got {len} bytes", out.display());
}

// ---------------------------------------------------------------- tests

#[test]
fn tls_feed_with_private_ca_is_forwarded_byte_exact() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let data = feed("private-ca", 30_000);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9971", "--path", s(&out)],
            &[9971],
        );
        let feed_server = FeedServer::start(
            9970,
            Pki::server_config(&pki.server, None),
            vec![Step::Lockstep {
                data: data.clone(),
                chunk: 64 << 10,
                progress: file_progress(&out),
            }],
        );
        let proxy = start_proxy(
            "tls://127.0.0.1:9970",
            9971,
            &["--ca-file", s(&pki.ca.cert_pem)],
        );
        let complete = reached_len(&out, data.len() as u64, TIMEOUT);
        let text = stop(proxy);
        stop(server);
        drop(feed_server);
        assert!(complete, "output incomplete; proxy said: {text}");
        assert!(std::fs::read(&out).unwrap() == data, "output differs");
        let up = "tls 127.0.0.1:9970";
        assert!(count(&text, up, "connects") >= 1, "{text}");
        assert_eq!(count(&text, up, "TLS failures"), 0, "{text}");
        assert_eq!(count(&text, up, "failed attempts"), 0, "{text}");
        assert!(text.contains("connected (TLS)"), "{text}");
    });
}

#[test]
fn tls_with_wrong_ca_keeps_retrying_and_forwards_nothing() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9973", "--path", s(&out)],
            &[9973],
        );
        // the server's certificate comes from a CA the proxy does not trust
        let feed_server = FeedServer::start(
            9972,
            Pki::server_config(&pki.rogue_server, None),
            vec![Step::Feed(feed("rogue", 100))],
        );
        let proxy = start_proxy(
            "tls://127.0.0.1:9972",
            9973,
            &["--ca-file", s(&pki.ca.cert_pem)],
        );
        let text = until_failures(&feed_server, proxy, 3);
        stop(server);
        drop(feed_server);
        assert_nothing_written(&out);
        let up = "tls 127.0.0.1:9972";
        assert!(count(&text, up, "TLS failures") >= 2, "{text}");
        assert!(count(&text, up, "unknown CA") >= 2, "{text}");
        assert_eq!(count(&text, up, "connects"), 0, "{text}");
        // one clear warning naming the upstream and rustls's reason
        let warning = text
            .lines()
            .find(|l| l.contains("WARN") && l.contains("TLS with tls://127.0.0.1:9972 failed"))
            .unwrap_or_else(|| panic!("no TLS warning: {text}"));
        assert!(
            warning.contains("unknown CA") && warning.contains("UnknownIssuer"),
            "{warning}"
        );
    });
}

#[test]
fn tls_expired_server_certificate_is_rejected_as_expired() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9975", "--path", s(&out)],
            &[9975],
        );
        let feed_server = FeedServer::start(
            9974,
            Pki::server_config(&pki.expired, None),
            vec![Step::Feed(feed("expired", 100))],
        );
        let proxy = start_proxy(
            "tls://127.0.0.1:9974",
            9975,
            &["--ca-file", s(&pki.ca.cert_pem)],
        );
        let text = until_failures(&feed_server, proxy, 2);
        stop(server);
        drop(feed_server);
        assert_nothing_written(&out);
        assert!(count(&text, "tls 127.0.0.1:9974", "expired") >= 2, "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("WARN") && l.contains("certificate expired")),
            "{text}"
        );
    });
}

#[test]
fn tls_name_mismatch_is_reported_and_sni_fixes_it() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let data = feed("sni", 2000);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9977", "--path", s(&out)],
            &[9977],
        );
        // certificate for feed.test only; the proxy dials 127.0.0.1
        let config = Pki::server_config(&pki.other_name, None);
        let feed_server = FeedServer::start(9976, Arc::clone(&config), vec![]);
        let ca = s(&pki.ca.cert_pem);
        let proxy = start_proxy("tls://127.0.0.1:9976", 9977, &["--ca-file", ca]);
        let text = until_failures(&feed_server, proxy, 2);
        drop(feed_server);
        assert!(
            count(&text, "tls 127.0.0.1:9976", "name mismatch") >= 2,
            "{text}"
        );
        assert!(
            text.contains("NotValidForName") || text.contains("not valid for name"),
            "{text}"
        );
        assert_nothing_written(&out);

        let feed_server = FeedServer::start(9976, config, vec![Step::Feed(data.clone())]);
        let proxy = start_proxy(
            "tls://127.0.0.1:9976",
            9977,
            &["--ca-file", ca, "--sni", "feed.test"],
        );
        wait_for_len(&out, data.len() as u64);
        let text = stop(proxy);
        stop(server);
        drop(feed_server);
        assert!(std::fs::read(&out).unwrap() == data, "output differs");
        assert_eq!(
            count(&text, "tls 127.0.0.1:9976", "TLS failures"),
            0,
            "{text}"
        );
    });
}

#[test]
fn tls_client_certificate_for_mtls() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let data = feed("mtls", 2000);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9979", "--path", s(&out)],
            &[9979],
        );
        let config = Pki::server_config(&pki.server, Some(&pki.ca));
        let ca = s(&pki.ca.cert_pem);

        // without a client certificate: refused, clearly, and retried
        let feed_server = FeedServer::start(9978, Arc::clone(&config), vec![]);
        let proxy = start_proxy("tls://127.0.0.1:9978", 9979, &["--ca-file", ca]);
        let text = until_failures(&feed_server, proxy, 2);
        drop(feed_server);
        assert_nothing_written(&out);
        let up = "tls 127.0.0.1:9978";
        assert!(count(&text, up, "rejected by server") >= 2, "{text}");
        assert!(
            text.lines().any(|l| l.contains("WARN")
                && l.contains("TLS with tls://127.0.0.1:9978 failed")
                && l.contains("--client-cert")),
            "{text}"
        );

        // with one: the feed arrives
        let feed_server = FeedServer::start(9978, config, vec![Step::Feed(data.clone())]);
        let proxy = start_proxy(
            "tls://127.0.0.1:9978",
            9979,
            &[
                "--ca-file",
                ca,
                "--client-cert",
                s(&pki.client.cert_pem),
                "--client-key",
                s(&pki.client.key_pem),
            ],
        );
        wait_for_len(&out, data.len() as u64);
        let text = stop(proxy);
        stop(server);
        drop(feed_server);
        assert!(std::fs::read(&out).unwrap() == data, "output differs");
        assert_eq!(count(&text, up, "TLS failures"), 0, "{text}");
    });
}

#[test]
fn tls_feed_from_openssl_s_server() {
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
        let out = dir.join("out");
        let input = dir.join("input");
        let data = feed("openssl", 20_000);
        std::fs::write(&input, &data).unwrap();
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9981", "--path", s(&out)],
            &[9981],
        );
        let mut openssl = spawn_with_stdin(
            Command::new("openssl")
                .args(["s_server", "-accept", "127.0.0.1:9980", "-cert"])
                .arg(&pki.server.cert_pem)
                .arg("-key")
                .arg(&pki.server.key_pem)
                .arg("-quiet")
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
        );
        wait_for_tcp_bound(9980, TIMEOUT);
        let proxy = start_proxy(
            "tls://localhost:9980",
            9981,
            &["--ca-file", s(&pki.ca.cert_pem)],
        );
        // s_server sends what it reads on stdin to the connected client.
        // Feed it only once the handshake is over: if stdin and the
        // client's Finished become readable in the same select() round,
        // s_server's write completes the handshake, then it blocks for good
        // in a read of the socket it was told was readable (its echo loop
        // expects a talking client; ours never sends anything).
        wait_until(TIMEOUT, "the proxy's TLS session with s_server", || {
            proxy.stderr_text().contains("connected (TLS)")
        });
        std::thread::sleep(Duration::from_millis(300));
        // stdin stays open (EOF would end the session) until the test ends
        let mut stdin = openssl.child_mut().stdin.take().unwrap();
        let writer = {
            let data = data.clone();
            let progress = file_progress(&out);
            std::thread::spawn(move || {
                let mut written = 0;
                for c in data.chunks(64 << 10) {
                    if stdin.write_all(c).is_err() {
                        break; // s_server died: the test reports it
                    }
                    written += c.len();
                    wait_progress(&progress, written, &AtomicBool::new(false));
                }
                stdin
            })
        };
        let complete = reached_len(&out, data.len() as u64, TIMEOUT);
        let text = stop(proxy);
        stop(server);
        openssl.kill();
        let _stdin = writer.join().unwrap();
        assert!(
            complete,
            "output incomplete; proxy: {text}; openssl: {}",
            openssl.stderr_text()
        );
        assert_files_equal(&input, &out);
        assert_eq!(
            count(&text, "tls localhost:9980", "TLS failures"),
            0,
            "{text}"
        );
    });
}

#[test]
fn tls_upstream_killed_restarted_and_silent_is_redialled_by_idle_timeout() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let (part_a, part_b) = (feed("before kill", 2000), feed("after idle", 2000));
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9983", "--path", s(&out)],
            &[9983],
        );
        let config = Pki::server_config(&pki.server, None);
        // 1. a feed that dies without a TLS goodbye, and its port goes away
        let first = FeedServer::start(
            9982,
            Arc::clone(&config),
            vec![Step::Kill(part_a.clone()), Step::Exit],
        );
        let proxy = start_proxy(
            "tls://127.0.0.1:9982",
            9983,
            &["--ca-file", s(&pki.ca.cert_pem), "--idle-timeout", "1"],
        );
        wait_for_len(&out, part_a.len() as u64);
        first.join();
        std::thread::sleep(Duration::from_millis(1500)); // refused reconnects
                                                         // 2. it comes back, but the first session stays silent: the proxy
                                                         //    must drop it after 1 s and dial again, which gets the data
        let second =
            FeedServer::start(9982, config, vec![Step::Silent, Step::Feed(part_b.clone())]);
        let total = (part_a.len() + part_b.len()) as u64;
        let complete = reached_len(&out, total, TIMEOUT);
        let text = stop(proxy);
        stop(server);
        let closed_by_proxy = second.stats.closed_by_client.load(Ordering::Relaxed);
        drop(second);
        assert!(complete, "output incomplete; proxy said: {text}");
        let mut want = part_a;
        want.extend_from_slice(&part_b);
        assert!(std::fs::read(&out).unwrap() == want, "output differs");
        let up = "tls 127.0.0.1:9982";
        assert!(count(&text, up, "idle reconnects") >= 1, "{text}");
        assert!(count(&text, up, "connects") >= 3, "{text}");
        assert!(
            count(&text, up, "failed attempts") >= 1,
            "refused attempts: {text}"
        );
        assert_eq!(count(&text, up, "TLS failures"), 0, "{text}");
        assert!(
            closed_by_proxy >= 1,
            "the silent session was not closed: {text}"
        );
        assert!(text.contains("without TLS close_notify"), "{text}");
        assert!(text.contains("--idle-timeout"), "{text}");
    });
}

#[test]
fn tls_insecure_skip_verify_connects_with_a_loud_warning() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let out = dir.join("out");
        let data = feed("insecure", 2000);
        let server = start_server(
            &["--listen-addr", "127.0.0.1:9985", "--path", s(&out)],
            &[9985],
        );
        let feed_server = FeedServer::start(
            9984,
            Pki::server_config(&pki.rogue_server, None),
            vec![Step::Feed(data.clone())],
        );
        let proxy = start_proxy(
            "tls://127.0.0.1:9984",
            9985,
            &["--insecure-skip-verify", "-v"],
        );
        wait_for_len(&out, data.len() as u64);
        let text = stop(proxy);
        stop(server);
        drop(feed_server);
        assert!(std::fs::read(&out).unwrap() == data, "output differs");
        assert!(
            text.lines()
                .any(|l| l.contains("WARN") && l.contains("NOT verified")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("DEBUG") && l.contains("NOT verified")),
            "per-connect reminder missing: {text}"
        );
    });
}

#[test]
fn tls_upstreams_with_mpx_are_separate_streams() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        let (one, two) = (feed("stream one", 1500), feed("stream two", 2000));
        let template = dir.join("out/{session}-{stream}.log");
        let server = start_server(
            &[
                "--listen-addr",
                "127.0.0.1:9988",
                "--path",
                s(&template),
                "--accept",
                "mpx",
            ],
            &[9988],
        );
        let config = Pki::server_config(&pki.server, None);
        let _a = FeedServer::start(9986, Arc::clone(&config), vec![Step::Feed(one.clone())]);
        let _b = FeedServer::start(9987, config, vec![Step::Feed(two.clone())]);
        let proxy = start(
            "mproxy-proxy",
            &[
                "--mpx",
                "--tls",
                "--ca-file",
                s(&pki.ca.cert_pem),
                "--framing",
                "lines",
                "--tcp-connect-addr",
                "127.0.0.1:9986",
                "--tcp-connect-addr",
                "localhost:9987",
                "--udp-downstream-addr",
                "127.0.0.1:9988",
            ],
        );
        let total = (one.len() + two.len()) as u64;
        wait_until(TIMEOUT, "both streams written", || {
            std::fs::read_dir(dir.join("out"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum::<u64>()
                        >= total
                })
                .unwrap_or(false)
        });
        let text = stop(proxy);
        stop(server);
        let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir.join("out"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .filter(|f| !f.is_empty())
            .collect();
        files.sort_by_key(Vec::len);
        assert_eq!(files.len(), 2, "one file per TLS connection: {text}");
        assert!(files[0] == one && files[1] == two, "a stream differs");
    });
}

#[test]
fn tls_max_line_keeps_records_whole_and_counts_split_lines() {
    in_netns(|_| {
        let dir = TempDir::new();
        let pki = Pki::new(dir.path());
        // lines of 20 to 99 bytes, and every 50th one 250 bytes long
        let mut data = Vec::new();
        let mut long = 0;
        for i in 0..1000usize {
            let len = if i % 50 == 7 { 250 } else { 20 + i * 37 % 80 };
            long += usize::from(len > 100);
            let mut line = format!("{i:05},").into_bytes();
            line.resize(len - 1, b'x');
            line.push(b'\n');
            data.extend_from_slice(&line);
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:9990").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let _feed = FeedServer::start(
            9989,
            Pki::server_config(&pki.server, None),
            vec![Step::Lockstep {
                data: data.clone(),
                chunk: 2048,
                progress: {
                    let received = Arc::clone(&received);
                    Arc::new(move || received.load(Ordering::Relaxed))
                },
            }],
        );
        let proxy = start(
            "mproxy-proxy",
            &[
                "--tcp-connect-addr",
                "tls://127.0.0.1:9989",
                "--ca-file",
                s(&pki.ca.cert_pem),
                "--max-line",
                "100",
                "--udp-downstream-addr",
                "127.0.0.1:9990",
            ],
        );
        let mut got = Vec::new();
        let mut datagrams = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < data.len() && Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                datagrams.push(buf[..n].to_vec());
                received.store(got.len(), Ordering::Relaxed);
            }
        }
        let text = stop(proxy);
        assert!(
            got == data,
            "{} of {} bytes; proxy said: {text}",
            got.len(),
            data.len()
        );
        for d in &datagrams {
            assert!(d.len() <= 100, "datagram of {} bytes", d.len());
            // whole lines, or exactly one 100-byte piece of a long line
            assert!(
                d.ends_with(b"\n") || (d.len() == 100 && !d.contains(&b'\n')),
                "a datagram carries part of a record: {:?}",
                String::from_utf8_lossy(d)
            );
        }
        // each 250-byte line is cut twice (100 + 100 + 50)
        let split = count(&text, "tls 127.0.0.1:9989", "split lines");
        assert_eq!(split, 2 * long as u64, "{text}");
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
        let up = ["--tcp-connect-addr", "tls://127.0.0.1:9", "--tee"];
        let client = ["--client-cert", s(&pki.client.cert_pem)];
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (
                vec!["--ca-file", "/nonexistent"],
                vec!["--ca-file", "/nonexistent"],
            ),
            (
                vec!["--ca-file", garbage],
                vec!["--ca-file", garbage, "no PEM certificate"],
            ),
            (
                vec!["--ca-file", broken],
                vec!["--ca-file", broken, "not valid PEM"],
            ),
            (
                vec![
                    "--client-cert",
                    garbage,
                    "--client-key",
                    s(&pki.client.key_pem),
                ],
                vec!["--client-cert", garbage],
            ),
            (
                [&client[..], &["--client-key", "/nonexistent/key.pem"]].concat(),
                vec!["--client-key", "/nonexistent/key.pem"],
            ),
            (
                [&client[..], &["--client-key", garbage]].concat(),
                vec!["--client-key", garbage, "no PEM private key"],
            ),
            (
                [&client[..], &["--client-key", s(&pki.server.key_pem)]].concat(),
                vec!["--client-key", "does not fit"],
            ),
            (client.to_vec(), vec!["--client-cert needs --client-key"]),
            (vec!["--sni", "not a name!"], vec!["--sni"]),
        ];
        for (extra, wanted) in cases {
            let args = [&up[..], &extra].concat();
            check_exit_2(&args, &wanted);
        }
        // TLS flags without a TLS upstream, and an unknown scheme
        check_exit_2(
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--ca-file",
                s(&pki.ca.cert_pem),
            ],
            &["--ca-file only applies to TLS upstreams"],
        );
        check_exit_2(
            &["--tcp-connect-addr", "ssl://127.0.0.1:9", "--tee"],
            &["ssl://127.0.0.1:9", "unknown scheme"],
        );
        check_exit_2(
            &[
                "--tcp-connect-addr",
                "127.0.0.1:9",
                "--tee",
                "--framing",
                "bytes",
                "--max-line",
                "200",
            ],
            &["--max-line"],
        );
    });
}

fn check_exit_2(args: &[&str], wanted: &[&str]) {
    let out = run("mproxy-proxy", args);
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
