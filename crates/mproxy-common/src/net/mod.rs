//! Sockets: option sets, receivers, senders, the receive drain and UDP
//! fan-out
//!
//! `net` is the boundary to the operating system's sockets: it is the only
//! module that uses socket2, raw socket options or socket system calls, and
//! everything above it works with `std::net` sockets. Inside, one module
//! per responsibility:
//!
//! | module | what |
//! |---|---|
//! | `bind` | receivers and senders: options, multicast joins, buffers, offload switches |
//! | `recv` | `recvmsg`/`recvmmsg` with true sizes, drop counters and GRO splitting ([`RecvBatch`]) |
//! | `drain` | the receive loop every receiver shares ([`Drain`], [`RecvStats`]) |
//! | `send` | `sendmmsg` with UDP GSO runs ([`send_segments`]) |
//! | `fanout` | every datagram to every destination ([`Fanout`]) |
//! | `tcp` | TCP keepalive and non-blocking probes |
//! | `cmsg`, `sockaddr`, `sys`, `ifaddrs` | control messages as bytes, addresses through socket2, the EINTR/errno helper, interface addresses |
//!
//! Every `unsafe` block (system calls, and reading what the kernel wrote)
//! is in `bind`, `recv`, `send`, `tcp`, `sys`, `sockaddr` and `ifaddrs`,
//! each with its SAFETY argument; the parts that need no kernel
//! (control-message encoding and parsing, address conversion, GRO
//! splitting, the headers handed to recvmmsg/sendmmsg) have tests that run
//! under Miri.

mod bind;
mod cmsg;
mod drain;
mod fanout;
mod ifaddrs;
mod recv;
mod send;
mod sockaddr;
mod sys;
mod tcp;

use std::io;
use std::net::IpAddr;

pub use bind::{
    bind_batch_receiver, bind_receiver, bind_sender, enable_gro, gso_supported, kernel_drops,
    path_payload, recv_buffer_size, DEFAULT_RCVBUF,
};
pub use drain::{
    Datagram, Datagrams, Drain, Drained, KernelDrops, RecvSnapshot, RecvStats, DRAIN_BUDGET,
};
pub use fanout::{DatagramBatch, DestStats, Fanout};
pub use recv::{recv_meta, recv_nonblocking, RecvBatch, RecvMeta};
pub use send::{gso_run, send_batch, send_segments, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
pub use tcp::{keepalive, recv_dontwait, set_keepalive, Keepalive};

use crate::addr::{AddrError, Interface};

/// Largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header)
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Receive buffer size that no UDP datagram can overflow (truncation is
/// still detected, for jumbograms)
pub const RECV_BUF_LEN: usize = 65_536;

/// A socket setup step failed
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A system call failed (the OS error is the [`std::error::Error::source`])
    #[error("{what} {addr}")]
    Io {
        /// The step, e.g. "binding"
        what: &'static str,
        /// The address or interface it concerned
        addr: String,
        /// The OS error
        #[source]
        source: io::Error,
    },
    /// The options contradict each other or name something that does not exist
    #[error("{0}")]
    Config(String),
    /// An address that does not parse or resolve
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// Opening a sending socket of one address family failed
    #[error("opening {family} sending socket")]
    Sender {
        /// "IPv4" or "IPv6"
        family: &'static str,
        /// What failed
        #[source]
        source: Box<Self>,
    },
}

impl NetError {
    fn sender(family: &'static str, source: Self) -> Self {
        Self::Sender {
            family,
            source: Box::new(source),
        }
    }
}

/// Socket options shared by every binary (`--iface`, `--ttl`, `--loop`, ...)
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Interface for multicast joins and sends
    pub iface: Interface,
    /// Multicast TTL / IPv6 hop limit
    pub ttl: u32,
    /// Deliver our own multicast sends to receivers on this host
    pub multicast_loop: bool,
    /// Sources for source-specific multicast joins (empty: any source)
    pub sources: Vec<IpAddr>,
    /// Receive buffer request (`None`: [`DEFAULT_RCVBUF`], no warning when clamped)
    pub rcvbuf: Option<usize>,
    /// Send buffer request (`None`: kernel default)
    pub sndbuf: Option<usize>,
    /// Use UDP segmentation offload (GSO) on sends and GRO on receives
    /// where the kernel supports them (`--offload`)
    pub offload: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            iface: Interface::Default,
            ttl: 1,
            multicast_loop: true,
            sources: Vec::new(),
            rcvbuf: None,
            sndbuf: None,
            offload: true,
        }
    }
}

/// Index of the interface that has address `ip`
pub fn interface_index_of(ip: IpAddr) -> Option<u32> {
    ifaddrs::interface_addrs()
        .into_iter()
        .find(|(_, a)| *a == ip)
        .map(|(i, _)| i)
}

/// First IPv4 address of interface `index`
pub fn ipv4_of_index(index: u32) -> Option<std::net::Ipv4Addr> {
    ifaddrs::interface_addrs()
        .into_iter()
        .find_map(|(i, a)| match a {
            IpAddr::V4(v4) if i == index => Some(v4),
            _ => None,
        })
}
