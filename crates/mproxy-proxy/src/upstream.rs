//! Upstream addresses: `host:port`, `tcp://host:port` or `tls://host:port`
//!
//! ```
//! use mproxy_proxy::{Transport, UpstreamAddr};
//!
//! let a: UpstreamAddr = "tls://feed.example.org:4443".parse().unwrap();
//! assert_eq!(a.transport(), Transport::Tls);
//! assert_eq!(a.endpoint().port(), 4443);
//! // no scheme: plain TCP, unless --tls makes TLS the default
//! let b: UpstreamAddr = "127.0.0.1:4001".parse().unwrap();
//! assert_eq!(b.transport(), Transport::Tcp);
//! assert_eq!(b.with_default_transport(Transport::Tls).transport(), Transport::Tls);
//! assert!("ftp://127.0.0.1:21".parse::<UpstreamAddr>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use mproxy_common::{AddrError, Endpoint};

/// How the proxy talks to a TCP upstream
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP: the bytes read are the feed
    Tcp,
    /// TLS over TCP: the server is authenticated, the feed is decrypted
    Tls,
}

/// A `--tcp-connect-addr` value: an endpoint and its transport
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamAddr {
    endpoint: Endpoint,
    transport: Transport,
    /// The scheme was written out (`tcp://` or `tls://`), so `--tls` does
    /// not change it
    explicit: bool,
}

impl UpstreamAddr {
    /// An upstream at `endpoint` using `transport` (as if the scheme was written)
    pub fn new(endpoint: Endpoint, transport: Transport) -> Self {
        Self {
            endpoint,
            transport,
            explicit: true,
        }
    }

    /// Where to connect
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Plain TCP or TLS
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// True for TLS
    pub fn is_tls(&self) -> bool {
        self.transport == Transport::Tls
    }

    /// Use `transport` if the address was written without a scheme
    #[must_use]
    pub fn with_default_transport(mut self, transport: Transport) -> Self {
        if !self.explicit {
            self.transport = transport;
        }
        self
    }
}

impl fmt::Display for UpstreamAddr {
    /// `tls://host:port` for TLS, `host:port` for plain TCP
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Tls => write!(f, "tls://{}", self.endpoint),
            Transport::Tcp => write!(f, "{}", self.endpoint),
        }
    }
}

/// Why an upstream address was rejected
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamAddrError {
    /// A `scheme://` other than `tcp://` or `tls://`
    UnknownScheme(String),
    /// The `host:port` part is invalid
    Addr(AddrError),
}

impl fmt::Display for UpstreamAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownScheme(s) => {
                write!(f, "'{s}' has an unknown scheme (expected tcp:// or tls://)")
            }
            Self::Addr(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UpstreamAddrError {}

impl FromStr for UpstreamAddr {
    type Err = UpstreamAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (transport, explicit, rest) = match text.split_once("://") {
            None => (Transport::Tcp, false, text),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "tcp" => (Transport::Tcp, true, rest),
                "tls" => (Transport::Tls, true, rest),
                _ => return Err(UpstreamAddrError::UnknownScheme(text.into())),
            },
        };
        let endpoint = rest.parse().map_err(UpstreamAddrError::Addr)?;
        Ok(Self {
            endpoint,
            transport,
            explicit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_schemes() {
        let a: UpstreamAddr = "tls://[::1]:4443".parse().unwrap();
        assert!(a.is_tls());
        assert_eq!(a.to_string(), "tls://[::1]:4443");
        let b: UpstreamAddr = "TCP://localhost:4001".parse().unwrap();
        assert_eq!(b.transport(), Transport::Tcp);
        // an explicit tcp:// stays plaintext under --tls
        assert_eq!(
            b.with_default_transport(Transport::Tls).transport(),
            Transport::Tcp
        );
        let c: UpstreamAddr = "localhost:4001".parse().unwrap();
        let c = c.with_default_transport(Transport::Tls);
        assert_eq!(c.to_string(), "tls://localhost:4001");
    }

    #[test]
    fn test_parse_errors() {
        assert!(matches!(
            "udp://1.2.3.4:5".parse::<UpstreamAddr>(),
            Err(UpstreamAddrError::UnknownScheme(_))
        ));
        assert!(matches!(
            "tls://1.2.3.4".parse::<UpstreamAddr>(),
            Err(UpstreamAddrError::Addr(AddrError::MissingPort(_)))
        ));
        let e = "tls://".parse::<UpstreamAddr>().unwrap_err();
        assert_eq!(e, UpstreamAddrError::Addr(AddrError::Empty));
    }
}
