//! One `--udp-output-addr`: the group's datagrams (or, with
//! `--udp-output-strip`, its reassembled payloads) forwarded to a UDP
//! destination, batched (sendmmsg, GSO runs)

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use mproxy_common::cli::Shutdown;
use mproxy_common::mpx::ReceiverConfig;
use mproxy_common::net::DatagramBatch;
use mproxy_common::Fanout;

use super::join_group;
use crate::cli::Accept;
use crate::config::{Addr, Config};
use crate::error::Error;
use crate::poller::{register, timeout_until, wait};
use crate::reassembly::Reassembly;
use crate::recv::{drain_udp, recv_batch, settle, RecvLogs};
use crate::stats::UdpOutputStats;

const GROUP: Token = Token(0);

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
    pub(crate) fn bind(dest: &Addr, config: &Config, shutdown: Shutdown) -> Result<Self, Error> {
        let sock = join_group(config, "--udp-output-addr", dest)?;
        let fanout =
            Fanout::new(std::slice::from_ref(&dest.spec), &config.socket).map_err(|e| {
                Error::bind(
                    format!("opening the sending socket for --udp-output-addr {dest}"),
                    e,
                )
            })?;
        let poll = Poll::new().map_err(|e| Error::os("creating a poll instance", e))?;
        register(&poll, sock.as_raw_fd(), GROUP).map_err(|e| {
            Error::bind(
                format!("watching the group for --udp-output-addr {dest}"),
                e,
            )
        })?;
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
    ///
    /// # Errors
    /// The poll instance failed (a working kernel never does that).
    pub(crate) fn run(mut self) -> Result<(), io::Error> {
        let _span = tracing::info_span!("udp-output", dest = %self.stats.spec).entered();
        let mut events = Events::with_capacity(8);
        let mut batch = recv_batch();
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
            wait(&mut self.poll, &mut events, timeout)?;
            if events.is_empty() {
                settle(&self.sock, &self.stats.recv);
            }
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
        settle(&self.sock, &self.stats.recv);
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
