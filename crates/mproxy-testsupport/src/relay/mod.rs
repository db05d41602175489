//! A seeded, lossy UDP relay that records what it let through.
//!
//! [`LossyRelay`] sits between a sender and a receiver (both inside the
//! test's network namespace) and forwards every datagram it receives on its
//! listening address to one forward address, after a per-datagram decision
//! drawn from a seeded generator ([`Impairment`]): drop it, send it twice,
//! or hold it back for a while (reordering it behind later datagrams).
//!
//! The decisions depend only on the seed and on the *arrival order*: the
//! i-th datagram received always gets the i-th decision, whatever it
//! contains and whatever the timing. Every datagram is treated alike:
//! mpx DATA frames, mpx heartbeats (including the closing FIN heartbeats),
//! other mpx frames, invalid frames and raw (non-mpx) payloads all go
//! through the same drop / duplicate / hold logic. The record notes, per
//! stream, whether any FIN information (a FIN DATA frame or a FIN
//! heartbeat) got through, since a receiver that never learns the end of a
//! stream counts its losses differently.
//!
//! While it runs, the relay keeps a [`RelayRecord`]: overall counters, and
//! for every mpx stream (session, stream id) every DATA frame it saw, by
//! sequence number, with its payload and how many copies were forwarded.
//! From that, [`StreamRecord`] derives what an ideal mpx receiver delivers
//! and counts: the bytes ([`StreamRecord::expected_bytes`]), the lost frames
//! ([`StreamRecord::lost`]), the duplicate copies
//! ([`StreamRecord::duplicates`]) and the gaps ([`StreamRecord::gaps`]).
//!
//! Sequence numbers are taken as they are on the wire (32 bits, no
//! wrap-around handling): test streams stay far below 2^32 frames.

mod impairment;
mod record;
mod worker;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use impairment::{Decision, Impairment, RelayConfig};
pub use record::{FrameRecord, RelayRecord, StreamRecord};

use crate::data::SplitMix64;
use worker::Worker;

/// How long the relay thread waits for a datagram before it checks held
/// datagrams' deadlines and the stop flag (so `max_hold` is honoured to
/// within about this much when traffic pauses).
const POLL: Duration = Duration::from_millis(2);
/// How long [`LossyRelay::stop`] (and drop) waits for the relay thread.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer requested for the listening socket (clamped by the
/// kernel to `net.core.rmem_max`).
const RCVBUF: libc::c_int = 8 << 20;
/// How often the relay thread refreshes [`RelayRecord::kernel_drops`].
const DROPS_EVERY: Duration = Duration::from_millis(100);

fn lock(m: &Mutex<RelayRecord>) -> MutexGuard<'_, RelayRecord> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A seeded lossy UDP relay running in a background thread; stopped by
/// [`LossyRelay::stop`] or when dropped.
///
/// Every received datagram gets the next decision of an [`Impairment`]
/// seeded with [`RelayConfig::seed`] (drop / duplicate / hold), so the
/// decisions depend on the seed and the arrival order only. All datagrams
/// are treated alike: mpx DATA frames, heartbeats (FIN heartbeats too),
/// other or invalid mpx frames and raw payloads. The [`RelayRecord`]
/// (see [`LossyRelay::record`]) keeps, per mpx stream, every DATA frame
/// seen with its payload and the copies forwarded, from which
/// [`StreamRecord`] derives what an mpx receiver delivers and counts.
/// Datagrams the receiver sends back to the relay (mpx NACKs, feedback
/// reports) are relayed to the sender only with
/// [`RelayConfig::return_path`] (and dropped with
/// [`RelayConfig::return_drop`]); otherwise they are never read.
#[derive(Debug)]
pub struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<RelayRecord>>,
    thread: Option<JoinHandle<()>>,
}

impl LossyRelay {
    /// Binds `listen` (unicast, port 0 picks a free one; or a multicast
    /// group, joined on `lo`, so the relay is one more receiver of the
    /// group) and starts relaying what arrives there to `forward`
    /// (unicast) under `config`.
    ///
    /// Must be called from the thread running an [`in_netns`](crate::in_netns)
    /// closure: the relay thread is spawned from it and so stays in the
    /// test's private network namespace. Panics if called elsewhere, if a
    /// socket cannot be set up, or for a multicast `forward`.
    pub fn start(listen: SocketAddr, forward: SocketAddr, config: RelayConfig) -> Self {
        assert!(
            crate::netns::outer_netns_fd().is_some(),
            "LossyRelay::start must be called inside in_netns (on the thread running its closure)"
        );
        assert!(
            !forward.ip().is_multicast(),
            "LossyRelay forwards to unicast only ({listen} -> {forward})"
        );
        assert!(
            (0.0..=1.0).contains(&config.drop)
                && (0.0..=1.0).contains(&config.duplicate)
                && (0.0..=1.0).contains(&config.reorder),
            "relay probabilities must be within 0..=1: {config:?}"
        );
        let sock = if listen.ip().is_multicast() {
            let opts = mproxy_common::SocketOptions {
                iface: mproxy_common::Interface::Name("lo".into()),
                ..mproxy_common::SocketOptions::default()
            };
            let sock = mproxy_common::net::bind_receiver(listen, &opts)
                .unwrap_or_else(|e| panic!("relay: cannot join {listen}: {e}"));
            sock.set_nonblocking(false)
                .unwrap_or_else(|e| panic!("relay: blocking mode: {e}"));
            sock
        } else {
            UdpSocket::bind(listen).unwrap_or_else(|e| panic!("relay: cannot bind {listen}: {e}"))
        };
        // Best effort: the kernel clamps it to net.core.rmem_max.
        let _ = crate::sock::setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
        sock.set_read_timeout(Some(POLL))
            .unwrap_or_else(|e| panic!("relay: SO_RCVTIMEO: {e}"));
        let addr = sock
            .local_addr()
            .unwrap_or_else(|e| panic!("relay: local_addr: {e}"));
        let out_bind: SocketAddr = if forward.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let out = UdpSocket::bind(out_bind)
            .unwrap_or_else(|e| panic!("relay: cannot bind {out_bind}: {e}"));
        out.set_nonblocking(true)
            .unwrap_or_else(|e| panic!("relay: non-blocking reply socket: {e}"));
        let sock_inode = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd()))
            .ok()
            .map(|m| m.ino());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(RelayRecord::default()));
        let worker = Worker {
            sock,
            out,
            forward,
            impairment: Impairment::new(&config),
            max_hold: config.max_hold,
            held: VecDeque::new(),
            arrivals: 0,
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
            sock_inode,
            sender: None,
            return_path: config.return_path,
            return_drop: config.return_drop,
            return_rng: SplitMix64::new(config.seed ^ 0x5eed_5eed),
        };
        let thread = std::thread::Builder::new()
            .name(format!("lossy-relay-{}", addr.port()))
            .spawn(move || worker.run())
            .unwrap_or_else(|e| panic!("relay: cannot spawn thread: {e}"));
        Self {
            addr,
            stop,
            shared,
            thread: Some(thread),
        }
    }

    /// The address the relay listens on (send here).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the record so far.
    pub fn record(&self) -> RelayRecord {
        lock(&self.shared).clone()
    }

    /// Stops the relay (held datagrams are forwarded first) and returns the
    /// final record; panics if the thread does not end within 5 s.
    pub fn stop(mut self) -> RelayRecord {
        if let Err(e) = self.shutdown() {
            panic!("{e}");
        }
        self.record()
    }

    /// Signals the thread and waits (bounded) for it to end.
    fn shutdown(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "relay thread on {} did not stop within {STOP_TIMEOUT:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        thread
            .join()
            .map_err(|_| format!("relay thread on {} panicked", self.addr))
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            if std::thread::panicking() {
                eprintln!("mproxy-testsupport: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
