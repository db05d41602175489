//! UDP fan-out: every datagram to every destination, counted per
//! destination

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{
    bind_sender, gso_run, gso_supported, recv_nonblocking, send_segments, NetError, SocketOptions,
};
use crate::addr::Endpoint;
use crate::stats::LogLimiter;

/// Counters of one [`Fanout`] destination
#[derive(Debug, Default)]
pub struct DestStats {
    /// Datagrams handed to the kernel
    pub datagrams: AtomicU64,
    /// Payload bytes handed to the kernel
    pub bytes: AtomicU64,
    /// Sends that failed (unreachable, refused, no buffer space, ...)
    pub errors: AtomicU64,
}

struct Dest {
    spec: String,
    addr: SocketAddr,
    stats: DestStats,
    log: LogLimiter,
    /// Largest segment sent as part of a UDP GSO message (0: no GSO):
    /// lowered below a size the route refused (over its MTU), 0 when it
    /// cannot segment at all
    gso_max: AtomicUsize,
}

impl Dest {
    /// `n` datagrams of `bytes` in all went out
    fn sent(&self, n: usize, bytes: usize) {
        self.stats.datagrams.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A datagram of `len` bytes could not be sent: counted, logged
    /// (rate-limited)
    fn failed(&self, len: usize, e: &io::Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(dest = %self.spec, suppressed, "send of {len} bytes failed: {e}");
        }
    }
}

/// Sends every datagram to every destination, counting per destination
///
/// One sending socket per address family is shared by all destinations of
/// that family. Send errors are counted and logged (rate-limited), never
/// fatal: a dead downstream must not stop the others. Safe to share between
/// threads.
pub struct Fanout {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    dests: Vec<Dest>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field(
                "dests",
                &self.dests.iter().map(|d| d.addr).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Fanout {
    /// Resolve `endpoints` and open the sending sockets
    ///
    /// # Errors
    /// A destination that does not resolve, or socket setup failure.
    pub fn new(endpoints: &[Endpoint], opts: &SocketOptions) -> Result<Self, NetError> {
        let mut dests = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let addr = ep.resolve()?;
            dests.push(Dest {
                spec: ep.to_string(),
                addr,
                stats: DestStats::default(),
                log: LogLimiter::default(),
                gso_max: AtomicUsize::new(0),
            });
        }
        let v4 = if dests.iter().any(|d| d.addr.is_ipv4()) {
            Some(bind_sender(false, opts).map_err(|e| NetError::sender("IPv4", e))?)
        } else {
            None
        };
        let v6 = if dests.iter().any(|d| d.addr.is_ipv6()) {
            Some(bind_sender(true, opts).map_err(|e| NetError::sender("IPv6", e))?)
        } else {
            None
        };
        let gso4 = opts.offload && v4.as_ref().is_some_and(gso_supported);
        let gso6 = opts.offload && v6.as_ref().is_some_and(gso_supported);
        for d in &dests {
            let on = if d.addr.is_ipv4() { gso4 } else { gso6 };
            d.gso_max
                .store(if on { usize::MAX } else { 0 }, Ordering::Relaxed);
        }
        Ok(Self { v4, v6, dests })
    }

    /// Number of destinations
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    /// True if there are no destinations
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// The sending socket of `d`'s address family
    fn socket_for(&self, d: &Dest) -> Option<&UdpSocket> {
        if d.addr.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// Send `payload` to every destination; returns how many sends succeeded
    pub fn send(&self, payload: &[u8]) -> usize {
        let mut ok = 0;
        for d in &self.dests {
            let Some(sock) = self.socket_for(d) else {
                continue;
            };
            match send_to_retrying(sock, payload, d.addr) {
                Ok(_) => {
                    ok += 1;
                    d.sent(1, payload.len());
                }
                Err(e) => d.failed(payload.len(), &e),
            }
        }
        ok
    }

    /// Send every datagram of `frames` to every destination, batching them
    /// into as few system calls as the kernel accepts (sendmmsg, and UDP
    /// GSO for runs of equal-sized datagrams where the route takes it);
    /// returns the number of successful datagram sends
    pub fn send_many(&self, frames: &[&[u8]]) -> usize {
        let mut ok = 0;
        for d in &self.dests {
            let Some(sock) = self.socket_for(d) else {
                continue;
            };
            let mut done = 0;
            let mut retries = 0;
            while done < frames.len() {
                let gso_max = d.gso_max.load(Ordering::Relaxed);
                match send_segments(sock, &frames[done..], d.addr, gso_max) {
                    Ok(k) => {
                        let bytes: usize = frames[done..done + k].iter().map(|f| f.len()).sum();
                        d.sent(k, bytes);
                        ok += k;
                        done += k.max(1);
                    }
                    Err(e) if retries < TRANSIENT_RETRIES && transient(&e) => {
                        retries += 1;
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    Err(e) if gso_run(&frames[done..], gso_max) > 1 && gso_refused(&e) => {
                        // the route cannot take this message: segments over
                        // its MTU (EINVAL, EMSGSIZE) are sent plainly from
                        // now on, smaller ones still as GSO; no checksum
                        // offload or GSO at all (EIO, ...): plain only
                        let seg = frames[done].len();
                        let over_mtu =
                            matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE));
                        let limit = if over_mtu { seg - 1 } else { 0 };
                        d.gso_max.store(limit, Ordering::Relaxed);
                        if limit == 0 {
                            tracing::info!(
                                dest = %d.spec,
                                "UDP GSO refused ({e}); sending datagrams one by one"
                            );
                        } else {
                            tracing::info!(
                                dest = %d.spec,
                                "UDP GSO refused for {seg}-byte datagrams ({e}); \
                                 those go one by one, smaller ones still batched"
                            );
                        }
                    }
                    Err(e) => {
                        // the first datagram of the rest failed: count it, go on
                        d.failed(frames[done].len(), &e);
                        done += 1;
                    }
                }
            }
        }
        ok
    }

    /// Read one datagram that arrived on a sending socket (receivers'
    /// NACKs and feedback), without blocking; its length and source
    pub fn recv_control(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        for sock in self.sockets() {
            if let Ok(got) = recv_nonblocking(sock, buf) {
                return Some(got);
            }
        }
        None
    }

    /// The sending sockets (one per address family in use), for a caller
    /// that waits for receivers' control frames with a poller; read them
    /// with [`Fanout::recv_control`]
    pub fn sockets(&self) -> impl Iterator<Item = &UdpSocket> {
        [self.v4.as_ref(), self.v6.as_ref()].into_iter().flatten()
    }

    /// Per destination: (spec as given, resolved address, counters)
    pub fn stats(&self) -> impl Iterator<Item = (&str, SocketAddr, &DestStats)> {
        self.dests
            .iter()
            .map(|d| (d.spec.as_str(), d.addr, &d.stats))
    }

    /// Sum of send errors over all destinations
    pub fn total_errors(&self) -> u64 {
        self.dests
            .iter()
            .map(|d| d.stats.errors.load(Ordering::Relaxed))
            .sum()
    }

    /// One line per destination for the final summary
    pub fn summary(&self) -> String {
        self.dests
            .iter()
            .map(|d| {
                format!(
                    "{}: {} datagrams, {} bytes, {} errors",
                    d.spec,
                    d.stats.datagrams.load(Ordering::Relaxed),
                    d.stats.bytes.load(Ordering::Relaxed),
                    d.stats.errors.load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How often a send waits out a full queue (200 µs each) before the
/// datagram counts as failed
const TRANSIENT_RETRIES: u32 = 50;

/// A full device or socket queue (ENOBUFS, EAGAIN): worth a short wait
fn transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Errors with which a route turns down a UDP GSO message it cannot segment
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::EMSGSIZE | libc::ENOPROTOOPT)
    )
}

/// `send_to`, retrying on EINTR and waiting out transient ENOBUFS/EAGAIN
/// (a full device queue) a few times before giving up
fn send_to_retrying(sock: &UdpSocket, payload: &[u8], addr: SocketAddr) -> io::Result<usize> {
    let mut tries = 0;
    loop {
        match sock.send_to(payload, addr) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if tries < TRANSIENT_RETRIES && transient(&e) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Datagrams queued to go out together (one sendmmsg per destination, see
/// [`Fanout::send_many`]), packed into one buffer that is reused
#[derive(Debug, Default)]
pub struct DatagramBatch {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl DatagramBatch {
    /// Queue a copy of `d`
    pub fn push(&mut self, d: &[u8]) {
        self.buf.extend_from_slice(d);
        self.ends.push(self.buf.len());
    }

    /// Datagrams queued
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes queued (all datagrams together)
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is queued
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The queued datagrams, in order
    pub fn frames(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let f = &self.buf[start..end];
                start = end;
                f
            })
            .collect()
    }

    /// Forget what is queued (keeping the buffers)
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }
}

#[cfg(test)]
mod batch_tests {
    use super::DatagramBatch;

    #[test]
    fn test_batch_keeps_datagrams_whole_and_in_order() {
        let mut b = DatagramBatch::default();
        assert!(b.is_empty());
        b.push(b"ab");
        b.push(b"");
        b.push(b"cde");
        assert_eq!(b.len(), 3);
        assert_eq!(b.frames(), [&b"ab"[..], b"", b"cde"]);
        b.clear();
        assert!(b.is_empty() && b.frames().is_empty());
    }
}
