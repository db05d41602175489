//! Inputs: UDP sockets and TCP listeners whose data goes to the group
//!
//! With `--mpx` every TCP connection, and the raw datagrams of every UDP
//! listener, is one mpx stream of this process's [`Session`]: its bytes go
//! out as sequenced frames, an idle stream sends a heartbeat every second,
//! and a connection that ends sends FIN and then its closing heartbeats
//! (about 150 ms, at most [`CLOSING_LIMIT`]) although the socket is gone.
//!
//! A `tls://` TCP input drives each connection's rustls session in the
//! same non-blocking poll loop (read records, decrypt, write handshake
//! records when the socket takes them): a slow or silent handshake never
//! blocks the other connections, and one not finished after
//! `--tls-handshake-timeout` is closed and counted.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::io::Tee;
use mproxy_common::mpx::{new_session_id, Encoder};
use mproxy_common::net::{bind_batch_receiver, DatagramBatch};
use mproxy_common::pack::Framing;
use mproxy_common::stats::LogLimiter;
use mproxy_common::wire::{classify, Datagram, Frame, FrameType, HEADER_LEN};
use mproxy_common::{Fanout, SocketOptions};
use rustls::{ServerConfig, ServerConnection};

use crate::config::{Addr, Config};
use crate::poller::{drain_udp, register, register_rw, timeout_until, wait, RecvLogs};
use crate::stats::{TcpInputStats, UdpInputStats};
use crate::tls;

/// Heartbeat interval of an idle mpx stream
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest an ended mpx stream may take to send its closing heartbeats
/// (the sender spaces its three closing heartbeats 50 ms apart)
const CLOSING_LIMIT: Duration = Duration::from_millis(500);

/// The mpx session of this process: its random id, and the stream ids in use
#[derive(Debug)]
pub(crate) struct Session {
    id: u64,
    ids: Mutex<StreamIds>,
}

#[derive(Debug)]
struct StreamIds {
    /// Next candidate: ids increase from 1 and wrap past `u32::MAX` to 1
    next: u32,
    /// Ids of streams not yet finished (closing heartbeats included)
    live: HashSet<u32>,
}

impl Session {
    fn new(id: u64) -> Self {
        Self {
            id,
            ids: Mutex::new(StreamIds {
                next: 1,
                live: HashSet::new(),
            }),
        }
    }

    /// A stream id that no live stream of the session uses; `None` only if
    /// all 2^32 - 1 are live
    pub(crate) fn lease(self: &Arc<Self>) -> Option<StreamLease> {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        // among live + 1 consecutive candidates at least one is free
        for _ in 0..=ids.live.len() {
            let id = ids.next;
            ids.next = ids.next.wrapping_add(1).max(1);
            if ids.live.insert(id) {
                return Some(StreamLease {
                    session: Arc::clone(self),
                    id,
                });
            }
        }
        None
    }
}

/// A stream id in use; given back when dropped
#[derive(Debug)]
pub(crate) struct StreamLease {
    session: Arc<Session>,
    id: u32,
}

impl StreamLease {
    /// `(session, stream)` for [`Encoder::new`]
    fn key(&self) -> (u64, u32) {
        (self.session.id, self.id)
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.session
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&self.id);
    }
}

/// The group as the inputs see it: one sending socket shared by all input
/// threads, plus the `--tee` copy and, with `--mpx`, the session
#[derive(Debug)]
pub(crate) struct GroupTx {
    fanout: Fanout,
    tee: Tee,
    session: Option<Arc<Session>>,
}

impl GroupTx {
    /// Open the sending socket (multicast TTL, loopback and interface from
    /// `config.socket`); with `config.mpx`, start a session
    pub(crate) fn open(config: &Config) -> anyhow::Result<Self> {
        let fanout = Fanout::new(std::slice::from_ref(&config.group.spec), &config.socket)
            .with_context(|| {
                format!(
                    "opening the sending socket for --multicast-addr {}",
                    config.group
                )
            })?;
        let session = config.mpx.then(|| Arc::new(Session::new(new_session_id())));
        if let Some(s) = &session {
            tracing::info!(
                session = format_args!("{:016x}", s.id),
                "mpx framing of the inputs on"
            );
        }
        Ok(Self {
            fanout,
            tee: Tee::new(config.tee),
            session,
        })
    }

    /// A fresh stream id, with `--mpx`
    fn lease(&self) -> Option<anyhow::Result<StreamLease>> {
        let session = self.session.as_ref()?;
        Some(
            session
                .lease()
                .ok_or_else(|| anyhow!("every mpx stream id is in use")),
        )
    }

    /// Send one datagram to the group (and to stdout with `--tee`: with
    /// `--mpx` only the payloads of DATA frames); false if the send failed
    /// (counted and logged by the fan-out)
    fn send(&self, datagram: &[u8]) -> bool {
        if datagram.is_empty() {
            // nothing to send, and an empty datagram would only wake receivers
            return true;
        }
        if self.tee.enabled() {
            if self.session.is_none() {
                self.tee.write(datagram);
            } else if let Some(payload) = data_payload(datagram) {
                self.tee.write(payload);
            }
        }
        self.fanout.send(datagram) == 1
    }

    /// Send the datagrams of `batch` (none empty) to the group with as few
    /// system calls as the kernel takes (sendmmsg), and to stdout with
    /// `--tee` as [`GroupTx::send`] does; how many were sent
    fn send_many(&self, batch: &DatagramBatch) -> usize {
        let frames = batch.frames();
        if self.tee.enabled() {
            for d in &frames {
                if self.session.is_none() {
                    self.tee.write(d);
                } else if let Some(payload) = data_payload(d) {
                    self.tee.write(payload);
                }
            }
        }
        self.fanout.send_many(&frames)
    }
}

/// The payload of a DATA frame (not checksummed: only our own frames and
/// frames forwarded anyway get here)
fn data_payload(datagram: &[u8]) -> Option<&[u8]> {
    let frame = Frame::new_checked(datagram).ok()?;
    (frame.frame_type() == FrameType::Data && datagram.len() > HEADER_LEN)
        .then(|| &datagram[HEADER_LEN..])
}

/// Send the closing heartbeats of ended streams, for at most [`CLOSING_LIMIT`]
fn linger(encoders: &mut [&mut Encoder], mut emit: impl FnMut(&[u8])) {
    let until = Instant::now() + CLOSING_LIMIT;
    while let Some(at) = encoders.iter().filter_map(|e| e.poll_timeout()).min() {
        if at > until {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        for e in encoders.iter_mut() {
            e.handle_timeout(now, &mut emit);
        }
    }
}

/// The mpx stream of a UDP input's raw datagrams
#[derive(Debug)]
struct UdpStream {
    encoder: Encoder,
    lease: StreamLease,
}

/// One `--udp-listen-addr`: every datagram received goes to the group
/// (with `--mpx`, raw ones framed as the listener's stream)
#[derive(Debug)]
pub(crate) struct UdpInput {
    sock: UdpSocket,
    poll: Poll,
    group: Arc<GroupTx>,
    stats: Arc<UdpInputStats>,
    stream: Option<UdpStream>,
    shutdown: Shutdown,
}

impl UdpInput {
    /// Bind (and join, for a multicast address) the socket
    pub(crate) fn bind(
        addr: &Addr,
        config: &Config,
        group: Arc<GroupTx>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let context = || format!("binding --udp-listen-addr {addr}");
        // --source belongs to the group's joins, not to the inputs
        let opts = SocketOptions {
            sources: Vec::new(),
            ..config.socket.clone()
        };
        let (sock, _gro) = bind_batch_receiver(addr.addr, &opts)
            .map_err(anyhow::Error::from)
            .with_context(context)?;
        let local = sock.local_addr().with_context(context)?;
        let poll = Poll::new().context("creating a poll instance")?;
        register(&poll, sock.as_raw_fd(), Token(0)).with_context(context)?;
        let stream = group
            .lease()
            .transpose()
            .with_context(|| format!("--udp-listen-addr {addr}"))?
            .map(|lease| {
                tracing::info!(
                    stream = lease.id,
                    "--udp-listen-addr {addr}: raw datagrams framed as mpx stream"
                );
                UdpStream {
                    // one raw datagram per frame whenever it fits
                    encoder: Encoder::new(
                        Some(lease.key()),
                        Framing::Bytes,
                        config.max_datagram,
                        HEARTBEAT,
                    ),
                    lease,
                }
            });
        let stream_id = stream.as_ref().map(|s| s.lease.id);
        Ok(Self {
            sock,
            poll,
            group,
            stats: Arc::new(UdpInputStats::new(addr.to_string(), local, stream_id)),
            stream,
            shutdown,
        })
    }

    /// Its counters
    pub(crate) fn stats(&self) -> &Arc<UdpInputStats> {
        &self.stats
    }

    /// Forward datagrams until shutdown
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
        let _span = tracing::info_span!("udp-input", listen = %self.stats.spec).entered();
        tracing::debug!(local = %self.stats.local, "listening");
        let mut events = Events::with_capacity(8);
        let mut batch = crate::poller::recv_batch();
        let logs = RecvLogs::default();
        let mut out = Outgoing::default();
        let mut more = false;
        while !self.shutdown.is_set() {
            let timeout = if more {
                Duration::ZERO
            } else {
                timeout_until(self.stream.as_ref().and_then(|s| s.encoder.poll_timeout()))
            };
            wait(&mut self.poll, &mut events, timeout).context("waiting for datagrams")?;
            let (group, stats) = (&self.group, &self.stats);
            let mut stream = self.stream.as_mut();
            more = drain_udp(
                &self.sock,
                &mut batch,
                &stats.recv,
                &logs,
                &self.shutdown,
                |_, d| match stream.as_deref_mut() {
                    // frames (valid or not) pass untouched; only raw payloads are framed
                    Some(s) if matches!(classify(d), Datagram::Raw(_)) => {
                        stats.framed.inc();
                        let mut frames = 0u32;
                        s.encoder.push(Instant::now(), d, |f| {
                            frames += 1;
                            out.push(group, stats, f);
                        });
                        if frames > 1 {
                            stats.split.inc();
                        }
                    }
                    Some(_) => {
                        stats.passed.inc();
                        out.push(group, stats, d);
                    }
                    None => out.push(group, stats, d),
                },
            );
            if let Some(s) = self.stream.as_mut() {
                s.encoder.handle_timeout(Instant::now(), |f| {
                    stats.heartbeats.inc();
                    out.push(group, stats, f);
                });
            }
            out.flush(group, stats);
        }
        // end the stream, if it ever started: FIN, then the closing heartbeats
        let (group, stats) = (&self.group, &self.stats);
        if let Some(s) = self.stream.as_mut() {
            if stats.framed.get() > 0 {
                s.encoder
                    .finish(Instant::now(), |f| udp_send(group, stats, f));
                linger(&mut [&mut s.encoder], |f| {
                    stats.heartbeats.inc();
                    udp_send(group, stats, f);
                });
            }
        }
        Ok(())
    }
}

/// Most datagrams a UDP input sends to the group with one system call
const SEND_BATCH: usize = 64;
/// Most bytes it holds before sending them
const SEND_BATCH_BYTES: usize = 256 * 1024;

/// Datagrams of a UDP input on their way to the group, sent together
/// (sendmmsg) at the end of each turn or once [`SEND_BATCH`] datagrams
/// ([`SEND_BATCH_BYTES`]) are waiting, in the order they were pushed
#[derive(Debug, Default)]
struct Outgoing {
    batch: DatagramBatch,
    bytes: usize,
}

impl Outgoing {
    /// Queue `d` for the group; send the batch once it is full
    fn push(&mut self, group: &GroupTx, stats: &UdpInputStats, d: &[u8]) {
        if d.is_empty() {
            // nothing to send (see GroupTx::send)
            stats.datagrams.inc();
            return;
        }
        self.batch.push(d);
        self.bytes += d.len();
        if self.batch.len() >= SEND_BATCH || self.bytes >= SEND_BATCH_BYTES {
            self.flush(group, stats);
        }
    }

    /// Send what is waiting, counting it: datagrams and send errors
    /// exactly; when some of a batch failed, the bytes of those are taken
    /// as the batch's mean size (the fan-out counts each failure and logs
    /// it, rate-limited)
    fn flush(&mut self, group: &GroupTx, stats: &UdpInputStats) {
        let n = self.batch.len();
        if n == 0 {
            return;
        }
        let sent = group.send_many(&self.batch).min(n);
        stats.datagrams.add(sent as u64);
        let bytes = if sent == n {
            self.bytes
        } else {
            stats.send_errors.add((n - sent) as u64);
            self.bytes / n * sent
        };
        stats.bytes.add(bytes as u64);
        self.batch.clear();
        self.bytes = 0;
    }
}

fn udp_send(group: &GroupTx, stats: &UdpInputStats, d: &[u8]) {
    if group.send(d) {
        stats.datagrams.inc();
        stats.bytes.add(d.len() as u64);
    } else {
        stats.send_errors.inc();
    }
}

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
    Shutdown,
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
    ) -> anyhow::Result<Self> {
        let context = || format!("binding --tcp-listen-addr {addr}");
        let listener = TcpListener::bind(addr.addr).with_context(context)?;
        listener.set_nonblocking(true).with_context(context)?;
        let local = listener.local_addr().with_context(context)?;
        let poll = Poll::new().context("creating a poll instance")?;
        register(&poll, listener.as_raw_fd(), LISTENER).with_context(context)?;
        Ok(Self {
            listener,
            poll,
            group,
            stats: Arc::new(TcpInputStats::new(addr.to_string(), local, config.mpx)),
            framing: config.framing,
            max_datagram: config.max_datagram,
            max_clients: config.max_clients,
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
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
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
            wait(&mut self.poll, &mut events, timeout).context("waiting for connections")?;
            for ev in events.iter() {
                if let Some(c) = conns.get_mut(&ev.token()) {
                    c.readable = true;
                }
            }
            // every wake-up, not only on events: a backlog left by a failed
            // accept (EMFILE) is retried at the next tick
            self.accept_all(&mut conns, &mut next_token);
            let mut ended = Vec::new();
            let now = Instant::now();
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

    fn accept_all(&self, conns: &mut HashMap<Token, Conn>, next_token: &mut usize) {
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
            if conns.len() >= self.max_clients {
                self.stats.rejected.inc();
                if let Some(suppressed) = self.log_reject.allow() {
                    tracing::warn!(
                        suppressed,
                        "closed connection from {peer}: already {} connections (--max-clients)",
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
                        tracing::warn!(suppressed, "closed connection from {peer}: {e:#}");
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

    /// A TLS connection still handshaking after `--tls-handshake-timeout`
    fn handshake_overdue(&self, conn: &Conn, now: Instant) -> Option<End> {
        let handshaking = conn.tls.as_ref().is_some_and(|t| t.is_handshaking());
        (handshaking && now.saturating_duration_since(conn.opened) >= self.handshake_timeout).then(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stream_ids_increase_wrap_and_skip_live() {
        let s = Arc::new(Session::new(7));
        let a = s.lease().unwrap();
        let b = s.lease().unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        drop(a);
        assert_eq!(s.lease().unwrap().id, 3, "increasing, not the freed id");
        // wraps past u32::MAX to 1 (never 0), skipping ids still live
        s.ids.lock().unwrap().next = u32::MAX;
        let c = s.lease().unwrap();
        let d = s.lease().unwrap();
        let e = s.lease().unwrap();
        assert_eq!((c.id, d.id, e.id), (u32::MAX, 1, 3), "2 is live");
        assert_eq!(e.key(), (7, 3));
        drop((b, c, d, e));
        assert!(s.ids.lock().unwrap().live.is_empty());
    }

    #[test]
    fn test_data_payload() {
        let mut s = mproxy_common::mpx::Sender::new(1, 1, &Default::default());
        let mut frames = Vec::new();
        let t = Instant::now();
        s.push(t, b"hello\n", |f| frames.push(f.to_vec()));
        s.finish(t, |f| frames.push(f.to_vec()));
        s.handle_timeout(t + CLOSING_LIMIT, |f| frames.push(f.to_vec()));
        let payloads: Vec<_> = frames.iter().map(|f| data_payload(f)).collect();
        assert_eq!(payloads, [Some(&b"hello\n"[..]), None, None]);
        assert_eq!(data_payload(b"raw"), None);
    }
}
