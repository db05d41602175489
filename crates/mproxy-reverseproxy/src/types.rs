//! The value types of the configuration: addresses as written and
//! resolved, and the slow-client policy and queue bound of TCP outputs

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use mproxy_common::{AddrError, Endpoint};

/// An address as the user wrote it, with what it resolved to
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// As written (kept for messages, and for the IPv6 zone of a group)
    pub spec: Endpoint,
    /// What it resolved to
    pub addr: SocketAddr,
    /// A TCP listener written `tls://host:port`: it speaks TLS (see
    /// [`Config::tls`]); never set for UDP addresses
    pub tls: bool,
}

impl Addr {
    /// Resolve `spec` (literals need no resolver); a plain address
    ///
    /// # Errors
    /// A host name that does not resolve, or an unknown IPv6 zone.
    pub fn resolve(spec: Endpoint) -> Result<Self, AddrError> {
        let addr = spec.resolve()?;
        Ok(Self {
            spec,
            addr,
            tls: false,
        })
    }

    /// Resolve a listener as written on the command line
    ///
    /// # Errors
    /// As [`Addr::resolve`].
    pub fn resolve_listen(listen: ListenAddr) -> Result<Self, AddrError> {
        Ok(Self {
            tls: listen.tls,
            ..Self::resolve(listen.endpoint)?
        })
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Self {
            spec: Endpoint::from_socket_addr(addr),
            addr,
            tls: false,
        }
    }
}

impl FromStr for Addr {
    type Err = AddrError;

    /// Parse and resolve `host:port`, `tcp://host:port` or `tls://host:port`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::resolve_listen(s.parse()?)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("tls://")?;
        }
        let spec = self.spec.to_string();
        if spec == self.addr.to_string() || self.spec.ip().is_some() {
            f.write_str(&spec)
        } else {
            write!(f, "{spec} ({})", self.addr)
        }
    }
}

/// A TCP listener as written: `host:port` or `tcp://host:port` for plain
/// TCP, `tls://host:port` for TLS (the scheme syntax of `mproxy-proxy`'s
/// `--tcp-connect-addr`)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// Written `tls://`
    pub tls: bool,
    /// The address
    pub endpoint: Endpoint,
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("tls://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            (false, rest)
        } else {
            (false, s)
        };
        Ok(Self {
            tls,
            endpoint: rest.parse()?,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("tls://")?;
        }
        write!(f, "{}", self.endpoint)
    }
}

/// What happens to a TCP output client whose queue is full (`--slow-client`)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SlowClient {
    /// Drop datagrams for that client only (counted as missed); it stays
    /// connected and gets what arrives once its queue has room again
    #[default]
    Drop,
    /// Disconnect it at once; what it missed (the datagram that did not
    /// fit, and everything still queued or half-written) is counted and
    /// logged
    Disconnect,
}

/// Most bytes a TCP output client may fall behind the newest payload
/// (`--client-queue`)
///
/// Written with a unit (`4MiB`, `512KiB`, `65536B`) it is a byte count;
/// a bare number is the datagram count of earlier versions, read as that
/// many datagrams of `--max-datagram` bytes (`4096` at the default 1472
/// bytes is 5.75 MiB). Either way the bound is in bytes, so large
/// datagrams cannot make a queue larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientQueue {
    /// This many bytes
    Bytes(usize),
    /// This many datagrams of `--max-datagram` bytes
    Datagrams(usize),
}

/// Largest `--client-queue`
pub const MAX_CLIENT_QUEUE: usize = 1 << 30;

impl ClientQueue {
    /// The bound in bytes, for datagrams of at most `max_datagram` bytes
    pub fn bytes(&self, max_datagram: usize) -> usize {
        match *self {
            Self::Bytes(n) => n,
            Self::Datagrams(n) => n.saturating_mul(max_datagram),
        }
    }
}

impl FromStr for ClientQueue {
    type Err = String;

    /// `4MiB`, `64KiB`, `65536B` (bytes) or `4096` (datagrams)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 20).contains(n))
                .map(Self::Datagrams)
                .ok_or_else(|| {
                    format!(
                        "invalid queue '{s}' (a size such as 4MiB, or a datagram count from \
                         1 to 1048576)"
                    )
                });
        }
        mproxy_common::cli::parse_size(t)
            .ok()
            .filter(|n| *n <= MAX_CLIENT_QUEUE)
            .map(Self::Bytes)
            .ok_or_else(|| {
                format!(
                    "invalid queue '{s}' (a size from 1B to 1GiB such as 4MiB, or a \
                     datagram count)"
                )
            })
    }
}

impl fmt::Display for ClientQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "{n}B"),
            Self::Datagrams(n) => write!(f, "{n}"),
        }
    }
}
