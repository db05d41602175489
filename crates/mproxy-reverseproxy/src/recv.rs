//! Receiving from a UDP socket: one drain per wake-up, counted
//!
//! Every receive loop of the crate (UDP inputs, and every output's socket
//! on the group) goes through [`drain_udp`], so they count bytes, kernel
//! drops and truncated datagrams alike. It is kept in this one module so
//! it can be swapped for the shared drain of `mproxy_common::net`.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use mproxy_common::cli::Shutdown;
use mproxy_common::net::{kernel_drops, RecvBatch, DEFAULT_RCVBUF, RECV_BUF_LEN};
use mproxy_common::stats::LogLimiter;
use mproxy_common::SocketOptions;

use crate::os;
use crate::stats::RecvStats;

/// Receive buffer the proxy's receive sockets (UDP inputs, every output's
/// socket on the group) ask for when `--rcvbuf` is not given
///
/// An unpaced sender outruns a receive thread that must also send on what
/// it receives, and on a busy machine that thread may wait for a CPU for
/// tens of milliseconds: 8 MiB holds only about 3,600 datagrams of 1,472
/// bytes (the kernel charges ~2.3 KB each), so a burst overflows it where
/// 64 MiB does not (measured with the fan-out rows of `bench/run.sh`, see
/// docs/PERFORMANCE.md). It costs memory only while datagrams wait.
pub(crate) const RECV_RCVBUF: usize = 64 << 20;

/// `opts` for a receive socket: without an explicit `--rcvbuf`, ask for
/// [`RECV_RCVBUF`], or as much of it as the kernel grants without cutting
/// it down (forced with CAP_NET_ADMIN, else up to `net.core.rmem_max`), so
/// nothing warns about a request the user never made
pub(crate) fn receive_options(opts: &SocketOptions) -> SocketOptions {
    let rcvbuf = opts.rcvbuf.or_else(|| {
        let ceiling = os::rcvbuf_ceiling()?;
        let want = RECV_RCVBUF.min(ceiling);
        (want > DEFAULT_RCVBUF).then_some(want)
    });
    SocketOptions {
        rcvbuf,
        ..opts.clone()
    }
}

/// Take the socket's own drop counter (SO_MEMINFO) into `stats`: drops
/// after the last datagram received show in no control message
pub(crate) fn settle(sock: &UdpSocket, stats: &RecvStats) {
    if let Some(drops) = kernel_drops(sock) {
        stats.kernel_drops.max(u64::from(drops));
    }
}

/// Datagrams received per wake-up before other work gets a turn
pub(crate) const BUDGET: usize = 256;
/// Datagrams received per system call (recvmmsg)
pub(crate) const RECV_BATCH: usize = 32;

/// A receive batch for [`drain_udp`]: [`RECV_BATCH`] slots of the largest
/// datagram
pub(crate) fn recv_batch() -> RecvBatch {
    RecvBatch::new(RECV_BATCH, RECV_BUF_LEN)
}

/// Logs of one receive socket, each rate-limited on its own
#[derive(Debug, Default)]
pub(crate) struct RecvLogs {
    truncated: LogLimiter,
    kernel_drops: LogLimiter,
    errors: LogLimiter,
}

/// Receive up to [`BUDGET`] datagrams waiting on `sock`, counting
/// everything into `stats`; `f` gets the sender and each non-empty,
/// complete payload
///
/// Returns true if the budget ran out before the socket was empty (call
/// again without waiting). Truncated and empty datagrams are counted and
/// dropped; a receive error is counted, logged (rate-limited) and ends
/// this round, so a persistent error costs one attempt per wake-up.
pub(crate) fn drain_udp(
    sock: &UdpSocket,
    batch: &mut RecvBatch,
    stats: &RecvStats,
    logs: &RecvLogs,
    shutdown: &Shutdown,
    mut f: impl FnMut(SocketAddr, &[u8]),
) -> bool {
    let mut taken = 0;
    while taken < BUDGET {
        if shutdown.is_set() {
            return false;
        }
        let n = match batch.recv(sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                stats.errors.inc();
                if let Some(suppressed) = logs.errors.allow() {
                    tracing::warn!(suppressed, "receive failed: {e}");
                }
                return false;
            }
        };
        taken += n.max(1);
        for i in 0..n {
            let Some((data, meta)) = batch.get(i) else {
                continue;
            };
            stats.datagrams.inc();
            stats.bytes.add(meta.wire_len as u64);
            if let Some(drops) = meta.kernel_drops.map(u64::from) {
                if drops > stats.kernel_drops.get() {
                    stats.kernel_drops.max(drops);
                    if let Some(suppressed) = logs.kernel_drops.allow() {
                        tracing::warn!(
                            suppressed,
                            "the kernel dropped {drops} datagrams so far (receive queue full; \
                             a larger --rcvbuf may help)"
                        );
                    }
                }
            }
            if meta.truncated() {
                stats.truncated.inc();
                if let Some(suppressed) = logs.truncated.allow() {
                    tracing::warn!(
                        from = %meta.from,
                        suppressed,
                        "dropped a datagram of {} bytes: larger than the {}-byte receive buffer",
                        meta.wire_len,
                        meta.len
                    );
                }
                continue;
            }
            if meta.len == 0 {
                stats.empty.inc();
                continue;
            }
            f(meta.from, data);
        }
        if batch.messages() < RECV_BATCH {
            return false;
        }
    }
    true
}
