//! Outputs: TCP listeners whose clients get the group's payloads, and UDP
//! destinations the group's datagrams are forwarded to
//!
//! Each output has its own receive socket on the group (SO_REUSEADDR lets
//! them share group:port; the kernel gives every one of them a copy).
//!
//! Delivering outputs (TCP outputs, and UDP outputs with
//! `--udp-output-strip`) pass each datagram through a [`Reassembly`]: raw
//! payloads go on as they are, mpx frames are put back in order per
//! stream and delivered without their headers. A plain UDP output
//! forwards every datagram untouched, frames included.
//!
//! A TCP output is one hub thread plus one writer thread per client. The
//! hub receives from the group and hands the payloads of each turn (one
//! drain of the group socket) to every client's bounded queue at once, as
//! one shared list, without ever blocking: a client's backlog (queued, not
//! yet written) is bounded by `--client-queue` datagrams, and what does not
//! fit is dropped for that client only, and counted. A writer takes
//! everything queued (up to 64 KiB at a time) and writes it with one
//! `writev`, so a client that keeps up costs about one system call per
//! turn and one that falls behind catches up in large writes. A slow or
//! stalled client therefore costs nothing but its own completeness; the
//! group socket and the other clients never wait for it. With
//! `--slow-client disconnect` the hub instead cuts the client off at once
//! (`shutdown(2)` on its socket, which also ends a write it is blocked in)
//! and stops queueing for it; either way what the client missed is counted
//! in its [`ClientStats::drops`] and logged when it leaves.
//!
//! A `tls://` output runs the TLS handshake in the client's writer thread,
//! over the same blocking socket with 100 ms timeouts, and gives up after
//! `--tls-handshake-timeout`: a client that stalls its handshake only
//! occupies its own thread and slot, never the hub. Until the handshake is
//! done, payloads wait in the client's queue like for any slow client.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Write as _};
use std::net::{Shutdown as Both, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::ReceiverConfig;
use mproxy_common::net::{bind_batch_receiver, DatagramBatch};
use mproxy_common::stats::{Counter, LogLimiter};
use mproxy_common::Fanout;
use rustls::{ServerConfig, ServerConnection};

use crate::cli::Accept;
use crate::config::{Addr, Config, SlowClient};
use crate::poller::{drain_udp, register, timeout_until, wait, RecvLogs, TICK};
use crate::reassembly::Reassembly;
use crate::stats::{ClientStats, TcpOutputStats, UdpOutputStats};
use crate::tls;

const GROUP: Token = Token(0);
const LISTENER: Token = Token(1);

/// Bind a receive socket on the group for the output named by `flag` and `addr`
fn join_group(config: &Config, flag: &str, addr: &Addr) -> anyhow::Result<UdpSocket> {
    let (sock, _gro) = bind_batch_receiver(config.group.addr, &config.socket)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "joining --multicast-addr {} for {flag} {addr}",
                config.group
            )
        })?;
    Ok(sock)
}

/// A connected client as the hub sees it
struct Client {
    tx: SyncSender<Batch>,
    stats: Arc<ClientStats>,
    /// Payloads put in its queue (written + lost when it ends); minus
    /// those written, its backlog, which `--client-queue` bounds
    queued: Counter,
    handle: JoinHandle<End>,
    log: LogLimiter,
    /// Set by the hub when it disconnects the client (`--slow-client
    /// disconnect`); nothing more is queued for it
    kicked: Arc<AtomicBool>,
    /// The client's socket, shared with its writer so the hub can cut it off
    stream: Arc<TcpStream>,
}

/// Why a client writer stopped
enum End {
    /// The hub let go of the queue (shutdown)
    Stopped,
    /// Shutdown while the client was not taking data
    Stalled,
    /// The client closed or reset the connection
    Gone(io::Error),
    /// The hub disconnected it: its queue was full (`--slow-client disconnect`)
    Kicked,
    /// Its TLS handshake failed or timed out (the reason, one line)
    Tls(String),
    /// The writer thread panicked (a bug)
    Panicked,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped"),
            Self::Stalled => f.write_str("stopped while the client was not reading"),
            Self::Gone(e) => write!(f, "disconnected: {}", tls::explain_io(e)),
            Self::Kicked => f.write_str(
                "disconnected: not keeping up, its queue was full (--slow-client disconnect)",
            ),
            Self::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            Self::Panicked => f.write_str("writer thread panicked"),
        }
    }
}

/// One `--tcp-output-addr`: a listener whose clients receive the group's payloads
#[derive(Debug)]
pub(crate) struct TcpOutput {
    listener: TcpListener,
    sock: UdpSocket,
    poll: Poll,
    stats: Arc<TcpOutputStats>,
    client_queue: usize,
    slow_client: SlowClient,
    max_clients: usize,
    accept: Accept,
    receiver: ReceiverConfig,
    /// `Some` for a `tls://` output
    tls: Option<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    shutdown: Shutdown,
    log_accept: LogLimiter,
    log_reject: LogLimiter,
    log_tls: LogLimiter,
}

impl TcpOutput {
    /// Bind the listener and join the group; `tls` for a `tls://` output
    pub(crate) fn bind(
        addr: &Addr,
        config: &Config,
        tls: Option<Arc<ServerConfig>>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let context = || format!("binding --tcp-output-addr {addr}");
        let listener = TcpListener::bind(addr.addr).with_context(context)?;
        listener.set_nonblocking(true).with_context(context)?;
        let local = listener.local_addr().with_context(context)?;
        let sock = join_group(config, "--tcp-output-addr", addr)?;
        let poll = Poll::new().context("creating a poll instance")?;
        register(&poll, sock.as_raw_fd(), GROUP).with_context(context)?;
        register(&poll, listener.as_raw_fd(), LISTENER).with_context(context)?;
        Ok(Self {
            listener,
            sock,
            poll,
            stats: Arc::new(TcpOutputStats::new(addr.to_string(), local)),
            client_queue: config.client_queue,
            slow_client: config.slow_client,
            max_clients: config.max_clients,
            accept: config.accept,
            receiver: config.receiver.clone(),
            tls,
            handshake_timeout: config.tls.handshake_timeout,
            shutdown,
            log_accept: LogLimiter::default(),
            log_reject: LogLimiter::default(),
            log_tls: LogLimiter::default(),
        })
    }

    /// Its counters
    pub(crate) fn stats(&self) -> &Arc<TcpOutputStats> {
        &self.stats
    }

    /// Fan the group out to clients until shutdown
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
        let _span = tracing::info_span!("tcp-output", listen = %self.stats.spec).entered();
        tracing::debug!(local = %self.stats.local, "listening");
        let mut events = Events::with_capacity(8);
        let mut batch = crate::poller::recv_batch();
        let logs = RecvLogs::default();
        let mut clients: Vec<Client> = Vec::new();
        let mut reassembly = Reassembly::new(self.accept, &self.receiver);
        let policy = Policy {
            queue: self.client_queue,
            slow_client: self.slow_client,
            stats: &self.stats,
        };
        // the payloads of one turn, handed to every client at once
        let mut round: Vec<Arc<[u8]>> = Vec::new();
        let mut more = false;
        while !self.shutdown.is_set() {
            let timeout = if more {
                Duration::ZERO
            } else {
                timeout_until(reassembly.poll_timeout())
            };
            wait(&mut self.poll, &mut events, timeout).context("waiting for datagrams")?;
            let now = Instant::now();
            let anyone = !clients.is_empty();
            let mut collect = |p: &[u8]| {
                // with no client nothing is kept (the payload goes nowhere)
                if anyone {
                    round.push(Arc::from(p));
                }
            };
            more = drain_udp(
                &self.sock,
                &mut batch,
                &self.stats.recv,
                &logs,
                &self.shutdown,
                |from, d| reassembly.handle(now, from, d, &mut collect),
            );
            reassembly.handle_timeout(Instant::now(), &mut collect);
            fan_out(&clients, &mut round, &policy);
            reassembly.publish(&self.stats.mpx);
            self.reap(&mut clients);
            self.accept_all(&mut clients);
        }
        // what the streams still hold goes to the clients still here
        reassembly.close_all(|p| round.push(Arc::from(p)));
        fan_out(&clients, &mut round, &policy);
        reassembly.publish(&self.stats.mpx);
        // let go of every queue first, so all writers wind down in parallel
        let ending: Vec<_> = clients
            .into_iter()
            .map(|c| {
                drop(c.tx);
                (c.stats, c.queued, c.handle)
            })
            .collect();
        for (stats, queued, handle) in ending {
            let end = handle.join().unwrap_or(End::Panicked);
            account_lost(&stats, &queued);
            // connected clients stay listed for the final summary
            tracing::debug!(client = %stats.peer, "writer {end}");
        }
        Ok(())
    }

    /// Forget clients whose writer has finished
    fn reap(&self, clients: &mut Vec<Client>) {
        let mut i = 0;
        while i < clients.len() {
            if !clients[i].handle.is_finished() {
                i += 1;
                continue;
            }
            let c = clients.swap_remove(i);
            drop(c.tx);
            let end = c.handle.join().unwrap_or(End::Panicked);
            account_lost(&c.stats, &c.queued);
            match &end {
                End::Tls(_) => {
                    self.stats.tls_failures.inc();
                    // a scanner or a misconfigured fleet must not flood the log
                    if let Some(suppressed) = self.log_tls.allow() {
                        tracing::warn!(suppressed, "client {}: {end}", c.stats.peer);
                    }
                }
                End::Kicked => tracing::warn!("{}: {end}", c.stats.summary()),
                _ => tracing::info!("{}: {end}", c.stats.summary()),
            }
            self.stats.remove_client(&c.stats);
        }
    }

    fn accept_all(&self, clients: &mut Vec<Client>) {
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
            if clients.len() >= self.max_clients {
                self.stats.rejected.inc();
                if let Some(suppressed) = self.log_reject.allow() {
                    tracing::warn!(
                        suppressed,
                        "closed connection from {peer}: already {} clients (--max-clients)",
                        clients.len()
                    );
                }
                continue; // dropping the stream closes it
            }
            match self.spawn_writer(stream, peer) {
                Ok(client) => {
                    self.stats.accepted.inc();
                    self.stats.add_client(Arc::clone(&client.stats));
                    tracing::info!("client {peer} connected");
                    clients.push(client);
                }
                Err(e) => {
                    self.stats.accept_errors.inc();
                    if let Some(suppressed) = self.log_accept.allow() {
                        tracing::warn!(suppressed, "cannot serve client {peer}: {e}");
                    }
                }
            }
        }
    }

    fn spawn_writer(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<Client> {
        stream.set_nonblocking(false)?;
        // a blocked write (or TLS handshake read) gives up after a tick to
        // look at the shutdown flag
        stream.set_write_timeout(Some(TICK))?;
        stream.set_read_timeout(Some(TICK))?;
        // payloads are written as they come: no Nagle delay for telemetry
        stream.set_nodelay(true)?;
        let stream = Arc::new(stream);
        let (tx, rx) = mpsc::sync_channel(self.client_queue);
        let stats = Arc::new(ClientStats::new(peer));
        let kicked = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            stream: Arc::clone(&stream),
            rx,
            stats: Arc::clone(&stats),
            shutdown: self.shutdown.clone(),
            kicked: Arc::clone(&kicked),
            tls: self.tls.clone().map(|c| (c, self.handshake_timeout)),
        };
        let span = tracing::Span::current();
        let handle = std::thread::Builder::new()
            .name(format!("client {peer}"))
            .spawn(move || {
                let _span = span.entered();
                writer.run()
            })?;
        Ok(Client {
            tx,
            stats,
            queued: Counter::default(),
            handle,
            log: LogLimiter::default(),
            kicked,
            stream,
        })
    }
}

/// What the hub does when a client's queue is full
struct Policy<'a> {
    queue: usize,
    slow_client: SlowClient,
    stats: &'a TcpOutputStats,
}

/// What a client's queue holds: payloads of one turn of the hub, shared
/// by every client that had room for all of them
type Batch = Arc<[Arc<[u8]>]>;

/// Hand the payloads of one turn to every client's queue, never waiting,
/// then forget them
///
/// One queue entry (and at most one wake-up of the writer) per client per
/// turn. A client gets as many of them as its backlog (queued, not yet
/// written) leaves room for under `--client-queue`; the rest are its drops.
/// A client with room for only some gets its own copy of the list of those
/// (the payloads themselves stay shared), so no client's queue keeps
/// payloads it did not take alive.
fn fan_out(clients: &[Client], round: &mut Vec<Arc<[u8]>>, policy: &Policy<'_>) {
    if round.is_empty() {
        return;
    }
    let whole: Batch = round.drain(..).collect();
    let n = whole.len();
    let queue = policy.queue;
    for c in clients {
        if c.kicked.load(Ordering::Relaxed) {
            continue; // cut off; it is reaped once its writer has ended
        }
        let backlog = c.queued.get().saturating_sub(c.stats.datagrams.get());
        let share = share(&whole, backlog, queue);
        let room = share.as_ref().map_or(0, |b| b.len());
        let mut missed = n - room;
        if let Some(batch) = share {
            match c.tx.try_send(batch) {
                Ok(()) => c.queued.add(room as u64),
                // the writer has ended; it is reaped at the next turn
                Err(TrySendError::Disconnected(_)) => {
                    c.stats.drops.add(n as u64);
                    continue;
                }
                // not reached: every entry holds a payload, and there are
                // no more payloads queued than entries
                Err(TrySendError::Full(_)) => missed = n,
            }
        }
        if missed == 0 {
            continue;
        }
        c.stats.drops.add(missed as u64);
        match policy.slow_client {
            SlowClient::Drop => {
                if let Some(suppressed) = c.log.allow() {
                    tracing::warn!(
                        client = %c.stats.peer,
                        suppressed,
                        "client is not keeping up: its queue of {queue} datagrams is \
                         full, dropping datagrams for it"
                    );
                }
            }
            SlowClient::Disconnect => {
                c.kicked.store(true, Ordering::Relaxed);
                policy.stats.slow_disconnects.inc();
                // ends a write the writer is blocked in, at once;
                // the writer reports and the hub reaps it
                let _ = c.stream.shutdown(Both::Both);
            }
        }
    }
}

/// What a client whose `backlog` (payloads queued, not yet written) is
/// bounded by `queue` takes of a turn: all of it if there is room (shared
/// with the other clients), else a list of the first payloads that fit, of
/// its own; `None` if nothing fits
fn share(whole: &Batch, backlog: u64, queue: usize) -> Option<Batch> {
    let room = usize::try_from(backlog)
        .map_or(0, |b| queue.saturating_sub(b))
        .min(whole.len());
    if room == 0 {
        None
    } else if room == whole.len() {
        Some(Arc::clone(whole))
    } else {
        whole.get(..room).map(Arc::from)
    }
}

/// Count what was queued for a finished client but never fully written
fn account_lost(stats: &ClientStats, queued: &Counter) {
    stats
        .drops
        .add(queued.get().saturating_sub(stats.datagrams.get()));
}

/// Most payload bytes a writer takes from its queue for one system call
/// (one more payload may go over it)
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Most payloads a writer takes from its queue for one system call (one
/// more queue entry may go over it)
const WRITE_BATCH_PAYLOADS: usize = 256;
/// Most slices one `writev` takes (Linux's `UIO_MAXIOV`)
const IOV_MAX: usize = 1024;

/// Payloads a writer has taken from its queue and not yet fully written
/// (still counted in the client's backlog, so `--client-queue` bounds them too)
#[derive(Default)]
struct Pending {
    payloads: VecDeque<Arc<[u8]>>,
    /// Bytes of the first payload already written
    offset: usize,
    /// Bytes of all the payloads, the first one whole
    bytes: usize,
}

impl Pending {
    /// Take the payloads of one queue entry, after those already here
    fn extend(&mut self, batch: &[Arc<[u8]>]) {
        for p in batch {
            self.bytes += p.len();
            self.payloads.push_back(Arc::clone(p));
        }
    }

    /// Whether everything taken has been written
    fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// What is left to write, for one `writev` (at most `IOV_MAX` slices)
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(self.payloads.len().min(IOV_MAX));
        for (i, p) in self.payloads.iter().take(IOV_MAX).enumerate() {
            let rest = if i == 0 {
                p.get(self.offset..).unwrap_or(&[])
            } else {
                p
            };
            out.push(IoSlice::new(rest));
        }
        out
    }

    /// `n` more bytes were written: let go of the payloads now complete;
    /// their number and bytes
    fn advance(&mut self, mut n: usize) -> (u64, u64) {
        let (mut datagrams, mut bytes) = (0u64, 0u64);
        while let Some(first) = self.payloads.front() {
            let rest = first.len().saturating_sub(self.offset);
            if n < rest {
                self.offset += n;
                break;
            }
            n -= rest;
            datagrams += 1;
            bytes += first.len() as u64;
            self.bytes = self.bytes.saturating_sub(first.len());
            self.offset = 0;
            self.payloads.pop_front();
        }
        (datagrams, bytes)
    }
}

/// The writer thread of one client
struct Writer {
    stream: Arc<TcpStream>,
    rx: Receiver<Batch>,
    stats: Arc<ClientStats>,
    shutdown: Shutdown,
    kicked: Arc<AtomicBool>,
    /// `tls://` output: the server configuration and the handshake timeout
    tls: Option<(Arc<ServerConfig>, Duration)>,
}

impl Writer {
    /// Handshake (TLS), then write queued payloads until the queue is let
    /// go of, the client goes away or is cut off, or shutdown finds it
    /// stalled
    fn run(self) -> End {
        let stream: &TcpStream = &self.stream;
        let end = match &self.tls {
            None => self.write_loop(stream, None),
            Some((config, timeout)) => match self.handshake(stream, config, *timeout) {
                Ok(mut conn) => {
                    let end = self.write_loop(stream, Some(&mut conn));
                    if matches!(end, End::Stopped) {
                        // an orderly end: tell the client (best effort)
                        conn.send_close_notify();
                        let _ = self.flush_tls(stream, &mut conn);
                    }
                    end
                }
                Err(end) => end,
            },
        };
        let _ = stream.shutdown(Both::Both);
        if self.kicked.load(Ordering::Relaxed) {
            End::Kicked
        } else {
            end
        }
    }

    fn write_loop(&self, stream: &TcpStream, mut tls: Option<&mut ServerConnection>) -> End {
        let mut reading = true;
        let mut pending = Pending::default();
        let mut plain = Vec::new();
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(batch) => {
                    pending.extend(&batch);
                    // write what is queued, as few system calls as possible
                    loop {
                        self.top_up(&mut pending);
                        if pending.is_empty() {
                            break;
                        }
                        let written = match tls.as_deref_mut() {
                            None => self.write_some(stream, &mut pending),
                            Some(conn) => {
                                self.write_batch_tls(stream, conn, &mut pending, &mut plain)
                            }
                        };
                        if let Err(end) = written {
                            return end;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.shutdown.is_set() {
                        return End::Stopped;
                    }
                    if reading {
                        match peer_state(stream, tls.as_deref_mut()) {
                            Peer::Open => {}
                            // it may still read (a half-close); a write will tell
                            Peer::HalfClosed => reading = false,
                            Peer::Gone(e) => return End::Gone(e),
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return End::Stopped,
            }
        }
    }

    /// Take what else is queued, without waiting, up to one batch
    /// ([`WRITE_BATCH_BYTES`], [`WRITE_BATCH_PAYLOADS`])
    fn top_up(&self, pending: &mut Pending) {
        while pending.bytes < WRITE_BATCH_BYTES && pending.payloads.len() < WRITE_BATCH_PAYLOADS {
            match self.rx.try_recv() {
                Ok(batch) => pending.extend(&batch),
                // empty, or the hub let go: what is pending is written first
                Err(_) => return,
            }
        }
    }

    /// One `writev` of the pending payloads; the ones written completely
    /// are counted and let go of. Gives up only when the client is gone or
    /// cut off, or when shutdown was requested and the client is not
    /// taking data
    fn write_some(&self, mut stream: &TcpStream, pending: &mut Pending) -> Result<(), End> {
        if pending.bytes <= pending.offset {
            // only empty payloads: nothing to write (and a write of nothing
            // would look like a closed socket)
            let (datagrams, _) = pending.advance(0);
            self.stats.datagrams.add(datagrams);
            return Ok(());
        }
        let slices = pending.slices();
        match stream.write_vectored(&slices) {
            Ok(0) => Err(End::Gone(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => {
                let (datagrams, bytes) = pending.advance(n);
                self.stats.datagrams.add(datagrams);
                self.stats.bytes.add(bytes);
                Ok(())
            }
            Err(e) if blocked(&e) => match self.interrupted() {
                Some(end) => Err(end),
                None => Ok(()),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(End::Gone(e)),
        }
    }

    /// Encrypt the pending payloads as one plaintext run (so records are
    /// full-sized, not one per datagram) and write them completely; they
    /// count as written once every record is out
    fn write_batch_tls(
        &self,
        stream: &TcpStream,
        conn: &mut ServerConnection,
        pending: &mut Pending,
        plain: &mut Vec<u8>,
    ) -> Result<(), End> {
        plain.clear();
        for (taken, p) in pending.payloads.iter().enumerate() {
            if taken > 0 && plain.len() + p.len() > WRITE_BATCH_BYTES {
                break;
            }
            plain.extend_from_slice(p);
        }
        self.write_tls(stream, conn, plain)?;
        // the payloads taken, and any empty ones right behind them
        let (datagrams, bytes) = pending.advance(plain.len());
        self.stats.datagrams.add(datagrams);
        self.stats.bytes.add(bytes);
        Ok(())
    }

    /// Why to stop waiting for a blocked socket, if there is a reason
    fn interrupted(&self) -> Option<End> {
        if self.kicked.load(Ordering::Relaxed) {
            Some(End::Kicked)
        } else if self.shutdown.is_set() {
            Some(End::Stalled)
        } else {
            None
        }
    }

    /// The server side of a TLS handshake, bounded by `timeout`
    fn handshake(
        &self,
        stream: &TcpStream,
        config: &Arc<ServerConfig>,
        timeout: Duration,
    ) -> Result<ServerConnection, End> {
        let mut conn =
            ServerConnection::new(Arc::clone(config)).map_err(|e| End::Tls(tls::explain(&e)))?;
        let until = Instant::now() + timeout;
        let mut sock = stream;
        while conn.is_handshaking() {
            if self.shutdown.is_set() {
                return Err(End::Stopped);
            }
            if Instant::now() >= until {
                return Err(End::Tls(format!(
                    "not finished after {} s (--tls-handshake-timeout)",
                    timeout.as_secs()
                )));
            }
            if conn.wants_write() {
                match conn.write_tls(&mut sock) {
                    Ok(_) => {}
                    Err(e) if blocked(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(End::Gone(e)),
                }
                continue;
            }
            match conn.read_tls(&mut sock) {
                Ok(0) => {
                    return Err(End::Tls(
                        "the client closed the connection during the handshake".into(),
                    ))
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // the alert tells the client why (best effort)
                        let _ = conn.write_tls(&mut sock);
                        return Err(End::Tls(tls::explain(&e)));
                    }
                }
                Err(e) if blocked(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Gone(e)),
            }
        }
        Ok(conn)
    }

    /// Encrypt `payload` and write it completely; gives up only when the
    /// client is gone or cut off, or when shutdown was requested and the
    /// client is not taking data
    fn write_tls(
        &self,
        stream: &TcpStream,
        conn: &mut ServerConnection,
        payload: &[u8],
    ) -> Result<(), End> {
        let mut done = 0;
        while done < payload.len() {
            // rustls buffers at most 64 KiB of records: write, then flush
            let n = conn.writer().write(&payload[done..]).map_err(End::Gone)?;
            if n == 0 && !conn.wants_write() {
                return Err(End::Gone(io::Error::from(io::ErrorKind::WriteZero)));
            }
            done += n;
            self.flush_tls(stream, conn)?;
        }
        Ok(())
    }

    /// Write every TLS record rustls holds
    fn flush_tls(&self, mut stream: &TcpStream, conn: &mut ServerConnection) -> Result<(), End> {
        while conn.wants_write() {
            match conn.write_tls(&mut stream) {
                Ok(0) => return Err(End::Gone(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(_) => {}
                Err(e) if blocked(&e) => {
                    if let Some(end) = self.interrupted() {
                        return Err(end);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Gone(e)),
            }
        }
        Ok(())
    }
}

/// A socket timeout (or `WouldBlock`): the peer is not taking or sending data
fn blocked(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

enum Peer {
    Open,
    HalfClosed,
    Gone(io::Error),
}

/// Look at the read side without blocking, discarding anything the client sent
///
/// Notices a reset (or a close, once a write fails) while the group is idle,
/// so the client's slot is freed without waiting for the next datagram. A
/// TLS client's bytes go through its session (a close_notify counts as a
/// half-close, a bad record as the end).
fn peer_state(stream: &TcpStream, mut tls: Option<&mut ServerConnection>) -> Peer {
    let mut scratch = [0u8; 1024];
    for _ in 0..16 {
        // SAFETY: `scratch` is valid for writes of its length for the whole call.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return Peer::HalfClosed,
            n if n > 0 => {
                let Some(conn) = tls.as_deref_mut() else {
                    continue;
                };
                let len = usize::try_from(n).unwrap_or(0).min(scratch.len());
                match discard_tls(conn, &scratch[..len]) {
                    Ok(false) => continue,
                    Ok(true) => return Peer::HalfClosed,
                    Err(e) => return Peer::Gone(e),
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Peer::Open,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Peer::Gone(e),
                }
            }
        }
    }
    Peer::Open
}

/// Feed what a TLS client sent into its session and discard the plaintext;
/// true once the client has sent close_notify
fn discard_tls(conn: &mut ServerConnection, mut bytes: &[u8]) -> io::Result<bool> {
    let mut closed = false;
    let mut sink = [0u8; 1024];
    while !bytes.is_empty() {
        if conn.read_tls(&mut bytes)? == 0 {
            break;
        }
        let state = conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        closed |= state.peer_has_closed();
        // drain the plaintext, so rustls never refuses more records
        while let Ok(n) = io::Read::read(&mut conn.reader(), &mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    Ok(closed)
}

/// One `--udp-output-addr`: every datagram of the group is sent there (or,
/// with `--udp-output-strip`, every reassembled payload)
#[derive(Debug)]
pub(crate) struct UdpOutput {
    sock: UdpSocket,
    poll: Poll,
    fanout: Fanout,
    stats: Arc<UdpOutputStats>,
    /// `Some` with `--udp-output-strip`
    strip: Option<(Accept, ReceiverConfig)>,
    shutdown: Shutdown,
}

impl UdpOutput {
    /// Join the group and open the sending socket
    pub(crate) fn bind(dest: &Addr, config: &Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let sock = join_group(config, "--udp-output-addr", dest)?;
        let fanout = Fanout::new(std::slice::from_ref(&dest.spec), &config.socket)
            .with_context(|| format!("opening the sending socket for --udp-output-addr {dest}"))?;
        let poll = Poll::new().context("creating a poll instance")?;
        register(&poll, sock.as_raw_fd(), GROUP)
            .with_context(|| format!("watching the group for --udp-output-addr {dest}"))?;
        Ok(Self {
            sock,
            poll,
            fanout,
            stats: Arc::new(UdpOutputStats::new(dest.to_string(), dest.addr)),
            strip: config
                .udp_output_strip
                .then(|| (config.accept, config.receiver.clone())),
            shutdown,
        })
    }

    /// Its counters
    pub(crate) fn stats(&self) -> &Arc<UdpOutputStats> {
        &self.stats
    }

    /// Forward the group's datagrams until shutdown
    pub(crate) fn run(mut self) -> anyhow::Result<()> {
        let _span = tracing::info_span!("udp-output", dest = %self.stats.spec).entered();
        let mut events = Events::with_capacity(8);
        let mut batch = crate::poller::recv_batch();
        let logs = RecvLogs::default();
        let mut reassembly = self
            .strip
            .as_ref()
            .map(|(accept, config)| Reassembly::new(*accept, config));
        let mut more = false;
        // what goes out is batched: one sendmmsg (GSO runs) per drain
        let mut out = DatagramBatch::default();
        while !self.shutdown.is_set() {
            let timeout = if more {
                Duration::ZERO
            } else {
                timeout_until(reassembly.as_ref().and_then(Reassembly::poll_timeout))
            };
            wait(&mut self.poll, &mut events, timeout).context("waiting for datagrams")?;
            let (fanout, stats) = (&self.fanout, &self.stats);
            let now = Instant::now();
            more = drain_udp(
                &self.sock,
                &mut batch,
                &stats.recv,
                &logs,
                &self.shutdown,
                |from, d| {
                    let mut forward = |d: &[u8]| queue(fanout, stats, &mut out, d);
                    match reassembly.as_mut() {
                        Some(r) => r.handle(now, from, d, forward),
                        None => forward(d),
                    }
                },
            );
            if let Some(r) = reassembly.as_mut() {
                r.handle_timeout(Instant::now(), |d| queue(fanout, stats, &mut out, d));
                r.publish(&stats.mpx);
            }
            flush(fanout, stats, &mut out);
        }
        if let Some(r) = reassembly.as_mut() {
            r.close_all(|d| queue(&self.fanout, &self.stats, &mut out, d));
            r.publish(&self.stats.mpx);
        }
        flush(&self.fanout, &self.stats, &mut out);
        Ok(())
    }
}

/// Datagrams (or bytes) a UDP output queues before it sends them
const OUT_BATCH: usize = 64;
const OUT_BATCH_BYTES: usize = 256 << 10;

/// Queue one datagram for a UDP output's destination, sending the queue
/// when it is full
fn queue(fanout: &Fanout, stats: &UdpOutputStats, out: &mut DatagramBatch, d: &[u8]) {
    if d.is_empty() {
        return;
    }
    out.push(d);
    if out.len() >= OUT_BATCH || out.bytes() >= OUT_BATCH_BYTES {
        flush(fanout, stats, out);
    }
}

/// Send what is queued for a UDP output's destination, counting it (the
/// byte count is the destination's own, so it is exact even when some
/// datagrams of the batch fail)
fn flush(fanout: &Fanout, stats: &UdpOutputStats, out: &mut DatagramBatch) {
    if out.is_empty() {
        return;
    }
    let sent_bytes = || {
        fanout
            .stats()
            .map(|(_, _, s)| s.bytes.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    let before = sent_bytes();
    let ok = fanout.send_many(&out.frames());
    stats.datagrams.add(ok as u64);
    stats.bytes.add(sent_bytes().saturating_sub(before));
    stats.send_errors.add(out.len().saturating_sub(ok) as u64);
    out.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// A server and a client that trusts it, both in memory
    fn pair() -> (ServerConnection, ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let der = CertificateDer::from(cert.der().to_vec());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        (
            ServerConnection::new(Arc::new(server)).unwrap(),
            ClientConnection::new(Arc::new(client), name).unwrap(),
        )
    }

    /// Everything `from` has to send
    fn records(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut out).unwrap();
        }
        out
    }

    fn handshake(server: &mut ServerConnection, client: &mut ClientConnection) {
        for _ in 0..10 {
            let c = records(client);
            if !c.is_empty() {
                server.read_tls(&mut &c[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            let s = records(server);
            if !s.is_empty() {
                client.read_tls(&mut &s[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if !server.is_handshaking() && !client.is_handshaking() {
                return;
            }
        }
        panic!("no handshake");
    }

    #[test]
    fn test_discard_tls_drops_plaintext_and_sees_close_notify() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        // 200 kB of chatter: more than rustls buffers as plaintext, so it
        // must be drained as it goes
        let mut chatter = Vec::new();
        for _ in 0..20 {
            client.writer().write_all(&[7u8; 10_000]).unwrap();
            chatter.extend(records(&mut client));
        }
        assert!(
            !discard_tls(&mut server, &chatter).unwrap(),
            "not closed yet"
        );
        client.send_close_notify();
        let close = records(&mut client);
        assert!(
            discard_tls(&mut server, &close).unwrap(),
            "close_notify seen"
        );
    }

    #[test]
    fn test_discard_tls_rejects_garbage() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        let e = discard_tls(&mut server, b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(tls::explain_io(&e).starts_with("TLS: "), "{e}");
    }

    fn payload(byte: u8, len: usize) -> Arc<[u8]> {
        Arc::from(vec![byte; len])
    }

    #[test]
    fn test_pending_advance_counts_only_complete_payloads() {
        let mut p = Pending::default();
        p.extend(&[payload(1, 10), payload(2, 0), payload(3, 5)]);
        assert_eq!(p.slices().iter().map(|s| s.len()).sum::<usize>(), 15);
        // a partial write completes nothing
        assert_eq!(p.advance(4), (0, 0));
        assert_eq!(p.slices()[0].len(), 6);
        assert!(p.slices()[0].iter().all(|&b| b == 1));
        // finishing the first also lets go of the empty one behind it
        assert_eq!(p.advance(6), (2, 10));
        assert_eq!(p.advance(2), (0, 0));
        assert_eq!(p.slices().first().map(|s| s.len()), Some(3));
        assert_eq!(p.advance(3), (1, 5));
        assert!(p.is_empty());
        assert_eq!(p.bytes, 0);
        assert_eq!(p.offset, 0);
    }

    #[test]
    fn test_pending_slices_stay_within_iov_max() {
        let mut p = Pending::default();
        let many: Vec<_> = (0..IOV_MAX + 10).map(|_| payload(7, 1)).collect();
        p.extend(&many);
        assert_eq!(p.slices().len(), IOV_MAX);
        assert_eq!(p.advance(IOV_MAX), (IOV_MAX as u64, IOV_MAX as u64));
        assert_eq!(p.slices().len(), 10);
    }

    #[test]
    fn test_share_is_bounded_by_the_backlog_and_pins_only_what_it_takes() {
        let whole: Batch = Arc::from(vec![payload(1, 100), payload(2, 100), payload(3, 100)]);
        // room for everything: the same list, shared
        let all = share(&whole, 0, 8).unwrap();
        assert!(Arc::ptr_eq(&all, &whole));
        assert!(Arc::ptr_eq(&share(&whole, 5, 8).unwrap(), &whole));
        // room for two: its own list of the first two
        let two = share(&whole, 6, 8).unwrap();
        assert!(!Arc::ptr_eq(&two, &whole));
        assert_eq!(two.len(), 2);
        assert!(Arc::ptr_eq(&two[0], &whole[0]) && Arc::ptr_eq(&two[1], &whole[1]));
        // the third payload is not kept alive by the partial share
        let third = Arc::downgrade(&whole[2]);
        drop(all);
        drop(whole);
        assert!(third.upgrade().is_none());
        assert_eq!(two[1][0], 2);
        // full, or over (a smaller queue than the backlog): nothing
        let whole: Batch = Arc::from(vec![payload(1, 1)]);
        assert!(share(&whole, 8, 8).is_none());
        assert!(share(&whole, 9, 8).is_none());
        assert!(share(&whole, u64::MAX, 8).is_none());
    }

    #[test]
    fn test_end_messages() {
        assert!(End::Kicked.to_string().contains("--slow-client disconnect"));
        let e = End::Tls("not finished after 10 s (--tls-handshake-timeout)".into());
        assert!(e
            .to_string()
            .starts_with("TLS handshake failed: not finished"));
    }
}
