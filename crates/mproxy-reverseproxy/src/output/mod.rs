//! Outputs: TCP listeners whose clients get the group's payloads, and UDP
//! destinations the group's datagrams are forwarded to
//!
//! Each output has its own receive socket on the group (SO_REUSEADDR lets
//! them share group:port; the kernel gives every one of them a copy).
//!
//! Delivering outputs (TCP outputs, and UDP outputs with
//! `--udp-output-strip`) pass each datagram through a
//! [`Reassembly`](crate::reassembly::Reassembly): raw payloads go on as
//! they are, mpx frames are put back in order per stream and delivered
//! without their headers. A plain UDP output forwards every datagram
//! untouched, frames included.
//!
//! A TCP output is one thread running one event loop ([`tcp`]) for its
//! group socket, its listener and all its clients ([`client`]), which
//! share one payload log ([`log`]); who gives up a slot when it is full is
//! [`crate::slots`]' business.

mod client;
mod log;
mod tcp;
mod udp;

use std::net::UdpSocket;

use mproxy_common::net::bind_batch_receiver;

use crate::config::{Addr, Config};
use crate::error::Error;
use crate::recv::receive_options;

pub(crate) use tcp::TcpOutput;
pub(crate) use udp::UdpOutput;

/// Bind a receive socket on the group for the output named by `flag` and `addr`
fn join_group(config: &Config, flag: &str, addr: &Addr) -> Result<UdpSocket, Error> {
    let opts = receive_options(&config.socket);
    let (sock, _gro) = bind_batch_receiver(config.group.addr, &opts).map_err(|e| {
        Error::bind(
            format!(
                "joining --multicast-addr {} for {flag} {addr}",
                config.group
            ),
            e,
        )
    })?;
    Ok(sock)
}
