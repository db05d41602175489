//! TCP and TLS upstreams: one thread each, reconnecting with backoff and
//! jitter
//!
//! Each attempt resolves the name again, connects (5 s limit), turns on
//! keepalive and, for TLS, completes the handshake (10 s limit) and waits
//! one read tick for a rejection by the server (a TLS 1.3 server that
//! wants a client certificate says so only after our side has finished).
//! Then the feed is read until EOF, an error, `--idle-timeout` or
//! shutdown. Every failure is counted and logged (rate-limited) and retried
//! after the next backoff delay; nothing about an upstream is fatal.

use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown as SockShutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mproxy_common::backoff::Backoff;
use mproxy_common::cli::Shutdown;
use mproxy_common::io::sleep_unless;
use mproxy_common::mpx::{SenderSession, SessionConfig};
use mproxy_common::pack::Framing;
use mproxy_common::stats::{human_bytes, Counter, LogLimiter};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::tls::{TlsError, TlsFailure};
use crate::upstream::UpstreamAddr;
use crate::Shared;

/// How long one connect attempt may take
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval of an idle mpx stream
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a blocked read wakes up to check for shutdown and idleness
/// (also the write timeout, so a peer that never reads cannot block us)
const READ_TICK: Duration = Duration::from_millis(200);

/// Counters of one TCP or TLS upstream
#[derive(Debug)]
pub struct UpstreamStats {
    /// The upstream as given (`host:port`, `tls://` for TLS)
    pub spec: String,
    /// TLS upstream
    pub tls: bool,
    /// Sessions established (TCP connected; for TLS also the handshake done)
    pub connects: Counter,
    /// Attempts that did not give a session: resolve, connect, TLS handshake
    pub connect_failures: Counter,
    /// TLS sessions that failed, per cause (see [`UpstreamStats::tls_failures`])
    tls_failures: [Counter; TlsFailure::ALL.len()],
    /// Connections dropped by `--idle-timeout` and redialled
    pub idle_reconnects: Counter,
    /// Sessions that ended (EOF, reset, error, idle)
    pub disconnects: Counter,
    /// Payload bytes read (decrypted bytes for TLS)
    pub bytes: Counter,
    /// Datagrams sent from this upstream
    pub datagrams: Counter,
    /// Lines longer than the datagram limit that had to be split (`--framing lines`)
    pub split_lines: Counter,
}

impl UpstreamStats {
    pub(crate) fn new(spec: String, tls: bool) -> Self {
        Self {
            spec,
            tls,
            connects: Counter::default(),
            connect_failures: Counter::default(),
            tls_failures: Default::default(),
            idle_reconnects: Counter::default(),
            disconnects: Counter::default(),
            bytes: Counter::default(),
            datagrams: Counter::default(),
            split_lines: Counter::default(),
        }
    }

    /// TLS sessions that failed for `cause`
    pub fn tls_failures(&self, cause: TlsFailure) -> u64 {
        self.tls_failures[cause.index()].get()
    }

    /// TLS sessions that failed, all causes together
    pub fn tls_failures_total(&self) -> u64 {
        self.tls_failures.iter().map(Counter::get).sum()
    }
}

impl fmt::Display for UpstreamStats {
    /// `tcp HOST:PORT: N connects, ...` (`tls HOST:PORT: ...` for TLS, with
    /// the TLS failures by cause)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (proto, addr) = match self.spec.strip_prefix("tls://") {
            Some(a) => ("tls", a),
            None => ("tcp", self.spec.as_str()),
        };
        write!(
            f,
            "{proto} {addr}: {} connects, {} failed attempts",
            self.connects.get(),
            self.connect_failures.get(),
        )?;
        if self.tls {
            write!(f, ", {} TLS failures", self.tls_failures_total())?;
            let causes: Vec<String> = TlsFailure::ALL
                .iter()
                .filter_map(|c| {
                    let n = self.tls_failures(*c);
                    (n > 0).then(|| format!("{n} {}", c.label()))
                })
                .collect();
            if !causes.is_empty() {
                write!(f, " ({})", causes.join(", "))?;
            }
        }
        write!(
            f,
            ", {} idle reconnects, {} disconnects, {} in {} datagrams, {} split lines",
            self.idle_reconnects.get(),
            self.disconnects.get(),
            human_bytes(self.bytes.get()),
            self.datagrams.get(),
            self.split_lines.get(),
        )
    }
}

/// What a TLS upstream needs besides its address
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) insecure: bool,
    pub(crate) client_cert: bool,
}

pub(crate) struct Upstream {
    pub(crate) addr: UpstreamAddr,
    pub(crate) tls: Option<TlsTarget>,
    pub(crate) framing: Framing,
    pub(crate) max_datagram: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<UpstreamStats>,
    pub(crate) shutdown: Shutdown,
}

/// A connected upstream, plain or TLS
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Conn {
    /// Close from our side: TLS close_notify (best effort), then FIN
    fn close(self) {
        let sock = match self {
            Self::Plain(s) => s,
            Self::Tls(mut s) => {
                s.conn.send_close_notify();
                while s.conn.wants_write() {
                    if s.conn.write_tls(&mut s.sock).is_err() {
                        break;
                    }
                }
                s.sock
            }
        };
        let _ = sock.shutdown(SockShutdown::Both);
    }
}

/// Why an attempt gave no session
enum AttemptError {
    /// Resolve or connect failed
    Connect(io::Error),
    /// The TLS handshake failed
    Tls(TlsError),
    /// Shutdown was requested meanwhile
    Shutdown,
}

/// How a session ended
enum End {
    /// Shutdown was requested
    Shutdown,
    /// EOF or an error
    Closed(String),
    /// Nothing arrived for `--idle-timeout`
    Idle,
    /// A TLS error (alert, bad record)
    Tls(TlsError),
}

fn is_tick(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Upstream {
    pub(crate) fn run(self) {
        let mut backoff = Backoff::new(
            self.reconnect_min,
            self.reconnect_max,
            Backoff::entropy_seed() ^ self.stats.spec.len() as u64,
        );
        let log = LogLimiter::default();
        let tls_log = LogLimiter::default();
        let mut buf = vec![0u8; 64 * 1024];
        while !self.shutdown.is_set() {
            match self.establish() {
                Ok(conn) => {
                    self.stats.connects.inc();
                    self.log_connected(&conn);
                    let got_data = self.pump(conn, &mut buf, &tls_log);
                    self.stats.disconnects.inc();
                    if got_data {
                        backoff.reset();
                    }
                }
                Err(AttemptError::Shutdown) => break,
                Err(AttemptError::Connect(e)) => {
                    self.stats.connect_failures.inc();
                    if let Some(n) = log.allow() {
                        tracing::warn!(upstream = %self.addr, suppressed = n, "{e}");
                    } else {
                        tracing::debug!(upstream = %self.addr, "{e}");
                    }
                }
                Err(AttemptError::Tls(e)) => {
                    self.stats.connect_failures.inc();
                    self.tls_failed(&e, &tls_log);
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(upstream = %self.addr, ?delay, "reconnecting after delay");
            if !sleep_unless(&self.shutdown, delay) {
                break;
            }
        }
    }

    /// Count a TLS failure and log it (warn, rate-limited; debug otherwise)
    fn tls_failed(&self, e: &TlsError, log: &LogLimiter) {
        self.stats.tls_failures[e.cause.index()].inc();
        if let Some(n) = log.allow() {
            tracing::warn!(
                upstream = %self.addr,
                suppressed = n,
                "TLS with {} failed ({}): {e}; retrying with backoff",
                self.addr,
                e.cause.label()
            );
        } else {
            tracing::debug!(upstream = %self.addr, "TLS with {} failed ({}): {e}", self.addr, e.cause.label());
        }
    }

    fn log_connected(&self, conn: &Conn) {
        match conn {
            Conn::Plain(_) => tracing::info!(upstream = %self.addr, "connected"),
            Conn::Tls(s) => {
                let version = s.conn.protocol_version().map(|v| format!("{v:?}"));
                let suite = s
                    .conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()));
                tracing::info!(
                    upstream = %self.addr,
                    version = version.as_deref().unwrap_or("?"),
                    suite = suite.as_deref().unwrap_or("?"),
                    "connected (TLS)"
                );
                if self.tls.as_ref().is_some_and(|t| t.insecure) {
                    tracing::debug!(
                        upstream = %self.addr,
                        "server certificate NOT verified (--insecure-skip-verify)"
                    );
                }
            }
        }
    }

    fn establish(&self) -> Result<Conn, AttemptError> {
        let ep = self.addr.endpoint();
        let addr = ep
            .resolve()
            .map_err(|e| AttemptError::Connect(io::Error::other(e.to_string())))?;
        let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
            AttemptError::Connect(io::Error::new(
                e.kind(),
                format!("connecting to {addr}: {e}"),
            ))
        })?;
        let setup = || -> io::Result<()> {
            sock.set_read_timeout(Some(READ_TICK))?;
            sock.set_write_timeout(Some(READ_TICK))?;
            sock.set_nodelay(true)
        };
        setup().map_err(AttemptError::Connect)?;
        if let Some(idle) = self.keepalive {
            if let Err(e) = crate::keepalive::set_keepalive(&sock, idle) {
                tracing::debug!(upstream = %self.addr, "cannot enable TCP keepalive: {e}");
            }
        }
        match &self.tls {
            None => Ok(Conn::Plain(sock)),
            Some(t) => self.handshake(sock, t).map(|s| Conn::Tls(Box::new(s))),
        }
    }

    /// Drive the TLS handshake over the blocking socket, then wait one
    /// read tick for a late rejection (TLS 1.3 client authentication)
    fn handshake(
        &self,
        mut sock: TcpStream,
        t: &TlsTarget,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, AttemptError> {
        let mut conn = ClientConnection::new(Arc::clone(&t.config), t.server_name.clone())
            .map_err(|e| {
                AttemptError::Tls(TlsError::from_io(
                    &io::Error::new(io::ErrorKind::InvalidData, e),
                    t.client_cert,
                ))
            })?;
        let fail = |e: &io::Error| AttemptError::Tls(TlsError::from_io(e, t.client_cert));
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while conn.is_handshaking() {
            if self.shutdown.is_set() {
                return Err(AttemptError::Shutdown);
            }
            if Instant::now() >= deadline {
                return Err(AttemptError::Tls(TlsError::timeout(HANDSHAKE_TIMEOUT)));
            }
            match conn.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if is_tick(&e) => {}
                Err(e) => return Err(fail(&e)),
            }
        }
        // The server's verdict on our certificate (or its absence) comes
        // after our Finished in TLS 1.3; anything read here that is data
        // stays buffered in `conn` for the pump.
        if conn.wants_read() {
            match conn.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if is_tick(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(fail(&e)),
            }
        }
        Ok(StreamOwned::new(conn, sock))
    }

    /// Forward one session until it ends; true if any data arrived
    fn pump(&self, mut conn: Conn, buf: &mut [u8], tls_log: &LogLimiter) -> bool {
        // the same sans-IO sender as the client: raw or mpx framing, heartbeats
        let session = SenderSession::new(
            SessionConfig {
                mpx: self.shared.new_stream(),
                framing: self.framing,
                max_datagram: self.max_datagram,
                heartbeat_interval: HEARTBEAT,
                ..SessionConfig::default()
            },
            Instant::now(),
        );
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(upstream = %self.addr, "cannot frame the stream: {e}");
                return false;
            }
        };
        let started = Instant::now();
        let mut last_data = started;
        let mut total = 0u64;
        let mut split = 0u64;
        let send = |session: &mut SenderSession, now: Instant| {
            while let Some(t) = session.poll_transmit(now) {
                self.stats.datagrams.add(t.frames.len() as u64);
                self.shared.forward_many(&t.frames);
            }
        };
        let end = loop {
            if self.shutdown.is_set() {
                break End::Shutdown;
            }
            match conn.read(buf) {
                Ok(0) => break End::Closed("closed by upstream".into()),
                Ok(n) => {
                    total += n as u64;
                    last_data = Instant::now();
                    self.stats.bytes.add(n as u64);
                    session.push(last_data, &buf[..n]);
                    send(&mut session, last_data);
                    let s = session.stats().split_lines;
                    self.stats.split_lines.add(s - split);
                    split = s;
                }
                Err(e) if is_tick(&e) => {
                    let now = Instant::now();
                    if session.poll_timeout().is_some_and(|t| t <= now) {
                        session.handle_timeout(now);
                    }
                    send(&mut session, now);
                    if self
                        .idle_timeout
                        .is_some_and(|t| now.duration_since(last_data) >= t)
                    {
                        break End::Idle;
                    }
                }
                Err(e) if crate::tls::rustls_error(&e).is_some() => {
                    let client_cert = self.tls.as_ref().is_some_and(|t| t.client_cert);
                    break End::Tls(TlsError::from_io(&e, client_cert));
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break End::Closed("closed by upstream without TLS close_notify".into())
                }
                Err(e) => break End::Closed(format!("read failed: {e}")),
            }
        };
        session.finish(Instant::now());
        send(&mut session, Instant::now());
        let s = session.stats().split_lines;
        self.stats.split_lines.add(s - split);
        // mpx: the closing heartbeats (a few tens of milliseconds); this
        // thread has nothing else to wait on
        while !session.is_done() {
            let Some(at) = session.poll_timeout() else {
                break;
            };
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let now = Instant::now();
            session.handle_timeout(now);
            send(&mut session, now);
        }
        let reason = match end {
            End::Shutdown => {
                conn.close();
                "shutting down".into()
            }
            End::Closed(reason) => reason,
            End::Idle => {
                self.stats.idle_reconnects.inc();
                conn.close();
                let secs = self.idle_timeout.map_or(0, |t| t.as_secs());
                format!("no data for {secs}s (--idle-timeout), reconnecting")
            }
            End::Tls(e) => {
                self.tls_failed(&e, tls_log);
                format!("TLS error: {e}")
            }
        };
        tracing::info!(
            upstream = %self.addr,
            "disconnected ({reason}) after {:.1}s and {}",
            started.elapsed().as_secs_f64(),
            human_bytes(total)
        );
        total > 0
    }
}
