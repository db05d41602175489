//! Endpoint, path and interface specifications as typed on the command line
//!
//! Parsing is purely syntactic ([`FromStr`]); name resolution and interface
//! lookups happen in [`Endpoint::resolve`] and [`Interface::index`], so a
//! long-running process can resolve the same spec again (DNS changes, an
//! interface that comes back with a new index).
//!
//! Accepted endpoint forms:
//!
//! | form | example |
//! |---|---|
//! | IPv4 | `127.0.0.1:9920`, `239.255.0.1:9918` |
//! | IPv6 | `[::1]:9920`, `[ff15::18]:9918` |
//! | IPv6 with zone | `[fe80::1%eth0]:9920`, `[ff02::18%3]:9918` |
//! | host name | `localhost:9920`, `feed.example.org:4001` |
//!
//! A path (for multipath aggregation) is an endpoint with an optional
//! weight: `host:port|weight`, weight 1 to 1000, default 1.
//!
//! ```
//! use mproxy_common::addr::{Endpoint, PathSpec};
//!
//! let e: Endpoint = "[fe80::1%lo]:9920".parse().unwrap();
//! assert_eq!(e.port(), 9920);
//! let p: PathSpec = "127.0.0.1:9000|3".parse().unwrap();
//! assert_eq!(p.weight, 3);
//! assert!("127.0.0.1".parse::<Endpoint>().is_err()); // no port
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs};
use std::str::FromStr;

/// Why an endpoint, path or interface spec was rejected
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// The spec is empty
    #[error("empty address")]
    Empty,
    /// No `:port` part was found
    #[error("'{0}' has no port (expected host:port or [v6]:port)")]
    MissingPort(String),
    /// The port is not a number from 1 to 65535
    #[error("'{0}' has an invalid port (expected 1-65535)")]
    InvalidPort(String),
    /// A `[` without its `]`, or an IPv6 literal that does not parse
    #[error("'{0}' is not a valid IPv6 literal")]
    InvalidIpv6(String),
    /// Several colons outside brackets: an IPv6 address must be written
    /// `[addr]:port` (or a scheme this flag does not take)
    #[error("'{0}' is ambiguous: write an IPv6 address as [addr]:port")]
    BareIpv6(String),
    /// Host name with characters no host name may contain
    #[error("'{0}' is not a valid host name")]
    InvalidHost(String),
    /// A `%zone` on something other than an IPv6 literal
    #[error("'{0}': a %zone is only allowed on an IPv6 literal")]
    UnexpectedZone(String),
    /// The zone names an interface that does not exist
    #[error("unknown interface '{iface}'{}", if spec == iface { String::new() } else { format!(" in '{spec}'") })]
    UnknownInterface {
        /// The interface as written
        iface: String,
        /// The whole spec
        spec: String,
    },
    /// The `|weight` suffix is not a number from 1 to 1000
    #[error("'{0}' has an invalid weight (expected |1 to |1000)")]
    InvalidWeight(String),
    /// The `|rate` suffix of a path is not a rate
    #[error("'{0}' has an invalid path rate (e.g. |50mbit)")]
    InvalidRate(String),
    /// Resolving the host name failed
    #[error("cannot resolve '{spec}': {reason}")]
    Resolve {
        /// The whole spec
        spec: String,
        /// What the resolver said
        reason: String,
    },
}

/// The host part of an [`Endpoint`]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IP address, with an optional IPv6 zone (interface name or index)
    Ip(IpAddr, Option<String>),
    /// A name to resolve
    Name(String),
}

/// A `host:port` endpoint as typed by the user
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: Host,
    port: u16,
    text: String,
}

impl Endpoint {
    /// Endpoint for a socket address (no zone, no name)
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip(), None),
            port: addr.port(),
            text: addr.to_string(),
        }
    }

    /// The host part
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address if the host is a literal
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip, _) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// True if the host is a literal multicast address
    pub fn is_multicast(&self) -> bool {
        self.ip().is_some_and(|ip| ip.is_multicast())
    }

    /// Resolve to one socket address
    ///
    /// Literal addresses need no resolver; a zone is turned into a scope id.
    /// Host names go through the system resolver and the first address is
    /// used, preferring IPv4 (the family most telemetry gear speaks).
    ///
    /// # Errors
    /// [`AddrError::UnknownInterface`] for a zone naming no interface,
    /// [`AddrError::Resolve`] when the resolver fails or returns nothing.
    pub fn resolve(&self) -> Result<SocketAddr, AddrError> {
        match &self.host {
            Host::Ip(IpAddr::V6(ip), Some(zone)) => {
                let scope = Interface::Name(zone.clone())
                    .index_named(&self.text)
                    .or_else(|e| zone.parse::<u32>().map_err(|_| e))?;
                Ok(SocketAddr::V6(SocketAddrV6::new(*ip, self.port, 0, scope)))
            }
            Host::Ip(ip, _) => Ok(SocketAddr::new(*ip, self.port)),
            Host::Name(name) => {
                let addrs: Vec<SocketAddr> = (name.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| AddrError::Resolve {
                        spec: self.text.clone(),
                        reason: e.to_string(),
                    })?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| addrs.first())
                    .copied()
                    .ok_or_else(|| AddrError::Resolve {
                        spec: self.text.clone(),
                        reason: "no addresses found".into(),
                    })
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Endpoint {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err(AddrError::Empty);
        }
        let (host, port_str) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| AddrError::InvalidIpv6(text.into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| AddrError::MissingPort(text.into()))?;
            let (ip, zone) = match inside.split_once('%') {
                Some((ip, zone)) if !zone.is_empty() => (ip, Some(zone.to_string())),
                Some(_) => return Err(AddrError::InvalidIpv6(text.into())),
                None => (inside, None),
            };
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| AddrError::InvalidIpv6(text.into()))?;
            (Host::Ip(IpAddr::V6(ip), zone), port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| AddrError::MissingPort(text.into()))?;
            if host.contains(':') {
                // a bare IPv6 literal (or a scheme): the last colon is ambiguous
                return Err(AddrError::BareIpv6(text.into()));
            }
            if host.contains('%') {
                return Err(AddrError::UnexpectedZone(text.into()));
            }
            let host = if let Ok(v4) = host.parse::<Ipv4Addr>() {
                Host::Ip(IpAddr::V4(v4), None)
            } else if valid_hostname(host) {
                Host::Name(host.to_string())
            } else {
                return Err(AddrError::InvalidHost(text.into()));
            };
            (host, port)
        };
        let port: u16 = port_str
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AddrError::InvalidPort(text.into()))?;
        Ok(Self {
            host,
            port,
            text: text.to_string(),
        })
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}

/// One path of a multipath destination: `endpoint|weight` or
/// `endpoint|weight|rate` (e.g. `10.0.0.2:9000|2|50mbit`)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathSpec {
    /// Where the path goes
    pub endpoint: Endpoint,
    /// Relative share of the traffic, 1 to 1000 (default 1)
    pub weight: u32,
    /// Explicit pacing rate of this path, if given
    pub rate: Option<crate::rate::Rate>,
}

impl fmt::Display for PathSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.weight, self.rate) {
            (1, None) => write!(f, "{}", self.endpoint),
            (w, None) => write!(f, "{}|{}", self.endpoint, w),
            (w, Some(r)) => {
                // as typed when it was a round number of bits, and parseable back
                let bits = r.bytes_per_sec().saturating_mul(8);
                let rate = match bits {
                    b if b % 1_000_000_000 == 0 => format!("{}gbit", b / 1_000_000_000),
                    b if b % 1_000_000 == 0 => format!("{}mbit", b / 1_000_000),
                    b if b % 1_000 == 0 => format!("{}kbit", b / 1_000),
                    _ => format!("{}B", r.bytes_per_sec()),
                };
                write!(f, "{}|{}|{}", self.endpoint, w, rate)
            }
        }
    }
}

impl FromStr for PathSpec {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let mut parts = t.splitn(3, '|');
        let ep = parts.next().unwrap_or_default();
        let weight = match parts.next() {
            Some(w) => w
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| AddrError::InvalidWeight(t.into()))?,
            None => 1,
        };
        let rate = match parts.next() {
            Some(r) => Some(
                r.trim()
                    .parse::<crate::rate::Rate>()
                    .map_err(|_| AddrError::InvalidRate(t.into()))?,
            ),
            None => None,
        };
        Ok(Self {
            endpoint: ep.parse()?,
            weight,
            rate,
        })
    }
}

/// Which interface multicast joins and sends use
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Interface {
    /// Let the kernel choose (routing table)
    #[default]
    Default,
    /// By index, as `ip link` prints it
    Index(u32),
    /// By one of its IP addresses
    Addr(IpAddr),
    /// By name, e.g. `eth0`
    Name(String),
}

impl Interface {
    /// The interface index, 0 for [`Interface::Default`]
    ///
    /// # Errors
    /// [`AddrError::UnknownInterface`] if no interface has that name or address.
    pub fn index(&self) -> Result<u32, AddrError> {
        self.index_named(&self.to_string())
    }

    fn index_named(&self, spec: &str) -> Result<u32, AddrError> {
        let unknown = || AddrError::UnknownInterface {
            iface: self.to_string(),
            spec: spec.to_string(),
        };
        match self {
            Self::Default => Ok(0),
            Self::Index(i) => Ok(*i),
            Self::Name(name) => {
                let c = std::ffi::CString::new(name.as_str()).map_err(|_| unknown())?;
                // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
                let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if idx == 0 {
                    Err(unknown())
                } else {
                    Ok(idx)
                }
            }
            Self::Addr(ip) => crate::net::interface_index_of(*ip).ok_or_else(unknown),
        }
    }

    /// An IPv4 address of the interface, for APIs that only take one
    ///
    /// `None` for [`Interface::Default`] or an interface without IPv4.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self {
            Self::Addr(IpAddr::V4(v4)) => Some(*v4),
            Self::Default => None,
            _ => {
                let idx = self.index().ok()?;
                crate::net::ipv4_of_index(idx)
            }
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Index(i) => write!(f, "{i}"),
            Self::Addr(a) => write!(f, "{a}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl FromStr for Interface {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if s == "default" || s == "any" {
            return Ok(Self::Default);
        }
        if let Ok(i) = s.parse::<u32>() {
            return Ok(Self::Index(i));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Addr(ip));
        }
        if s.len() < libc::IFNAMSIZ
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'%')
        {
            return Ok(Self::Name(s.to_string()));
        }
        Err(AddrError::UnknownInterface {
            iface: s.to_string(),
            spec: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_forms() {
        let e: Endpoint = "127.0.0.1:9920".parse().unwrap();
        assert_eq!(e.resolve().unwrap(), "127.0.0.1:9920".parse().unwrap());
        let e: Endpoint = "[::1]:9921".parse().unwrap();
        assert_eq!(e.resolve().unwrap(), "[::1]:9921".parse().unwrap());
        let e: Endpoint = "[ff02::18%lo]:9918".parse().unwrap();
        assert!(e.is_multicast());
        match e.resolve().unwrap() {
            SocketAddr::V6(v6) => assert_ne!(v6.scope_id(), 0),
            other => panic!("{other}"),
        }
        let e: Endpoint = "[fe80::1%7]:1".parse().unwrap();
        match e.resolve().unwrap() {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 7),
            other => panic!("{other}"),
        }
        let e: Endpoint = "localhost:80".parse().unwrap();
        assert_eq!(e.host(), &Host::Name("localhost".into()));
        assert!(e.resolve().unwrap().ip().is_loopback());
        assert_eq!(e.to_string(), "localhost:80");
    }

    #[test]
    fn test_parse_errors() {
        for (input, want) in [
            ("", "empty address"),
            ("127.0.0.1", "has no port"),
            ("127.0.0.1:99999", "invalid port"),
            ("127.0.0.1:x", "invalid port"),
            ("[::1:9", "not a valid IPv6"),
            ("[::zz]:9", "not a valid IPv6"),
            (
                "::1:9",
                "'::1:9' is ambiguous: write an IPv6 address as [addr]:port",
            ),
            ("127.0.0.1:0", "invalid port (expected 1-65535)"),
            ("[::1]9", "has no port"),
            ("bad host:9", "not a valid host name"),
            ("10.0.0.1%eth0:9", "zone is only allowed"),
        ] {
            let err = input.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        let err = "[fe80::1%nosuchif0]:9"
            .parse::<Endpoint>()
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("unknown interface 'nosuchif0'"));
        let err = "no-such-host.invalid:9"
            .parse::<Endpoint>()
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("cannot resolve 'no-such-host.invalid:9'"));
    }

    #[test]
    fn test_path_spec() {
        let p: PathSpec = "[::1]:9|250".parse().unwrap();
        assert_eq!(p.weight, 250);
        assert_eq!(p.to_string(), "[::1]:9|250");
        let p: PathSpec = "host:9".parse().unwrap();
        assert_eq!(p.weight, 1);
        for bad in ["h:9|0", "h:9|1001", "h:9|x", "h:9|"] {
            let err = bad.parse::<PathSpec>().unwrap_err().to_string();
            assert!(err.contains("invalid weight"), "{bad}: {err}");
        }
        let p: PathSpec = "10.0.0.2:9000|2|50mbit".parse().unwrap();
        // shown as typed, and parseable back
        assert_eq!(p.to_string(), "10.0.0.2:9000|2|50mbit");
        for spec in ["h:9|1|1gbit", "h:9|3|64kbit", "h:9|1|1001B"] {
            let p: PathSpec = spec.parse().unwrap();
            assert_eq!(p.to_string(), spec);
            assert_eq!(p.to_string().parse::<PathSpec>().unwrap().rate, p.rate);
        }
        assert_eq!(p.weight, 2);
        assert_eq!(p.rate.unwrap().bytes_per_sec(), 6_250_000);
        let err = "h:9|2|fast".parse::<PathSpec>().unwrap_err().to_string();
        assert!(err.contains("invalid path rate"), "{err}");
    }

    #[test]
    fn test_interface() {
        assert_eq!("lo".parse::<Interface>().unwrap().index().unwrap(), 1);
        assert_eq!("3".parse::<Interface>().unwrap(), Interface::Index(3));
        assert_eq!(
            "127.0.0.1".parse::<Interface>().unwrap().index().unwrap(),
            1
        );
        assert_eq!(
            "127.0.0.1".parse::<Interface>().unwrap().ipv4(),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            "lo".parse::<Interface>().unwrap().ipv4(),
            Some(Ipv4Addr::LOCALHOST)
        );
        let err = "nosuch0".parse::<Interface>().unwrap().index().unwrap_err();
        assert_eq!(err.to_string(), "unknown interface 'nosuch0'");
    }
}
