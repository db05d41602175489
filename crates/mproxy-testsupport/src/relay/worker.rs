//! The relay thread: receive, decide, hold, forward, relay replies

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::record::Kind;
use super::{lock, Impairment, RelayRecord, DROPS_EVERY, POLL};
use crate::data::SplitMix64;

/// A datagram waiting to be forwarded.
pub(super) struct Held {
    /// Arrival count after which it goes.
    release_after: u64,
    /// Time at which it goes anyway.
    deadline: Instant,
    data: Vec<u8>,
    kind: Kind,
    copies: u32,
}

/// The relay thread's state.
pub(super) struct Worker {
    pub(super) sock: UdpSocket,
    pub(super) out: UdpSocket,
    pub(super) forward: SocketAddr,
    pub(super) impairment: Impairment,
    pub(super) max_hold: Duration,
    pub(super) held: VecDeque<Held>,
    pub(super) arrivals: u64,
    pub(super) shared: Arc<Mutex<RelayRecord>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) sock_inode: Option<u64>,
    /// Where replies go: the last address that sent through the relay
    pub(super) sender: Option<SocketAddr>,
    pub(super) return_path: bool,
    pub(super) return_drop: f64,
    pub(super) return_rng: SplitMix64,
}

impl Worker {
    pub(super) fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        let mut next_drops = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    // The sender is who sends data: on a group the relay
                    // also overhears other receivers' NACKs.
                    if !matches!(Kind::of(&buf[..n]), Kind::Other) {
                        self.sender = Some(from);
                    }
                    self.arrive(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    lock(&self.shared).recv_errors += 1;
                    std::thread::sleep(POLL);
                }
            }
            if self.return_path {
                self.relay_replies(&mut buf);
            }
            let now = Instant::now();
            self.release(|h| h.deadline <= now);
            if now >= next_drops {
                self.update_kernel_drops();
                next_drops = now + DROPS_EVERY;
            }
        }
        // Whatever is still held goes out now, so nothing vanishes unrecorded.
        self.release(|_| true);
        self.update_kernel_drops();
    }

    fn arrive(&mut self, data: &[u8]) {
        let decision = self.impairment.decide();
        let kind = Kind::of(data);
        lock(&self.shared).on_received(kind, data, decision);
        let index = self.arrivals;
        self.arrivals += 1;
        if !decision.dropped() {
            if decision.hold == 0 {
                self.send(kind, data, decision.copies);
            } else {
                self.held.push_back(Held {
                    release_after: index + decision.hold as u64,
                    deadline: Instant::now() + self.max_hold,
                    data: data.to_vec(),
                    kind,
                    copies: decision.copies,
                });
            }
        }
        let arrived = index;
        self.release(|h| h.release_after <= arrived);
    }

    /// Forward the held datagrams `due` selects, in arrival order.
    fn release(&mut self, due: impl Fn(&Held) -> bool) {
        if !self.held.iter().any(&due) {
            return;
        }
        let (go, stay): (VecDeque<Held>, VecDeque<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(due);
        self.held = stay;
        for h in go {
            self.send(h.kind, &h.data, h.copies);
        }
    }

    fn send(&mut self, kind: Kind, data: &[u8], copies: u32) {
        for _ in 0..copies {
            let sent = self.out.send_to(data, self.forward);
            let mut rec = lock(&self.shared);
            match sent {
                Ok(_) => rec.on_forwarded(kind),
                Err(_) => rec.send_errors += 1,
            }
        }
    }

    /// Replies that came back to the outgoing socket go to the sender
    fn relay_replies(&mut self, buf: &mut [u8]) {
        let Some(sender) = self.sender else {
            return;
        };
        while let Ok((n, _)) = self.out.recv_from(buf) {
            let p = self.return_rng.next_u64() as f64 / u64::MAX as f64;
            let mut rec = lock(&self.shared);
            if p < self.return_drop {
                rec.returns_dropped += 1;
            } else if self.sock.send_to(&buf[..n], sender).is_ok() {
                rec.returned += 1;
            }
        }
    }

    fn update_kernel_drops(&self) {
        if let Some(d) = self.sock_inode.and_then(udp_socket_drops) {
            lock(&self.shared).kernel_drops = d;
        }
    }
}

/// The `drops` count of the UDP socket with inode `inode` in the calling
/// thread's network namespace (`/proc/thread-self/net/udp` and `udp6`).
fn udp_socket_drops(inode: u64) -> Option<u64> {
    ["udp", "udp6"].iter().find_map(|f| {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ino: u64 = fields.get(9)?.parse().ok()?;
            if ino != inode {
                return None;
            }
            fields.get(12)?.parse().ok()
        })
    })
}
