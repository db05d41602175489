//! Counters of every component, readable while the proxy runs
//!
//! Every datagram that is not delivered lands in a counter here: empty or
//! truncated datagrams, kernel receive-queue overflows, send and write
//! errors, and datagrams a slow client had no room for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mproxy_common::mpx::{ReceiverStats, StreamStats};
use mproxy_common::stats::{human_bytes, Counter};

/// Counters of a UDP receive socket: an input's, or an output's on the group
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RecvStats {
    /// Datagrams received (all of them, including the ones not passed on)
    pub datagrams: Counter,
    /// Payload bytes received
    pub bytes: Counter,
    /// Zero-length datagrams (never passed on: they carry nothing)
    pub empty: Counter,
    /// Datagrams larger than the receive buffer (dropped, not passed on cut)
    pub truncated: Counter,
    /// Datagrams the kernel dropped because the receive queue was full
    pub kernel_drops: Counter,
    /// Failed receives
    pub errors: Counter,
}

impl RecvStats {
    fn summary(&self) -> String {
        format!(
            "{} empty, {} truncated, {} kernel drops, {} receive errors",
            self.empty.get(),
            self.truncated.get(),
            self.kernel_drops.get(),
            self.errors.get()
        )
    }
}

/// Counters of one `--udp-listen-addr`
#[derive(Debug)]
#[non_exhaustive]
pub struct UdpInputStats {
    /// The address as given
    pub spec: String,
    /// The address actually bound
    pub local: SocketAddr,
    /// What the socket received
    pub recv: RecvStats,
    /// Datagrams sent on to the group
    pub datagrams: Counter,
    /// Payload bytes sent on to the group
    pub bytes: Counter,
    /// Failed sends to the group
    pub send_errors: Counter,
    /// With `--mpx`: the stream raw datagrams are framed into
    pub stream: Option<u32>,
    /// With `--mpx`: raw datagrams framed into the stream
    pub framed: Counter,
    /// With `--mpx`: raw datagrams too large for one frame, split over several
    pub split: Counter,
    /// With `--mpx`: datagrams that already were mpx frames (valid or not),
    /// forwarded untouched
    pub passed: Counter,
    /// With `--mpx`: heartbeats of the stream (counted in `datagrams` too)
    pub heartbeats: Counter,
}

impl UdpInputStats {
    pub(crate) fn new(spec: String, local: SocketAddr, stream: Option<u32>) -> Self {
        Self {
            spec,
            local,
            recv: RecvStats::default(),
            datagrams: Counter::default(),
            bytes: Counter::default(),
            send_errors: Counter::default(),
            stream,
            framed: Counter::default(),
            split: Counter::default(),
            passed: Counter::default(),
            heartbeats: Counter::default(),
        }
    }

    fn summary(&self) -> String {
        let mpx = self.stream.map_or_else(String::new, |id| {
            format!(
                "; mpx stream {id}: {} raw datagrams framed ({} split), {} frames passed \
                 through, {} heartbeats",
                self.framed.get(),
                self.split.get(),
                self.passed.get(),
                self.heartbeats.get()
            )
        });
        format!(
            "udp input {}: {} datagrams received, {} datagrams ({}) sent to the group, \
             {} send errors{mpx}; {}",
            self.spec,
            self.recv.datagrams.get(),
            self.datagrams.get(),
            human_bytes(self.bytes.get()),
            self.send_errors.get(),
            self.recv.summary()
        )
    }
}

/// Counters of one `--tcp-listen-addr`
#[derive(Debug)]
#[non_exhaustive]
pub struct TcpInputStats {
    /// The address as given
    pub spec: String,
    /// The address actually bound
    pub local: SocketAddr,
    /// Connections accepted and read from
    pub accepted: Counter,
    /// Connections closed at once because of `--max-clients` (every
    /// connection had sent data)
    pub rejected: Counter,
    /// Connections closed to make room for a newcomer: TLS handshakes
    /// (`--max-handshakes`, `--max-clients`) and connections that never
    /// sent a byte (`--max-clients`)
    pub evicted: Counter,
    /// Connections that ended (EOF, reset or read error)
    pub closed: Counter,
    /// Bytes read from connections
    pub bytes_in: Counter,
    /// Datagrams sent to the group
    pub datagrams: Counter,
    /// Payload bytes sent to the group
    pub bytes: Counter,
    /// Lines split because they were longer than `--max-datagram` (`--framing lines`)
    pub split_lines: Counter,
    /// Failed sends to the group
    pub send_errors: Counter,
    /// Connections that ended with a read error (reset) instead of EOF
    pub read_errors: Counter,
    /// Failed accepts (out of descriptors, aborted handshakes)
    pub accept_errors: Counter,
    /// `tls://` listener: connections whose TLS handshake failed or timed
    /// out, or that sent an invalid TLS record later (closed)
    pub tls_failures: Counter,
    /// Connections are framed as mpx streams (`--mpx`)
    pub mpx: bool,
    /// With `--mpx`: heartbeats sent (counted in `datagrams` too)
    pub heartbeats: Counter,
}

impl TcpInputStats {
    pub(crate) fn new(spec: String, local: SocketAddr, mpx: bool) -> Self {
        Self {
            spec,
            local,
            accepted: Counter::default(),
            rejected: Counter::default(),
            evicted: Counter::default(),
            closed: Counter::default(),
            bytes_in: Counter::default(),
            datagrams: Counter::default(),
            bytes: Counter::default(),
            split_lines: Counter::default(),
            send_errors: Counter::default(),
            read_errors: Counter::default(),
            accept_errors: Counter::default(),
            tls_failures: Counter::default(),
            mpx,
            heartbeats: Counter::default(),
        }
    }

    fn summary(&self) -> String {
        let mpx = if self.mpx {
            format!(
                "; mpx: one stream per connection, {} heartbeats",
                self.heartbeats.get()
            )
        } else {
            String::new()
        };
        format!(
            "tcp input {}: {} connections ({} rejected), {} read, {} datagrams ({}) to the group; \
             {} split lines, {} read errors, {} send errors, {} accept errors, {} evicted, \
             {} TLS failures{mpx}",
            self.spec,
            self.accepted.get(),
            self.rejected.get(),
            human_bytes(self.bytes_in.get()),
            self.datagrams.get(),
            human_bytes(self.bytes.get()),
            self.split_lines.get(),
            self.read_errors.get(),
            self.send_errors.get(),
            self.accept_errors.get(),
            self.evicted.get(),
            self.tls_failures.get()
        )
    }
}

/// Counters of one client of a `--tcp-output-addr`
#[derive(Debug)]
#[non_exhaustive]
pub struct ClientStats {
    /// The client's address
    pub peer: SocketAddr,
    /// When it connected
    pub since: Instant,
    /// Datagrams written to it
    pub datagrams: Counter,
    /// Payload bytes written to it (for a TLS client: handed to its
    /// session, to be encrypted and written)
    pub bytes: Counter,
    /// Datagrams it missed: its queue was full, or they were still queued
    /// or half-written when the client went away, was disconnected
    /// (`--slow-client disconnect`) or the proxy stopped
    pub drops: Counter,
}

impl ClientStats {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            since: Instant::now(),
            datagrams: Counter::default(),
            bytes: Counter::default(),
            drops: Counter::default(),
        }
    }

    /// One line: datagrams, bytes and drops
    pub fn summary(&self) -> String {
        format!(
            "client {}: {} datagrams ({}) written, {} dropped",
            self.peer,
            self.datagrams.get(),
            human_bytes(self.bytes.get()),
            self.drops.get()
        )
    }
}

/// Counters folded in from clients that went away
#[derive(Debug, Default)]
struct ClientTotals {
    datagrams: Counter,
    bytes: Counter,
    drops: Counter,
}

/// Counters of one `--tcp-output-addr`
#[derive(Debug)]
#[non_exhaustive]
pub struct TcpOutputStats {
    /// The address as given
    pub spec: String,
    /// The address actually bound
    pub local: SocketAddr,
    /// What its socket on the group received
    pub recv: RecvStats,
    /// Clients accepted
    pub accepted: Counter,
    /// Clients closed at once because of `--max-clients` (every client was
    /// taking data)
    pub rejected: Counter,
    /// Clients closed to make room for a newcomer (`--max-clients`,
    /// `--max-handshakes`): the one that had made the least progress
    pub evicted: Counter,
    /// Clients closed because they took no data for `--stall-timeout`
    pub stalled: Counter,
    /// Failed accepts
    pub accept_errors: Counter,
    /// `tls://` output: clients whose TLS handshake failed or timed out
    pub tls_failures: Counter,
    /// Clients disconnected because their queue was full (`--slow-client
    /// disconnect`)
    pub slow_disconnects: Counter,
    /// Clients that went away (their counters are in the totals)
    pub departed: Counter,
    /// Reassembly of mpx streams
    pub mpx: MpxStats,
    past: ClientTotals,
    clients: Mutex<Vec<Arc<ClientStats>>>,
}

impl TcpOutputStats {
    pub(crate) fn new(spec: String, local: SocketAddr) -> Self {
        Self {
            spec,
            local,
            recv: RecvStats::default(),
            accepted: Counter::default(),
            rejected: Counter::default(),
            evicted: Counter::default(),
            stalled: Counter::default(),
            accept_errors: Counter::default(),
            tls_failures: Counter::default(),
            slow_disconnects: Counter::default(),
            departed: Counter::default(),
            mpx: MpxStats::default(),
            past: ClientTotals::default(),
            clients: Mutex::new(Vec::new()),
        }
    }

    /// The clients connected right now
    pub fn clients(&self) -> Vec<Arc<ClientStats>> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn add_client(&self, c: Arc<ClientStats>) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c);
    }

    /// Forget a departed client, folding its counters into the totals
    pub(crate) fn remove_client(&self, c: &Arc<ClientStats>) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|x| !Arc::ptr_eq(x, c));
        self.past.datagrams.add(c.datagrams.get());
        self.past.bytes.add(c.bytes.get());
        self.past.drops.add(c.drops.get());
        self.departed.inc();
    }

    fn total(&self, past: &Counter, live: impl Fn(&ClientStats) -> u64) -> u64 {
        past.get() + self.clients().iter().map(|c| live(c)).sum::<u64>()
    }

    /// Datagrams written, summed over all clients, past and present
    pub fn datagrams(&self) -> u64 {
        self.total(&self.past.datagrams, |c| c.datagrams.get())
    }

    /// Payload bytes written, summed over all clients, past and present
    pub fn bytes(&self) -> u64 {
        self.total(&self.past.bytes, |c| c.bytes.get())
    }

    /// Datagrams dropped, summed over all clients, past and present
    pub fn drops(&self) -> u64 {
        self.total(&self.past.drops, |c| c.drops.get())
    }

    fn summary(&self) -> String {
        format!(
            "tcp output {}: {} datagrams ({}) from the group, {} clients ({} rejected, \
             {} evicted, {} accept errors, {} TLS failures, {} disconnected as slow, \
             {} closed as stalled), {} datagrams ({}) written, {} dropped for slow or \
             departed clients; {}{}",
            self.spec,
            self.recv.datagrams.get(),
            human_bytes(self.recv.bytes.get()),
            self.accepted.get(),
            self.rejected.get(),
            self.evicted.get(),
            self.accept_errors.get(),
            self.tls_failures.get(),
            self.slow_disconnects.get(),
            self.stalled.get(),
            self.datagrams(),
            human_bytes(self.bytes()),
            self.drops(),
            self.recv.summary(),
            self.mpx.get().summary()
        )
    }
}

/// Counters of one `--udp-output-addr`
#[derive(Debug)]
#[non_exhaustive]
pub struct UdpOutputStats {
    /// The destination as given
    pub spec: String,
    /// The destination address
    pub dest: SocketAddr,
    /// What its socket on the group received
    pub recv: RecvStats,
    /// Datagrams forwarded
    pub datagrams: Counter,
    /// Payload bytes forwarded
    pub bytes: Counter,
    /// Failed sends to the destination
    pub send_errors: Counter,
    /// Reassembly of mpx streams (`--udp-output-strip`)
    pub mpx: MpxStats,
}

impl UdpOutputStats {
    pub(crate) fn new(spec: String, dest: SocketAddr) -> Self {
        Self {
            spec,
            dest,
            recv: RecvStats::default(),
            datagrams: Counter::default(),
            bytes: Counter::default(),
            send_errors: Counter::default(),
            mpx: MpxStats::default(),
        }
    }

    fn summary(&self) -> String {
        format!(
            "udp output {}: {} datagrams from the group, {} datagrams ({}) forwarded, \
             {} send errors; {}{}",
            self.spec,
            self.recv.datagrams.get(),
            self.datagrams.get(),
            human_bytes(self.bytes.get()),
            self.send_errors.get(),
            self.recv.summary(),
            self.mpx.get().summary()
        )
    }
}

/// mpx counters of one output at one moment
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MpxSnapshot {
    /// Receiver-wide counters: frames, invalid frames by cause, streams
    /// opened, refused (`--max-streams`) and evicted
    pub receiver: ReceiverStats,
    /// Counters summed over every stream that has closed: bytes, frames,
    /// gaps, lost frames, duplicates, reordered and late frames
    pub closed: StreamStats,
    /// Raw datagrams dropped because of `--accept mpx`
    pub raw_dropped: u64,
}

impl MpxSnapshot {
    /// `"; mpx: ..."`, or nothing if no frame (valid or not) and no raw
    /// datagram was dropped
    fn summary(&self) -> String {
        let r = &self.receiver;
        let invalid = r.truncated + r.unknown_version + r.checksum_errors;
        if r.frames + invalid + self.raw_dropped + r.raw_lookalike == 0 {
            return String::new();
        }
        let c = &self.closed;
        let lookalike = if r.raw_lookalike > 0 {
            format!(
                "; {} raw datagrams that began like an mpx frame (delivered as raw)",
                r.raw_lookalike
            )
        } else {
            String::new()
        };
        format!(
            "; mpx: {} frames, {} streams ({} refused, {} evicted), closed streams: \
             {} bytes, {} gaps ({} lost), {} dups, {} reordered, {} late; invalid: \
             {} truncated, {} unknown version, {} bad checksum, {} unknown type, \
             {} out of range; {} raw datagrams dropped (--accept mpx){lookalike}",
            r.frames,
            r.streams_opened,
            r.streams_rejected,
            r.streams_evicted,
            c.bytes,
            c.gaps,
            c.lost,
            c.duplicates,
            c.reordered,
            c.late,
            r.truncated,
            r.unknown_version,
            r.checksum_errors,
            r.unknown_type,
            r.out_of_range,
            self.raw_dropped
        )
    }
}

/// mpx counters of one output, published by its thread as it runs
#[derive(Debug, Default)]
pub struct MpxStats {
    now: Mutex<MpxSnapshot>,
}

impl MpxStats {
    /// The counters as last published (at least once per 100 ms while
    /// the output runs, and once more when it stops)
    pub fn get(&self) -> MpxSnapshot {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, s: MpxSnapshot) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }
}

/// Counters of the whole proxy, one entry per component in flag order
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// One per `--udp-listen-addr`
    pub udp_inputs: Vec<Arc<UdpInputStats>>,
    /// One per `--tcp-listen-addr`
    pub tcp_inputs: Vec<Arc<TcpInputStats>>,
    /// One per `--tcp-output-addr`
    pub tcp_outputs: Vec<Arc<TcpOutputStats>>,
    /// One per `--udp-output-addr`
    pub udp_outputs: Vec<Arc<UdpOutputStats>>,
}

impl Stats {
    /// One line per component, then one per connected TCP output client
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(self.udp_inputs.iter().map(|s| s.summary()));
        lines.extend(self.tcp_inputs.iter().map(|s| s.summary()));
        for s in &self.tcp_outputs {
            lines.push(s.summary());
            lines.extend(
                s.clients()
                    .iter()
                    .map(|c| format!("tcp output {}: {}", s.spec, c.summary())),
            );
        }
        lines.extend(self.udp_outputs.iter().map(|s| s.summary()));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_client_totals_survive_departure() {
        let out = TcpOutputStats::new("x".into(), "127.0.0.1:1".parse().unwrap());
        let c = Arc::new(ClientStats::new("127.0.0.1:2".parse().unwrap()));
        out.add_client(Arc::clone(&c));
        c.datagrams.add(3);
        c.bytes.add(30);
        c.drops.add(2);
        assert_eq!(out.clients().len(), 1);
        assert_eq!((out.datagrams(), out.bytes(), out.drops()), (3, 30, 2));
        out.remove_client(&c);
        assert!(out.clients().is_empty());
        assert_eq!((out.datagrams(), out.bytes(), out.drops()), (3, 30, 2));
        assert_eq!(out.departed.get(), 1);
    }

    #[test]
    fn test_summary_lines() {
        let stats = Stats {
            udp_inputs: vec![Arc::new(UdpInputStats::new(
                "127.0.0.1:9000".into(),
                "127.0.0.1:9000".parse().unwrap(),
                None,
            ))],
            ..Stats::default()
        };
        let lines = stats.summary_lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("udp input 127.0.0.1:9000: 0 datagrams received"));
        assert!(!lines[0].contains("mpx"));
    }

    #[test]
    fn test_mpx_summary() {
        assert_eq!(MpxSnapshot::default().summary(), "");
        let stats = MpxStats::default();
        let mut s = MpxSnapshot::default();
        s.receiver.frames = 7;
        s.receiver.streams_opened = 2;
        s.receiver.checksum_errors = 1;
        s.closed.lost = 3;
        stats.set(s);
        let line = stats.get().summary();
        assert!(
            line.starts_with("; mpx: 7 frames, 2 streams (0 refused"),
            "{line}"
        );
        assert!(
            line.contains("(3 lost)") && line.contains("1 bad checksum"),
            "{line}"
        );
    }
}
