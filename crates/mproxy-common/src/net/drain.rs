//! The one receive drain every UDP receiver uses: read a socket in batches
//! up to a budget, count everything the same way, hand on whole datagrams
//!
//! # What is counted ([`RecvStats`])
//!
//! - `datagrams`: every datagram the socket delivered (a coalesced GRO
//!   buffer counts as the datagrams it holds), passed on or not;
//! - `bytes`: their UDP payload bytes as sent (`wire_len`: the size on the
//!   wire, truncated ones included at their full size), no headers;
//! - `truncated`: datagrams larger than the receive slot. They are
//!   dropped, never passed on cut short (a cut datagram is a corrupt
//!   record);
//! - `empty`: zero-length datagrams, counted and not passed on (they carry
//!   nothing);
//! - `kernel_drops`: datagrams the kernel dropped on this socket, from its
//!   drop counter (`sk_drops`), which the kernel reports two ways: with
//!   every datagram (SO_RXQ_OVFL, the value when it was queued) and on
//!   request (SO_MEMINFO, the value now). Both are the same cumulative
//!   32-bit counter; [`KernelDrops`] turns its wrapping deltas into a
//!   64-bit total, and [`Drain::sync_kernel_drops`] folds in SO_MEMINFO so
//!   a summary also counts drops after the last datagram. The kernel adds
//!   one per *buffer* it drops: on a socket with UDP GRO a coalesced
//!   buffer of many datagrams counts once (Linux `udp_drops_inc`, 6.18),
//!   which is why receivers whose only loss signal this counter is read
//!   without GRO (see [`super::bind_batch_receiver`]);
//! - `errors`: failed receive calls (other than "nothing queued");
//! - `batches`, `messages`: receive calls that returned something, and
//!   the kernel messages (datagrams or GRO buffers) they returned.
//!
//! # Budget
//!
//! One [`Drain::run`] reads at most its budget of datagrams (plus what the
//! last call brought), so one flooded socket cannot starve the others, the
//! timers or a shutdown request. It says whether the socket may hold more
//! ([`Drained::More`]): with edge-triggered readiness (mio) the caller
//! must then come back without waiting for a new event.

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};

use super::bind::kernel_drops;
use super::recv::RecvBatch;
use crate::stats::{Counter, LogLimiter};

/// Datagrams one [`Drain::run`] takes by default before it returns
/// [`Drained::More`]
pub const DRAIN_BUDGET: usize = 1024;

/// Live receive counters of one socket, shared between the thread that
/// receives and whoever prints them (see the module docs for what each
/// one counts)
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RecvStats {
    /// Datagrams received, passed on or not
    pub datagrams: Counter,
    /// Their payload bytes as sent (truncated ones at full size)
    pub bytes: Counter,
    /// Zero-length datagrams (not passed on)
    pub empty: Counter,
    /// Datagrams larger than the receive buffer (dropped, not passed on)
    pub truncated: Counter,
    /// Datagrams the kernel dropped on this socket (receive queue full)
    pub kernel_drops: Counter,
    /// Failed receive calls
    pub errors: Counter,
    /// Receive calls that returned data
    pub batches: Counter,
    /// Kernel messages those calls returned (a GRO buffer is one)
    pub messages: Counter,
}

impl RecvStats {
    /// The counters now, as plain numbers
    pub fn snapshot(&self) -> RecvSnapshot {
        RecvSnapshot {
            datagrams: self.datagrams.get(),
            bytes: self.bytes.get(),
            empty: self.empty.get(),
            truncated: self.truncated.get(),
            kernel_drops: self.kernel_drops.get(),
            errors: self.errors.get(),
            batches: self.batches.get(),
            messages: self.messages.get(),
        }
    }
}

/// [`RecvStats`] at one moment
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecvSnapshot {
    /// Datagrams received, passed on or not
    pub datagrams: u64,
    /// Their payload bytes as sent (truncated ones at full size)
    pub bytes: u64,
    /// Zero-length datagrams (not passed on)
    pub empty: u64,
    /// Datagrams larger than the receive buffer (dropped)
    pub truncated: u64,
    /// Datagrams the kernel dropped on this socket
    pub kernel_drops: u64,
    /// Failed receive calls
    pub errors: u64,
    /// Receive calls that returned data
    pub batches: u64,
    /// Kernel messages those calls returned (a GRO buffer is one)
    pub messages: u64,
}

impl RecvSnapshot {
    /// Add another socket's counters
    pub fn add(&mut self, o: &Self) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.empty += o.empty;
        self.truncated += o.truncated;
        self.kernel_drops += o.kernel_drops;
        self.errors += o.errors;
        self.batches += o.batches;
        self.messages += o.messages;
    }
}

impl fmt::Display for RecvSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} datagrams, {} bytes, {} truncated, {} kernel drops, {} recv errors",
            self.datagrams, self.bytes, self.truncated, self.kernel_drops, self.errors
        )?;
        if self.empty > 0 {
            write!(f, ", {} empty", self.empty)?;
        }
        Ok(())
    }
}

/// A running total of a socket's kernel drops, from the kernel's
/// cumulative 32-bit counter (SO_RXQ_OVFL with each datagram, SO_MEMINFO
/// on request)
///
/// Each observation adds the wrapping difference to the last one seen, so
/// the total survives the counter passing 2^32. A value *behind* the last
/// one (a difference of 2^31 or more: an older reading, never 2 billion
/// drops between two datagrams) is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelDrops {
    last: u32,
}

impl KernelDrops {
    /// Drops since the last observation, given the counter's `cumulative`
    /// value now (a fresh socket's counter starts at 0)
    pub fn observe(&mut self, cumulative: u32) -> u64 {
        let delta = cumulative.wrapping_sub(self.last);
        if delta == 0 || delta > u32::MAX / 2 {
            return 0;
        }
        self.last = cumulative;
        u64::from(delta)
    }
}

/// How a [`Drain::run`] ended
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Drained {
    /// The socket ran dry: wait for readiness
    Empty,
    /// The budget ran out first: more may be queued, come back without
    /// waiting (edge-triggered readiness will not repeat itself)
    More,
    /// A receive failed (counted and logged); try again next turn
    Failed,
}

impl Drained {
    /// True if the socket may still hold datagrams
    pub fn more(self) -> bool {
        self == Self::More
    }
}

/// A datagram passed on by [`Drain::run`]: complete and not empty
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Its sender
    pub from: SocketAddr,
    /// Its payload, exactly as sent
    pub data: &'a [u8],
}

/// The datagrams of one receive call that are passed on, in order
#[derive(Debug)]
pub struct Datagrams<'a> {
    batch: &'a RecvBatch,
    next: usize,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        while self.next < self.batch.len() {
            let i = self.next;
            self.next += 1;
            let Some((data, meta)) = self.batch.get(i) else {
                continue;
            };
            if !meta.truncated() && !data.is_empty() {
                return Some(Datagram {
                    from: meta.from,
                    data,
                });
            }
        }
        None
    }
}

/// The receive side of one socket: its kernel-drop total, its budget and
/// its rate-limited logs
#[derive(Debug)]
pub struct Drain {
    label: String,
    budget: usize,
    gro: bool,
    drops: KernelDrops,
    log_truncated: LogLimiter,
    log_drops: LogLimiter,
    log_errors: LogLimiter,
}

impl Drain {
    /// A drain whose logs name the socket `label` (the address as given),
    /// with the [`DRAIN_BUDGET`]
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            budget: DRAIN_BUDGET,
            gro: false,
            drops: KernelDrops::default(),
            log_truncated: LogLimiter::default(),
            log_drops: LogLimiter::default(),
            log_errors: LogLimiter::default(),
        }
    }

    /// Take at most `budget` datagrams per [`Drain::run`] (at least one
    /// receive call is always made)
    #[must_use]
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// Say that the socket takes coalesced (GRO) buffers: the kernel then
    /// counts a dropped buffer as one drop however many datagrams it held,
    /// and the drop warnings say so
    #[must_use]
    pub fn with_gro(mut self, gro: bool) -> Self {
        self.gro = gro;
        self
    }

    /// The label the logs use
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Receive what `sock` holds, a batch per system call, until it runs
    /// dry or the budget is spent, counting into `stats`
    ///
    /// `deliver` gets each call's datagrams that pass (whole and not
    /// empty; see the module docs), in order, borrowed from `batch`.
    pub fn run(
        &mut self,
        sock: &UdpSocket,
        batch: &mut RecvBatch,
        stats: &RecvStats,
        mut deliver: impl FnMut(Datagrams<'_>),
    ) -> Drained {
        let mut taken = 0;
        while taken < self.budget {
            let n = match batch.recv(sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(e) => {
                    stats.errors.inc();
                    if let Some(suppressed) = self.log_errors.allow() {
                        tracing::warn!(listen = %self.label, suppressed, "receive failed: {e}");
                    }
                    return Drained::Failed;
                }
            };
            taken += n.max(1);
            self.count(batch, stats);
            deliver(Datagrams { batch, next: 0 });
            if batch.messages() < batch.capacity() {
                return Drained::Empty;
            }
        }
        Drained::More
    }

    /// Count the datagrams of the last receive into `stats`
    fn count(&mut self, batch: &RecvBatch, stats: &RecvStats) {
        let (mut bytes, mut truncated, mut empty, mut drops) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..batch.len() {
            let Some((_, meta)) = batch.get(i) else {
                continue;
            };
            bytes += meta.wire_len as u64;
            if meta.truncated() {
                truncated += 1;
                if let Some(suppressed) = self.log_truncated.allow() {
                    tracing::warn!(
                        listen = %self.label, from = %meta.from, suppressed,
                        "dropped a datagram of {} bytes: it did not fit the receive buffer",
                        meta.wire_len
                    );
                }
            } else if meta.len == 0 {
                empty += 1;
            }
            if let Some(d) = meta.kernel_drops {
                drops += self.drops.observe(d);
            }
        }
        stats.datagrams.add(batch.len() as u64);
        stats.bytes.add(bytes);
        stats.truncated.add(truncated);
        stats.empty.add(empty);
        stats.batches.inc();
        stats.messages.add(batch.messages() as u64);
        self.add_drops(drops, stats);
    }

    fn add_drops(&mut self, drops: u64, stats: &RecvStats) {
        if drops == 0 {
            return;
        }
        stats.kernel_drops.add(drops);
        if let Some(suppressed) = self.log_drops.allow() {
            let (what, each) = if self.gro {
                ("coalesced buffers", "; GRO: each one or more datagrams")
            } else {
                ("datagrams", "")
            };
            tracing::warn!(
                listen = %self.label, suppressed,
                "kernel dropped {drops} {what} (receive queue full; {} so far{each}); \
                 a larger --rcvbuf may help",
                stats.kernel_drops.get()
            );
        }
    }

    /// Bring `stats.kernel_drops` up to date from the socket's counter now
    /// (SO_MEMINFO): drops after the last datagram that arrived, which no
    /// SO_RXQ_OVFL message reported yet. Call before a summary.
    pub fn sync_kernel_drops(&mut self, sock: &UdpSocket, stats: &RecvStats) {
        if let Some(d) = kernel_drops(sock) {
            let delta = self.drops.observe(d);
            self.add_drops(delta, stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kernel_drops_wrap_into_a_running_total() {
        let mut k = KernelDrops::default();
        assert_eq!(k.observe(0), 0);
        assert_eq!(k.observe(5), 5);
        assert_eq!(k.observe(5), 0, "the same reading twice");
        assert_eq!(k.observe(3), 0, "an older reading");
        assert_eq!(
            k.observe(u32::MAX - 1),
            0,
            "behind by more than half: older"
        );
        let mut k = KernelDrops { last: u32::MAX - 2 };
        assert_eq!(k.observe(4), 7, "past 2^32");
        assert_eq!(k.observe(10), 6);
    }

    #[test]
    fn test_snapshot_display_and_sum() {
        let s = RecvStats::default();
        s.datagrams.add(3);
        s.bytes.add(30);
        let mut a = s.snapshot();
        assert_eq!(
            a.to_string(),
            "3 datagrams, 30 bytes, 0 truncated, 0 kernel drops, 0 recv errors"
        );
        a.add(&RecvSnapshot {
            empty: 2,
            ..RecvSnapshot::default()
        });
        assert_eq!(a.datagrams, 3);
        assert!(a.to_string().ends_with(", 0 recv errors, 2 empty"));
    }

    use crate::net::{bind_receiver, SocketOptions};

    /// A receiver on 127.0.0.1:`port` (no GRO) and a socket sending to it
    fn pair(port: u16, opts: &SocketOptions) -> (UdpSocket, UdpSocket) {
        let rx = bind_receiver(SocketAddr::from(([127, 0, 0, 1], port)), opts).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens sockets")]
    fn test_truncated_and_empty_are_counted_not_passed_on() {
        mproxy_testsupport::in_netns(|_| {
            let (rx, tx) = pair(7411, &SocketOptions::default());
            for size in [50usize, 0, 150, 100] {
                tx.send(&vec![7u8; size]).unwrap();
            }
            let stats = RecvStats::default();
            let mut batch = RecvBatch::new(4, 100);
            let mut drain = Drain::new("test");
            let mut got = Vec::new();
            let mut rounds = 0;
            while got.len() < 2 && rounds < 100 {
                rounds += 1;
                let _ = drain.run(&rx, &mut batch, &stats, |ds| {
                    got.extend(ds.map(|d| d.data.len()));
                });
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(got, [50, 100]);
            let s = stats.snapshot();
            assert_eq!((s.datagrams, s.bytes, s.truncated, s.empty), (4, 300, 1, 1));
            assert_eq!((s.kernel_drops, s.errors), (0, 0));
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens sockets")]
    fn test_budget_leaves_the_rest_for_the_next_turn() {
        mproxy_testsupport::in_netns(|_| {
            let (rx, tx) = pair(7412, &SocketOptions::default());
            for i in 0..5u8 {
                tx.send(&[i]).unwrap();
            }
            let stats = RecvStats::default();
            let mut batch = RecvBatch::new(1, 100);
            let mut drain = Drain::new("test").with_budget(2);
            let mut got = Vec::new();
            let first = drain.run(&rx, &mut batch, &stats, |ds| {
                got.extend(ds.map(|d| d.data[0]))
            });
            assert_eq!(first, Drained::More);
            assert_eq!(got, [0, 1]);
            let mut turns = 1;
            while got.len() < 5 && turns < 10 {
                turns += 1;
                let _ = drain.run(&rx, &mut batch, &stats, |ds| {
                    got.extend(ds.map(|d| d.data[0]))
                });
            }
            assert_eq!(got, [0, 1, 2, 3, 4]);
            assert_eq!(turns, 3, "two per turn");
            assert_eq!(drain.run(&rx, &mut batch, &stats, |_| {}), Drained::Empty);
        });
    }

    /// Without GRO the kernel counts each datagram it drops: what arrived
    /// plus what it reports dropped is exactly what was sent
    #[test]
    #[cfg_attr(miri, ignore = "opens sockets")]
    fn test_kernel_drops_add_up_to_what_was_sent() {
        mproxy_testsupport::in_netns(|_| {
            let opts = SocketOptions {
                rcvbuf: Some(4096),
                ..SocketOptions::default()
            };
            let (rx, tx) = pair(7413, &opts);
            let stats = RecvStats::default();
            let mut batch = RecvBatch::new(8, 2048);
            let mut drain = Drain::new("test");
            let mut delivered = 0u64;
            let mut sent = 0u64;
            // two overflows: the second one's drops are reported with the
            // datagrams that follow it, the last ones only by SO_MEMINFO
            for round in 0..3 {
                for _ in 0..200 {
                    tx.send(&[1u8; 1000]).unwrap();
                    sent += 1;
                }
                if round < 2 {
                    while drain.run(&rx, &mut batch, &stats, |ds| delivered += ds.count() as u64)
                        != Drained::Empty
                    {}
                }
            }
            let before = stats.snapshot().kernel_drops;
            drain.sync_kernel_drops(&rx, &stats);
            while drain.run(&rx, &mut batch, &stats, |ds| delivered += ds.count() as u64)
                != Drained::Empty
            {}
            drain.sync_kernel_drops(&rx, &stats);
            let s = stats.snapshot();
            assert!(s.kernel_drops > before, "SO_MEMINFO adds the last drops");
            assert!(s.kernel_drops > 0 && delivered > 0);
            assert_eq!(s.datagrams, delivered);
            assert_eq!(delivered + s.kernel_drops, sent, "{s}");
        });
    }
}
