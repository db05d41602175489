//! UDP inputs: every datagram received goes to the group (with `--mpx`,
//! raw ones framed as the listener's stream)

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::Encoder;
use mproxy_common::net::{bind_batch_receiver, DatagramBatch};
use mproxy_common::pack::Framing;
use mproxy_common::wire::{classify, Datagram};
use mproxy_common::SocketOptions;

use super::{linger, GroupTx, StreamLease, HEARTBEAT};
use crate::config::{Addr, Config};
use crate::error::Error;
use crate::poller::{register, timeout_until, wait};
use crate::recv::{drain_udp, receive_options, recv_batch, settle, RecvLogs};
use crate::stats::UdpInputStats;

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
    ) -> Result<Self, Error> {
        let what = || format!("binding --udp-listen-addr {addr}");
        // --source belongs to the group's joins, not to the inputs
        let opts = SocketOptions {
            sources: Vec::new(),
            ..receive_options(&config.socket)
        };
        let (sock, _gro) =
            bind_batch_receiver(addr.addr, &opts).map_err(|e| Error::bind(what(), e))?;
        let local = sock.local_addr().map_err(|e| Error::bind(what(), e))?;
        let poll = Poll::new().map_err(|e| Error::os("creating a poll instance", e))?;
        register(&poll, sock.as_raw_fd(), Token(0)).map_err(|e| Error::bind(what(), e))?;
        let stream = group
            .lease()
            .transpose()
            .map_err(|e| Error::Config(format!("--udp-listen-addr {addr}: {e}")))?
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
    ///
    /// # Errors
    /// The poll instance failed (a working kernel never does that).
    pub(crate) fn run(mut self) -> Result<(), io::Error> {
        let _span = tracing::info_span!("udp-input", listen = %self.stats.spec).entered();
        tracing::debug!(local = %self.stats.local, "listening");
        let mut events = Events::with_capacity(8);
        let mut batch = recv_batch();
        let logs = RecvLogs::default();
        let mut out = Outgoing::default();
        let mut more = false;
        while !self.shutdown.is_set() {
            let timeout = if more {
                Duration::ZERO
            } else {
                timeout_until(self.stream.as_ref().and_then(|s| s.encoder.poll_timeout()))
            };
            wait(&mut self.poll, &mut events, timeout)?;
            if events.is_empty() {
                settle(&self.sock, &self.stats.recv);
            }
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
        settle(&self.sock, &self.stats.recv);
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
