//! Helpers of the reverseproxy test files (`mod rp;` in each): test
//! certificates, rustls clients, readers that compare as they go, the
//! proxy's process figures and summary numbers

// Each test crate that includes this module uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mproxy_e2e::start;
use mproxy_testsupport::{wait_until, ChildGuard, SplitMix64};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::pki::{issue, make_ca, Issued, Leaf};

pub(crate) mod fleet;

/// Bound of every wait that is not a whole transfer
pub(crate) const STARTUP: Duration = Duration::from_secs(10);

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- certificates

/// A CA, the proxy's server certificate, a client certificate, and a CA
/// nobody trusts
pub(crate) struct Pki {
    pub(crate) ca: Issued,
    pub(crate) rogue_ca: Issued,
    pub(crate) server: Issued,
    pub(crate) client: Issued,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Self {
        let ca = make_ca(dir, "ca");
        let rogue_ca = make_ca(dir, "rogue-ca");
        Self {
            server: issue(
                dir,
                "server",
                &ca,
                &["127.0.0.1", "localhost"],
                Leaf::Server,
            ),
            client: issue(dir, "client", &ca, &["reader.test"], Leaf::Client),
            ca,
            rogue_ca,
        }
    }

    /// `--tls-cert` and `--tls-key`
    pub(crate) fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            s(&self.server.cert_pem).into(),
            "--tls-key".into(),
            s(&self.server.key_pem).into(),
        ]
    }
}

// ---------------------------------------------------------------- TLS client

pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A rustls client trusting `ca`, presenting `cert` if given
pub(crate) fn client_config(ca: &Issued, cert: Option<&Issued>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some(c) => b.with_client_auth_cert(c.chain(), c.private_key()).unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Connect and finish the handshake (bounded); the error if it fails
pub(crate) fn tls_connect(to: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    let mut sock = TcpStream::connect_timeout(&to, STARTUP)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    sock.set_write_timeout(Some(STARTUP))?;
    let name = ServerName::IpAddress(to.ip().into());
    let mut conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    let deadline = Instant::now() + STARTUP;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Read until `want` bytes, EOF, an error, or `timeout`
pub(crate) fn read_upto<R: Read>(
    r: &mut R,
    want: usize,
    timeout: Duration,
) -> (Vec<u8>, Option<io::Error>) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::with_capacity(want.min(1 << 20));
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want && Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// Read until `expected.len()` bytes, EOF, an error or `timeout`,
/// comparing as it goes (49 readers of 17 MB must not hold it all);
/// the count read and whether everything matched
pub(crate) fn read_compare<R: Read>(
    r: &mut R,
    expected: &[u8],
    progress: &AtomicUsize,
    timeout: Duration,
) -> (usize, bool) {
    let deadline = Instant::now() + timeout;
    let mut at = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while at < expected.len() && Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let end = at + n;
                if end > expected.len() || buf[..n] != expected[at..end] {
                    return (end, false);
                }
                at = end;
                progress.store(at, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return (at, false),
        }
    }
    (at, at == expected.len())
}

// ---------------------------------------------------------------- helpers

/// Deterministic payloads of `len` bytes each
pub(crate) fn payloads(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
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
pub(crate) fn send_paced(to: SocketAddr, payloads: &[Vec<u8>], burst: usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, p) in payloads.iter().enumerate() {
        sock.send_to(p, to).unwrap();
        if (i + 1) % burst == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

pub(crate) fn start_rp(args: &[String]) -> ChildGuard {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start("mproxy-reverseproxy", &args)
}

pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_string()).collect()
}

/// Wait until the proxy logged `n` "client ... connected" lines
pub(crate) fn wait_for_clients(p: &ChildGuard, n: usize) {
    wait_until(STARTUP, &format!("{n} clients connected"), || {
        p.stderr_text().matches(" connected").count() >= n
    });
}

/// A number from `/proc/PID/status` (kB for memory fields)
pub(crate) fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Open file descriptors of a process
pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The number right before `what` in the first line containing `key`
pub(crate) fn number_before(text: &str, key: &str, what: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no line with '{key}' in:\n{text}"));
    let at = line[line.find(key).unwrap()..]
        .find(what)
        .map(|i| i + line.find(key).unwrap())
        .unwrap_or_else(|| panic!("no '{what}' in: {line}"));
    let digits: String = line[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before '{what}' in: {line}"))
}

/// SO_LINGER 0: closing the socket sends RST instead of FIN
pub(crate) fn set_linger_zero(sock: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a properly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// A small receive buffer, so a client that never reads stalls early
pub(crate) fn set_small_rcvbuf(sock: &TcpStream) {
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a properly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
}
