//! One `--tcp-output-addr`: one thread, one mio event loop over the
//! group socket, the listener and every client
//!
//! Each turn of the loop: read what the group sent (one budgeted drain)
//! into the shared [`Log`], read what clients sent (handshakes, closes),
//! bound every client's backlog (`--client-queue`, `--slow-client`),
//! write to every client whose socket takes data, accept newcomers
//! (evicting per [`crate::slots`] when full), then let the log go of what
//! no client needs. Nothing blocks; a client whose socket is full is
//! skipped until it is writable again, so however many clients there are
//! and however slow, the loop only ever waits for readiness. The thread
//! count does not depend on the number of clients.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::ReceiverConfig;
use mproxy_common::stats::LogLimiter;
use rustls::{ServerConfig, ServerConnection};

use super::client::{Client, End, Flow};
use super::join_group;
use super::log::Log;
use crate::cli::Accept;
use crate::config::{Addr, Config, SlowClient};
use crate::error::Error;
use crate::os;
use crate::poller::{register, register_rw, timeout_until, wait};
use crate::reassembly::Reassembly;
use crate::recv::{drain_udp, recv_batch, settle, RecvLogs};
use crate::slots::{self, Standing};
use crate::stats::TcpOutputStats;
use crate::tls;

const GROUP: Token = Token(0);
const LISTENER: Token = Token(1);
/// Token of client slot 0
const FIRST_CLIENT: usize = 2;

/// How long the proxy keeps writing to its clients after a shutdown request
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// A client that takes nothing for this long meanwhile is given up on
const SHUTDOWN_STALL: Duration = Duration::from_millis(100);
/// Heap memory freed (log chunks, sessions of departed clients) before
/// the allocator is asked to hand it back, and how often at most
const TRIM_BYTES: usize = 4 << 20;
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// What a departed client is taken to have freed, for [`TRIM_BYTES`]
const CLIENT_BYTES: usize = 64 << 10;

/// The limits of one TCP output
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Bytes a client may be behind the newest payload
    queue: usize,
    slow_client: SlowClient,
    max_clients: usize,
    max_handshakes: usize,
    handshake_timeout: Duration,
    stall_timeout: Duration,
}

/// Rate-limited logs of one TCP output
#[derive(Debug, Default)]
struct Logs {
    accept: LogLimiter,
    reject: LogLimiter,
    tls: LogLimiter,
    evict: LogLimiter,
    stall: LogLimiter,
}

/// One `--tcp-output-addr`: a listener whose clients receive the group's payloads
#[derive(Debug)]
pub(crate) struct TcpOutput {
    listener: TcpListener,
    sock: UdpSocket,
    poll: Poll,
    stats: Arc<TcpOutputStats>,
    limits: Limits,
    accept: Accept,
    receiver: ReceiverConfig,
    /// `Some` for a `tls://` output
    tls: Option<Arc<ServerConfig>>,
    shutdown: Shutdown,
    logs: Logs,
}

/// What the loop changes as it runs: the log and the clients
struct Hub {
    log: Log,
    /// Client slots; slot `i` has token `FIRST_CLIENT + i`
    slots: Vec<Option<Client>>,
    free: Vec<usize>,
    count: usize,
    scratch: Vec<u8>,
    /// Bytes freed since the last trim, and when that was
    freed: usize,
    trimmed: Instant,
    /// An accept failed for want of resources: try again at the next turn
    accept_retry: bool,
}

impl Hub {
    fn new() -> Self {
        Self {
            log: Log::default(),
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
            scratch: vec![0; 16 * 1024],
            freed: 0,
            trimmed: Instant::now(),
            accept_retry: false,
        }
    }

    /// A free slot (not yet filled)
    fn vacant(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        })
    }

    fn insert(&mut self, i: usize, c: Client) {
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(c);
            self.count += 1;
        }
    }

    fn take(&mut self, i: usize) -> Option<Client> {
        let c = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.count -= 1;
        self.freed += CLIENT_BYTES;
        Some(c)
    }

    fn get_mut(&mut self, token: Token) -> Option<&mut Client> {
        let i = token.0.checked_sub(FIRST_CLIENT)?;
        self.slots.get_mut(i)?.as_mut()
    }

    fn clients(&self) -> impl Iterator<Item = (usize, &Client)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c.as_ref()?)))
    }

    fn standings(&self) -> impl Iterator<Item = (usize, Standing)> + '_ {
        self.clients().map(|(i, c)| (i, c.standing(&self.log)))
    }

    /// Let the log go of what no client needs; hand freed memory back now
    /// and then
    fn release(&mut self, now: Instant) {
        let oldest = self.clients().map(|(_, c)| c.pos()).min();
        self.log.release(oldest.unwrap_or(self.log.head()));
        self.freed += self.log.take_freed();
        if self.freed >= TRIM_BYTES && now.saturating_duration_since(self.trimmed) >= TRIM_INTERVAL
        {
            self.log.drop_spares();
            os::release_memory();
            self.freed = 0;
            self.trimmed = now;
        }
    }
}

impl TcpOutput {
    /// Bind the listener and join the group; `tls` for a `tls://` output
    pub(crate) fn bind(
        addr: &Addr,
        config: &Config,
        tls: Option<Arc<ServerConfig>>,
        shutdown: Shutdown,
    ) -> Result<Self, Error> {
        let what = || format!("binding --tcp-output-addr {addr}");
        let listener = TcpListener::bind(addr.addr).map_err(|e| Error::bind(what(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::bind(what(), e))?;
        let local = listener.local_addr().map_err(|e| Error::bind(what(), e))?;
        let sock = join_group(config, "--tcp-output-addr", addr)?;
        let poll = Poll::new().map_err(|e| Error::os("creating a poll instance", e))?;
        register(&poll, sock.as_raw_fd(), GROUP).map_err(|e| Error::bind(what(), e))?;
        register(&poll, listener.as_raw_fd(), LISTENER).map_err(|e| Error::bind(what(), e))?;
        Ok(Self {
            listener,
            sock,
            poll,
            stats: Arc::new(TcpOutputStats::new(addr.to_string(), local)),
            limits: Limits {
                queue: config.client_queue.bytes(config.max_datagram),
                slow_client: config.slow_client,
                max_clients: config.max_clients,
                max_handshakes: config.max_handshakes(),
                handshake_timeout: config.tls.handshake_timeout,
                stall_timeout: config.stall_timeout,
            },
            accept: config.accept,
            receiver: config.receiver.clone(),
            tls,
            shutdown,
            logs: Logs::default(),
        })
    }

    /// Its counters
    pub(crate) fn stats(&self) -> &Arc<TcpOutputStats> {
        &self.stats
    }

    /// Fan the group out to clients until shutdown
    ///
    /// # Errors
    /// The poll instance failed (a working kernel never does that).
    pub(crate) fn run(mut self) -> Result<(), io::Error> {
        let _span = tracing::info_span!("tcp-output", listen = %self.stats.spec).entered();
        tracing::debug!(local = %self.stats.local, "listening");
        let mut events = Events::with_capacity(1024);
        let mut batch = recv_batch();
        let logs = RecvLogs::default();
        let mut reassembly = Reassembly::new(self.accept, &self.receiver);
        let mut hub = Hub::new();
        let (mut more, mut more_group) = (false, false);
        while !self.shutdown.is_set() {
            let timeout = if more {
                Duration::ZERO
            } else {
                timeout_until(reassembly.poll_timeout())
            };
            wait(&mut self.poll, &mut events, timeout)?;
            // without events (a timeout) look at everything anyway: cheap,
            // and nothing depends on an edge that was missed
            let idle = events.is_empty();
            if idle {
                settle(&self.sock, &self.stats.recv);
            }
            let (mut group_ready, mut accept_ready) =
                (more_group || idle, hub.accept_retry || idle);
            for ev in events.iter() {
                match ev.token() {
                    GROUP => group_ready = true,
                    LISTENER => accept_ready = true,
                    token => mark(&mut hub, token, ev),
                }
            }
            let now = Instant::now();
            let anyone = hub.count > 0;
            let log = &mut hub.log;
            // with no client nothing is kept (the payload goes nowhere)
            let mut keep = |p: &[u8]| {
                if anyone {
                    log.push(p);
                }
            };
            if group_ready {
                more_group = drain_udp(
                    &self.sock,
                    &mut batch,
                    &self.stats.recv,
                    &logs,
                    &self.shutdown,
                    |from, d| reassembly.handle(now, from, d, &mut keep),
                );
            }
            reassembly.handle_timeout(now, &mut keep);
            reassembly.publish(&self.stats.mpx);
            let more_clients = self.serve_all(&mut hub, now);
            if accept_ready {
                self.accept_all(&mut hub, now);
            }
            hub.release(now);
            more = more_group || more_clients;
        }
        // what the streams still hold goes to the clients still here
        let log = &mut hub.log;
        let anyone = hub.count > 0;
        reassembly.close_all(|p| {
            if anyone {
                log.push(p);
            }
        });
        reassembly.publish(&self.stats.mpx);
        settle(&self.sock, &self.stats.recv);
        self.finish(hub, &mut events);
        Ok(())
    }

    /// One turn for every client: errors, reads, timers, the queue bound,
    /// writes. True if some client has more to do at once
    fn serve_all(&mut self, hub: &mut Hub, now: Instant) -> bool {
        let mut more = false;
        for i in 0..hub.slots.len() {
            let Some(c) = hub.slots[i].as_mut() else {
                continue;
            };
            match self.serve(c, &hub.log, &mut hub.scratch, now) {
                Ok(flow) => more |= flow == Flow::More || c.readable,
                Err(end) => {
                    if let Some(c) = hub.take(i) {
                        self.close(c, end, &hub.log);
                    }
                }
            }
        }
        more
    }

    fn serve(
        &self,
        c: &mut Client,
        log: &Log,
        scratch: &mut [u8],
        now: Instant,
    ) -> Result<Flow, End> {
        let limits = &self.limits;
        if c.errored {
            c.check_error()?;
        }
        if c.readable {
            c.read(scratch, now)?;
        }
        if c.handshaking() && slots::overdue(c.opened(), now, limits.handshake_timeout) {
            return Err(End::Tls(format!(
                "not finished after {} s (--tls-handshake-timeout)",
                limits.handshake_timeout.as_secs()
            )));
        }
        if c.over_queue(log, limits.queue) {
            match limits.slow_client {
                SlowClient::Disconnect => {
                    self.stats.slow_disconnects.inc();
                    return Err(End::Kicked);
                }
                SlowClient::Drop => {
                    let missed = c.skip(log, limits.queue);
                    c.stats.drops.add(missed);
                    if let Some(suppressed) = c.log.allow() {
                        tracing::warn!(
                            client = %c.stats.peer,
                            suppressed,
                            "client is not keeping up: more than its queue of {} bytes \
                             waits for it, dropping datagrams for it",
                            limits.queue
                        );
                    }
                }
            }
        }
        let flow = if c.blocked {
            Flow::Blocked
        } else if c.backlog(log) == 0 && !c.tls_pending() {
            c.idle(now);
            Flow::CaughtUp
        } else {
            c.write(log, now)?
        };
        if c.stuck_for(now).is_some_and(|d| d >= limits.stall_timeout) {
            return Err(End::Silent(limits.stall_timeout));
        }
        Ok(flow)
    }

    /// Forget a client that has ended: count what it missed, log why
    fn close(&self, c: Client, end: End, log: &Log) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
        c.stats.drops.add(c.unwritten(log));
        let peer = c.stats.peer;
        match &end {
            End::Tls(_) => {
                self.stats.tls_failures.inc();
                // a scanner or a misconfigured fleet must not flood the log
                if let Some(suppressed) = self.logs.tls.allow() {
                    tracing::warn!(suppressed, "client {peer}: {end}");
                }
            }
            End::Evicted(_) => {
                self.stats.evicted.inc();
                if let Some(suppressed) = self.logs.evict.allow() {
                    tracing::warn!(suppressed, "{}: {end}", c.stats.summary());
                }
            }
            End::Silent(_) => {
                self.stats.stalled.inc();
                if let Some(suppressed) = self.logs.stall.allow() {
                    tracing::warn!(suppressed, "{}: {end}", c.stats.summary());
                }
            }
            End::Kicked => tracing::warn!("{}: {end}", c.stats.summary()),
            _ => tracing::info!("{}: {end}", c.stats.summary()),
        }
        self.stats.remove_client(&c.stats);
    }

    fn accept_all(&self, hub: &mut Hub, now: Instant) {
        hub.accept_retry = false;
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
                    // out of descriptors or memory: the connection waits in
                    // the backlog, and the next turn tries again
                    self.stats.accept_errors.inc();
                    hub.accept_retry = true;
                    if let Some(suppressed) = self.logs.accept.allow() {
                        tracing::warn!(suppressed, "accept failed: {e}");
                    }
                    return;
                }
            };
            if !self.make_room(hub, now) {
                self.stats.rejected.inc();
                if let Some(suppressed) = self.logs.reject.allow() {
                    tracing::warn!(
                        suppressed,
                        "closed connection from {peer}: already {} clients (--max-clients)",
                        hub.count
                    );
                }
                continue; // dropping the stream closes it
            }
            if let Err(e) = self.admit(hub, stream, peer, now) {
                self.stats.accept_errors.inc();
                if let Some(suppressed) = self.logs.accept.allow() {
                    tracing::warn!(suppressed, "cannot serve client {peer}: {e}");
                }
            }
        }
    }

    /// Make room for one more connection if the limits are reached, by
    /// evicting whoever has made the least progress (false only if there
    /// is nobody to evict)
    fn make_room(&self, hub: &mut Hub, now: Instant) -> bool {
        if self.tls.is_some() {
            let handshakes = hub.clients().filter(|(_, c)| c.handshaking()).count();
            if handshakes >= self.limits.max_handshakes {
                if let Some((i, s)) = slots::oldest_handshake(hub.standings()) {
                    self.evict(hub, i, s, now);
                }
            }
        }
        if hub.count < self.limits.max_clients {
            return true;
        }
        match slots::victim(hub.standings(), false) {
            Some((i, s)) => {
                self.evict(hub, i, s, now);
                true
            }
            None => false,
        }
    }

    fn evict(&self, hub: &mut Hub, i: usize, s: Standing, now: Instant) {
        if let Some(c) = hub.take(i) {
            self.close(c, End::Evicted(s.describe(now)), &hub.log);
        }
    }

    /// Set up an accepted connection and start serving it at the newest payload
    fn admit(
        &self,
        hub: &mut Hub,
        stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        // payloads are written as they come: no Nagle delay for telemetry
        stream.set_nodelay(true)?;
        let session = match &self.tls {
            None => None,
            Some(config) => match ServerConnection::new(Arc::clone(config)) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.stats.tls_failures.inc();
                    if let Some(suppressed) = self.logs.tls.allow() {
                        tracing::warn!(suppressed, "client {peer}: {}", tls::explain(&e));
                    }
                    return Ok(());
                }
            },
        };
        let i = hub.vacant();
        if let Err(e) = register_rw(&self.poll, stream.as_raw_fd(), Token(FIRST_CLIENT + i)) {
            hub.free.push(i);
            return Err(e);
        }
        let client = Client::new(stream, peer, session, hub.log.head(), now);
        self.stats.accepted.inc();
        self.stats.add_client(Arc::clone(&client.stats));
        tracing::info!("client {peer} connected");
        hub.insert(i, client);
        Ok(())
    }

    /// After a shutdown request: keep writing what is queued to the clients
    /// that take it, for at most [`SHUTDOWN_FLUSH`]; then close them all
    /// (TLS with close_notify), counting what each did not get
    fn finish(&mut self, mut hub: Hub, events: &mut Events) {
        let until = Instant::now() + SHUTDOWN_FLUSH;
        loop {
            let now = Instant::now();
            let mut pending = false;
            for i in 0..hub.slots.len() {
                let Some(c) = hub.slots[i].as_mut() else {
                    continue;
                };
                if c.backlog(&hub.log) == 0 && !c.tls_pending() || c.handshaking() {
                    continue;
                }
                if c.stuck_for(now).is_some_and(|d| d >= SHUTDOWN_STALL) {
                    continue;
                }
                pending = true;
                if !c.blocked {
                    if let Err(end) = c.write(&hub.log, now) {
                        if let Some(c) = hub.take(i) {
                            self.close(c, end, &hub.log);
                        }
                    }
                }
            }
            if !pending || now >= until {
                break;
            }
            if wait(&mut self.poll, events, SHUTDOWN_STALL / 4).is_err() {
                break;
            }
            for ev in events.iter() {
                mark(&mut hub, ev.token(), ev);
            }
        }
        for i in 0..hub.slots.len() {
            let Some(mut c) = hub.slots[i].take() else {
                continue;
            };
            let end = if c.backlog(&hub.log) > 0 {
                End::Stalled
            } else {
                c.close_notify();
                End::Stopped
            };
            c.stats.drops.add(c.unwritten(&hub.log));
            // connected clients stay listed for the final summary
            tracing::debug!(client = %c.stats.peer, "{end}");
        }
    }
}

/// Note a client's readiness event
fn mark(hub: &mut Hub, token: Token, ev: &Event) {
    let Some(c) = hub.get_mut(token) else {
        return;
    };
    if ev.is_readable() || ev.is_read_closed() {
        c.readable = true;
    }
    if ev.is_writable() || ev.is_write_closed() {
        // a write tells whether it is really gone
        c.blocked = false;
    }
    if ev.is_error() {
        c.errored = true;
    }
}
