//! TCP (and TLS) inputs: one thread accepts connections and reads them
//! all, and sends what they carry to the group
//!
//! A `tls://` TCP input drives each connection's rustls session in the
//! same non-blocking loop (read records, decrypt, write handshake records
//! whenever the session has any): a slow or silent handshake never blocks
//! the other connections. A handshake not finished after
//! `--tls-handshake-timeout` is closed and counted; when `--max-handshakes`
//! run at once, or `--max-clients` connections are open, a newcomer
//! evicts the oldest handshake, then the oldest connection that never
//! sent a byte ([`crate::slots`]); connections that send are never evicted.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::Encoder;
use mproxy_common::net::DatagramBatch;
use mproxy_common::pack::Framing;
use mproxy_common::stats::LogLimiter;
use rustls::{ServerConfig, ServerConnection};

use super::{linger, GroupTx, StreamLease, CLOSING_LIMIT, HEARTBEAT};
use crate::config::{Addr, Config};
use crate::error::Error;
use crate::poller::{register, register_rw, timeout_until, wait};
use crate::slots::{self, Class, Standing};
use crate::stats::TcpInputStats;
use crate::tls;

/// Reads per connection per turn, so one busy connection cannot starve the others
const READS_PER_TURN: usize = 16;
/// Read buffer of a TCP input thread
const READ_BUF_LEN: usize = 64 * 1024;
const LISTENER: Token = Token(0);

/// One accepted input connection
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Raw, or mpx with `--mpx`
    encoder: Encoder,
    /// Its mpx stream id, with `--mpx`
    lease: Option<StreamLease>,
    /// Not yet read to `WouldBlock` since the last readiness event
    readable: bool,
    /// The TLS session of a `tls://` input
    tls: Option<Box<ServerConnection>>,
    /// When it was accepted (for the TLS handshake timeout)
    opened: Instant,
    bytes_in: u64,
    datagrams: u64,
    split_lines: u64,
}

/// An ended connection's mpx stream, still sending its closing heartbeats
struct Closing {
    encoder: Encoder,
    _lease: Option<StreamLease>,
    until: Instant,
}

/// Why an input connection ended
enum End {
    Eof,
    Error(io::Error),
    /// The TLS handshake failed or timed out, or a record was invalid
    Tls(String),
    /// Closed to make room for a newcomer (why it was chosen)
    Evicted(String),
    Shutdown,
}

impl Conn {
    fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Where it stands for the slot policy: only handshakes and
    /// connections that never sent a byte may be evicted
    fn standing(&self) -> Standing {
        if self.handshaking() {
            Standing::new(Class::Handshaking, self.opened)
        } else if self.bytes_in == 0 {
            Standing::new(Class::Unproven, self.opened)
        } else {
            Standing::healthy(self.opened, self.bytes_in)
        }
    }
}

/// One `--tcp-listen-addr`: a single thread accepts connections and reads
/// them all (edge-triggered readiness, a few reads per connection per turn)
#[derive(Debug)]
pub(crate) struct TcpInput {
    listener: TcpListener,
    poll: Poll,
    group: Arc<GroupTx>,
    stats: Arc<TcpInputStats>,
    framing: Framing,
    max_datagram: usize,
    max_clients: usize,
    max_handshakes: usize,
    /// `Some` for a `tls://` input
    tls: Option<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    shutdown: Shutdown,
    log_conn: LogLimiter,
    log_reject: LogLimiter,
    log_accept: LogLimiter,
}

impl TcpInput {
    /// Bind the listener; `tls` for a `tls://` input
    pub(crate) fn bind(
        addr: &Addr,
        config: &Config,
        tls: Option<Arc<ServerConfig>>,
        group: Arc<GroupTx>,
        shutdown: Shutdown,
    ) -> Result<Self, Error> {
        let what = || format!("binding --tcp-listen-addr {addr}");
        let listener = TcpListener::bind(addr.addr).map_err(|e| Error::bind(what(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::bind(what(), e))?;
        let local = listener.local_addr().map_err(|e| Error::bind(what(), e))?;
        let poll = Poll::new().map_err(|e| Error::os("creating a poll instance", e))?;
        register(&poll, listener.as_raw_fd(), LISTENER).map_err(|e| Error::bind(what(), e))?;
        Ok(Self {
            listener,
            poll,
            group,
            stats: Arc::new(TcpInputStats::new(addr.to_string(), local, config.mpx)),
            framing: config.framing,
            max_datagram: config.max_datagram,
            max_clients: config.max_clients,
            max_handshakes: config.max_handshakes(),
            tls,
            handshake_timeout: config.tls.handshake_timeout,
            shutdown,
            log_conn: LogLimiter::default(),
            log_reject: LogLimiter::default(),
            log_accept: LogLimiter::default(),
        })
    }

    /// Its counters
    pub(crate) fn stats(&self) -> &Arc<TcpInputStats> {
        &self.stats
    }

    /// Accept and read connections until shutdown
    ///
    /// # Errors
    /// The poll instance failed (a working kernel never does that).
    pub(crate) fn run(mut self) -> Result<(), io::Error> {
        let _span = tracing::info_span!("tcp-input", listen = %self.stats.spec).entered();
        tracing::debug!(local = %self.stats.local, "listening");
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; READ_BUF_LEN];
        // the datagrams of one read, sent together
        let mut out = DatagramBatch::default();
        let mut conns: HashMap<Token, Conn> = HashMap::new();
        let mut closing: Vec<Closing> = Vec::new();
        let mut next_token = 1usize;
        while !self.shutdown.is_set() {
            let busy = conns.values().any(|c| c.readable);
            let timeout = if busy {
                Duration::ZERO
            } else {
                let timers = conns.values().map(|c| &c.encoder);
                let timers = timers.chain(closing.iter().map(|c| &c.encoder));
                timeout_until(timers.filter_map(Encoder::poll_timeout).min())
            };
            wait(&mut self.poll, &mut events, timeout)?;
            for ev in events.iter() {
                if let Some(c) = conns.get_mut(&ev.token()) {
                    c.readable = true;
                }
            }
            // every wake-up, not only on events: a backlog left by a failed
            // accept (EMFILE) is retried at the next tick
            let now = Instant::now();
            self.accept_all(&mut conns, &mut closing, &mut next_token, now);
            let mut ended = Vec::new();
            for (token, conn) in conns.iter_mut() {
                let end = if conn.readable {
                    self.read_some(conn, &mut buf, &mut out)
                } else {
                    None
                };
                let end = end.or_else(|| self.handshake_overdue(conn, now));
                if let Some(end) = end {
                    ended.push((*token, end));
                }
            }
            for (token, end) in ended {
                if let Some(conn) = conns.remove(&token) {
                    closing.extend(self.close(conn, end));
                }
            }
            self.heartbeats(&mut conns, &mut closing);
        }
        for (_, conn) in conns.drain() {
            closing.extend(self.close(conn, End::Shutdown));
        }
        let mut ending: Vec<&mut Encoder> = closing.iter_mut().map(|c| &mut c.encoder).collect();
        linger(&mut ending, |d| self.send_heartbeat(d));
        Ok(())
    }

    /// Heartbeats of idle streams and closing heartbeats of ended ones;
    /// forget ended streams that are done (or out of time)
    fn heartbeats(&self, conns: &mut HashMap<Token, Conn>, closing: &mut Vec<Closing>) {
        let now = Instant::now();
        let due = |e: &Encoder| e.poll_timeout().is_some_and(|at| at <= now);
        for c in conns.values_mut().filter(|c| due(&c.encoder)) {
            c.encoder.handle_timeout(now, |d| self.send_heartbeat(d));
        }
        for c in closing.iter_mut().filter(|c| due(&c.encoder)) {
            c.encoder.handle_timeout(now, |d| self.send_heartbeat(d));
        }
        closing.retain(|c| c.encoder.poll_timeout().is_some() && now < c.until);
    }

    fn send_heartbeat(&self, d: &[u8]) {
        self.stats.heartbeats.inc();
        let mut sent = 0;
        send(&self.group, &self.stats, &mut sent, d);
    }

    fn accept_all(
        &self,
        conns: &mut HashMap<Token, Conn>,
        closing: &mut Vec<Closing>,
        next_token: &mut usize,
        now: Instant,
    ) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    self.stats.accept_errors.inc();
                    if let Some(suppressed) = self.log_accept.allow() {
                        tracing::warn!(suppressed, "accept failed: {e}");
                    }
                    return;
                }
            };
            if !self.make_room(conns, closing, now) {
                self.stats.rejected.inc();
                if let Some(suppressed) = self.log_reject.allow() {
                    tracing::warn!(
                        suppressed,
                        "closed connection from {peer}: already {} connections \
                         (--max-clients), every one of them has sent data",
                        conns.len()
                    );
                }
                continue; // dropping the stream closes it
            }
            let lease = match self.group.lease().transpose() {
                Ok(lease) => lease,
                Err(e) => {
                    self.stats.rejected.inc();
                    if let Some(suppressed) = self.log_reject.allow() {
                        tracing::warn!(suppressed, "closed connection from {peer}: {e}");
                    }
                    continue;
                }
            };
            let token = Token(*next_token);
            *next_token = next_token.wrapping_add(1).max(1);
            let session = match self
                .tls
                .as_ref()
                .map(|c| ServerConnection::new(Arc::clone(c)))
            {
                None => None,
                Some(Ok(session)) => Some(Box::new(session)),
                Some(Err(e)) => {
                    self.stats.tls_failures.inc();
                    if let Some(suppressed) = self.log_accept.allow() {
                        tracing::warn!(
                            suppressed,
                            "closed connection from {peer}: {}",
                            tls::explain(&e)
                        );
                    }
                    continue;
                }
            };
            let setup = stream.set_nonblocking(true).and_then(|()| {
                if session.is_some() {
                    register_rw(&self.poll, stream.as_raw_fd(), token)
                } else {
                    register(&self.poll, stream.as_raw_fd(), token)
                }
            });
            if let Err(e) = setup {
                self.stats.accept_errors.inc();
                if let Some(suppressed) = self.log_accept.allow() {
                    tracing::warn!(suppressed, "cannot watch connection from {peer}: {e}");
                }
                continue;
            }
            self.stats.accepted.inc();
            match &lease {
                Some(l) => tracing::debug!(%peer, stream = l.id, "connection opened"),
                None => tracing::debug!(%peer, "connection opened"),
            }
            conns.insert(
                token,
                Conn {
                    stream,
                    peer,
                    encoder: Encoder::new(
                        lease.as_ref().map(StreamLease::key),
                        self.framing,
                        self.max_datagram,
                        HEARTBEAT,
                    ),
                    lease,
                    readable: true,
                    tls: session,
                    opened: Instant::now(),
                    bytes_in: 0,
                    datagrams: 0,
                    split_lines: 0,
                },
            );
        }
    }

    /// Make room for one more connection if the limits are reached, by
    /// evicting the oldest handshake, then the oldest connection that never
    /// sent a byte; false if every connection has sent data
    fn make_room(
        &self,
        conns: &mut HashMap<Token, Conn>,
        closing: &mut Vec<Closing>,
        now: Instant,
    ) -> bool {
        let standings = |conns: &HashMap<Token, Conn>| -> Vec<(Token, Standing)> {
            conns.iter().map(|(t, c)| (*t, c.standing())).collect()
        };
        if self.tls.is_some() {
            let handshakes = conns.values().filter(|c| c.handshaking()).count();
            if handshakes >= self.max_handshakes {
                if let Some((token, s)) = slots::oldest_handshake(standings(conns)) {
                    self.evict(conns, closing, token, s, now);
                }
            }
        }
        if conns.len() < self.max_clients {
            return true;
        }
        match slots::victim(standings(conns), true) {
            Some((token, s)) => {
                self.evict(conns, closing, token, s, now);
                true
            }
            None => false,
        }
    }

    fn evict(
        &self,
        conns: &mut HashMap<Token, Conn>,
        closing: &mut Vec<Closing>,
        token: Token,
        s: Standing,
        now: Instant,
    ) {
        if let Some(conn) = conns.remove(&token) {
            closing.extend(self.close(conn, End::Evicted(s.describe(now))));
        }
    }

    /// A TLS connection still handshaking after `--tls-handshake-timeout`
    fn handshake_overdue(&self, conn: &Conn, now: Instant) -> Option<End> {
        (conn.handshaking() && slots::overdue(conn.opened, now, self.handshake_timeout)).then(
            || {
                End::Tls(format!(
                    "TLS handshake not finished after {} s (--tls-handshake-timeout)",
                    self.handshake_timeout.as_secs()
                ))
            },
        )
    }

    /// Hand bytes read from a connection to its encoder, and send the
    /// datagrams they make to the group together (sendmmsg; `out` is only
    /// a reused buffer, empty again on return)
    fn push(&self, conn: &mut Conn, data: &[u8], out: &mut DatagramBatch) {
        let n = data.len() as u64;
        conn.bytes_in += n;
        self.stats.bytes_in.add(n);
        out.clear();
        let mut total = 0;
        conn.encoder.push(Instant::now(), data, |d| {
            if !d.is_empty() {
                total += d.len();
                out.push(d);
            }
        });
        send_many(&self.group, &self.stats, &mut conn.datagrams, out, total);
        let split = conn.encoder.split_lines();
        self.stats.split_lines.add(split - conn.split_lines);
        conn.split_lines = split;
    }

    /// Read a few times; `Some` when the connection has ended
    fn read_some(&self, conn: &mut Conn, buf: &mut [u8], out: &mut DatagramBatch) -> Option<End> {
        if let Some(mut session) = conn.tls.take() {
            let end = self.read_some_tls(conn, &mut session, buf, out);
            conn.tls = Some(session);
            return end;
        }
        for _ in 0..READS_PER_TURN {
            match (&conn.stream).read(buf) {
                // EOF: the peer is done. Never read again, never send anything empty.
                Ok(0) => return Some(End::Eof),
                Ok(n) => self.push(conn, &buf[..n], out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(End::Error(e)),
            }
        }
        None
    }

    /// [`TcpInput::read_some`] for a TLS connection: read records, decrypt,
    /// and write what the session has to say (handshake, alerts), never
    /// blocking
    fn read_some_tls(
        &self,
        conn: &mut Conn,
        session: &mut ServerConnection,
        buf: &mut [u8],
        out: &mut DatagramBatch,
    ) -> Option<End> {
        for _ in 0..READS_PER_TURN {
            let eof = match session.read_tls(&mut &conn.stream) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return flush_tls(session, &conn.stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(End::Error(e)),
            };
            if let Err(e) = session.process_new_packets() {
                // the alert tells the client why (best effort)
                let _ = session.write_tls(&mut &conn.stream);
                return Some(End::Tls(tls::explain(&e)));
            }
            loop {
                match session.reader().read(buf) {
                    // close_notify: the peer is done
                    Ok(0) => return Some(End::Eof),
                    Ok(n) => self.push(conn, &buf[..n], out),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // TCP EOF without close_notify: everything read was delivered
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Some(End::Eof),
                    Err(e) => return Some(End::Error(e)),
                }
            }
            if let Some(end) = flush_tls(session, &conn.stream) {
                return Some(end);
            }
            if eof {
                return Some(End::Eof);
            }
        }
        None
    }

    /// Send what the encoder holds back (an unfinished line) and, with
    /// `--mpx`, FIN; forget the connection. Returns its stream if it still
    /// has closing heartbeats to send
    fn close(&self, mut conn: Conn, end: End) -> Option<Closing> {
        let now = Instant::now();
        conn.encoder.finish(now, |d| {
            send(&self.group, &self.stats, &mut conn.datagrams, d)
        });
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&conn.stream.as_raw_fd()));
        self.stats.closed.inc();
        let how = match &end {
            End::Eof => "closed by peer".to_string(),
            End::Error(e) => {
                self.stats.read_errors.inc();
                format!("failed: {}", tls::explain_io(e))
            }
            End::Tls(why) => {
                self.stats.tls_failures.inc();
                format!("failed: {why}")
            }
            End::Evicted(why) => {
                self.stats.evicted.inc();
                format!(
                    "closed to make room for a new connection \
                     (--max-clients/--max-handshakes): {why}"
                )
            }
            End::Shutdown => "closed at shutdown".to_string(),
        };
        let stream = conn
            .lease
            .as_ref()
            .map(|l| format!(" (mpx stream {})", l.id))
            .unwrap_or_default();
        let line = format!(
            "connection from {}{stream} {how}: {} bytes read, {} datagrams to the group",
            conn.peer, conn.bytes_in, conn.datagrams
        );
        match end {
            End::Shutdown => tracing::debug!("{line}"),
            _ => {
                if let Some(suppressed) = self.log_conn.allow() {
                    tracing::info!(suppressed, "{line}");
                } else {
                    tracing::debug!("{line}");
                }
            }
        }
        conn.encoder.poll_timeout().is_some().then(|| Closing {
            encoder: conn.encoder,
            _lease: conn.lease,
            until: now + CLOSING_LIMIT,
        })
    }
}

/// Write the records a TLS session holds, as far as the socket takes them
/// (the rest when it is writable again); `Some` if the connection failed
fn flush_tls(session: &mut ServerConnection, mut stream: &TcpStream) -> Option<End> {
    while session.wants_write() {
        match session.write_tls(&mut stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(End::Error(e)),
        }
    }
    None
}

/// [`send`] for the datagrams of `batch` (none empty, `total` bytes), with
/// as few system calls as the kernel takes (sendmmsg); then empties
/// `batch`. Send errors are counted per datagram; when some failed, the
/// bytes of those are taken as the batch's mean size
fn send_many(
    group: &GroupTx,
    stats: &TcpInputStats,
    datagrams: &mut u64,
    batch: &mut DatagramBatch,
    total: usize,
) {
    let n = batch.len();
    if n == 0 {
        return;
    }
    let sent = group.send_many(batch).min(n);
    *datagrams += sent as u64;
    stats.datagrams.add(sent as u64);
    let bytes = if sent == n {
        total
    } else {
        stats.send_errors.add((n - sent) as u64);
        total / n * sent
    };
    stats.bytes.add(bytes as u64);
    batch.clear();
}

fn send(group: &GroupTx, stats: &TcpInputStats, datagrams: &mut u64, d: &[u8]) {
    if d.is_empty() {
        return;
    }
    if group.send(d) {
        *datagrams += 1;
        stats.datagrams.inc();
        stats.bytes.add(d.len() as u64);
    } else {
        stats.send_errors.inc();
    }
}
