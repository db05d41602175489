//! Inputs: UDP sockets and TCP listeners whose data goes to the group

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::io::Tee;
use mproxy_common::net::{bind_receiver, RECV_BUF_LEN};
use mproxy_common::pack::{Framing, Packer};
use mproxy_common::stats::LogLimiter;
use mproxy_common::{Fanout, SocketOptions};

use crate::config::{Addr, Config};
use crate::poller::{drain_udp, register, wait, RecvLogs, TICK};
use crate::stats::{TcpInputStats, UdpInputStats};

/// The group as the inputs see it: one sending socket shared by all input
/// threads, plus the `--tee` copy
#[derive(Debug)]
pub(crate) struct GroupTx {
    fanout: Fanout,
    tee: Tee,
}

impl GroupTx {
    /// Open the sending socket (multicast TTL, loopback and interface from `config.socket`)
    pub(crate) fn open(config: &Config) -> anyhow::Result<Self> {
        let fanout = Fanout::new(std::slice::from_ref(&config.group.spec), &config.socket)
            .with_context(|| {
                format!(
                    "opening the sending socket for --multicast-addr {}",
                    config.group
                )
            })?;
        Ok(Self {
            fanout,
            tee: Tee::new(config.tee),
        })
    }

    /// Send one payload to the group (and to stdout with `--tee`); false if
    /// the send failed (counted and logged by the fan-out)
    fn send(&self, payload: &[u8]) -> bool {
        if payload.is_empty() {
            // nothing to send, and an empty datagram would only wake receivers
            return true;
        }
        self.tee.write(payload);
        self.fanout.send(payload) == 1
    }
}

/// One `--udp-listen-addr`: every datagram received goes to the group
#[derive(Debug)]
pub(crate) struct UdpInput {
    sock: UdpSocket,
    poll: Poll,
    group: Arc<GroupTx>,
    stats: Arc<UdpInputStats>,
    shutdown: Shutdown,
}

impl UdpInput {
    /// Bind (and join, for a multicast address) the socket
    pub(crate) fn bind(
        addr: &Addr,
        opts: &SocketOptions,
        group: Arc<GroupTx>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let context = || format!("binding --udp-listen-addr {addr}");
        // --source belongs to the group's joins, not to the inputs
        let opts = SocketOptions {
            sources: Vec::new(),
            ..opts.clone()
        };
        let sock = bind_receiver(addr.addr, &opts)
            .map_err(anyhow::Error::from)
            .with_context(context)?;
        let local = sock.local_addr().with_context(context)?;
        let poll = Poll::new().context("creating a poll instance")?;
        register(&poll, sock.as_raw_fd(), Token(0)).with_context(context)?;
        Ok(Self {
            sock,
            poll,
            group,
            stats: Arc::new(UdpInputStats::new(addr.to_string(), local)),
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
        let mut buf = vec![0u8; RECV_BUF_LEN];
        let logs = RecvLogs::default();
        let mut more = false;
        while !self.shutdown.is_set() {
            let timeout = if more { Duration::ZERO } else { TICK };
            wait(&mut self.poll, &mut events, timeout).context("waiting for datagrams")?;
            let (group, stats) = (&self.group, &self.stats);
            more = drain_udp(
                &self.sock,
                &mut buf,
                &stats.recv,
                &logs,
                &self.shutdown,
                |d| {
                    if group.send(d) {
                        stats.datagrams.inc();
                        stats.bytes.add(d.len() as u64);
                    } else {
                        stats.send_errors.inc();
                    }
                },
            );
        }
        Ok(())
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
    packer: Packer,
    /// Not yet read to `WouldBlock` since the last readiness event
    readable: bool,
    bytes_in: u64,
    datagrams: u64,
    split_lines: u64,
}

/// Why an input connection ended
enum End {
    Eof,
    Error(io::Error),
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
    shutdown: Shutdown,
    log_conn: LogLimiter,
    log_reject: LogLimiter,
    log_accept: LogLimiter,
}

impl TcpInput {
    /// Bind the listener
    pub(crate) fn bind(
        addr: &Addr,
        config: &Config,
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
            stats: Arc::new(TcpInputStats::new(addr.to_string(), local)),
            framing: config.framing,
            max_datagram: config.max_datagram,
            max_clients: config.max_clients,
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
        let mut conns: HashMap<Token, Conn> = HashMap::new();
        let mut next_token = 1usize;
        while !self.shutdown.is_set() {
            let busy = conns.values().any(|c| c.readable);
            let timeout = if busy { Duration::ZERO } else { TICK };
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
            for (token, conn) in conns.iter_mut().filter(|(_, c)| c.readable) {
                if let Some(end) = self.read_some(conn, &mut buf) {
                    ended.push((*token, end));
                }
            }
            for (token, end) in ended {
                if let Some(conn) = conns.remove(&token) {
                    self.close(conn, end);
                }
            }
        }
        for (_, conn) in conns.drain() {
            self.close(conn, End::Shutdown);
        }
        Ok(())
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
            let token = Token(*next_token);
            *next_token = next_token.wrapping_add(1).max(1);
            let setup = stream
                .set_nonblocking(true)
                .and_then(|()| register(&self.poll, stream.as_raw_fd(), token));
            if let Err(e) = setup {
                self.stats.accept_errors.inc();
                if let Some(suppressed) = self.log_accept.allow() {
                    tracing::warn!(suppressed, "cannot watch connection from {peer}: {e}");
                }
                continue;
            }
            self.stats.accepted.inc();
            tracing::debug!(%peer, "connection opened");
            conns.insert(
                token,
                Conn {
                    stream,
                    peer,
                    packer: Packer::new(self.framing, self.max_datagram),
                    readable: true,
                    bytes_in: 0,
                    datagrams: 0,
                    split_lines: 0,
                },
            );
        }
    }

    /// Read a few times; `Some` when the connection has ended
    fn read_some(&self, conn: &mut Conn, buf: &mut [u8]) -> Option<End> {
        for _ in 0..READS_PER_TURN {
            match (&conn.stream).read(buf) {
                // EOF: the peer is done. Never read again, never send anything empty.
                Ok(0) => return Some(End::Eof),
                Ok(n) => {
                    conn.bytes_in += n as u64;
                    self.stats.bytes_in.add(n as u64);
                    conn.packer.push(&buf[..n], |d| {
                        send(&self.group, &self.stats, &mut conn.datagrams, d)
                    });
                    let split = conn.packer.split_lines();
                    self.stats.split_lines.add(split - conn.split_lines);
                    conn.split_lines = split;
                }
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

    /// Send what the packer holds back (an unfinished line) and forget the connection
    fn close(&self, mut conn: Conn, end: End) {
        conn.packer
            .finish(|d| send(&self.group, &self.stats, &mut conn.datagrams, d));
        let _ = self
            .poll
            .registry()
            .deregister(&mut mio::unix::SourceFd(&conn.stream.as_raw_fd()));
        self.stats.closed.inc();
        let how = match &end {
            End::Eof => "closed by peer".to_string(),
            End::Error(e) => {
                self.stats.read_errors.inc();
                format!("failed: {e}")
            }
            End::Shutdown => "closed at shutdown".to_string(),
        };
        let line = format!(
            "connection from {} {how}: {} bytes read, {} datagrams to the group",
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
    }
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
