//! Why the reverse proxy could not start, or stopped
//!
//! One [`Error`], grouped by who is at fault as in rustls's `Error`: the
//! settings ([`Error::Config`], [`Error::TlsFile`]), what this host offers
//! the settings ([`Error::Bind`]), and faults at run time ([`Error::Os`],
//! [`Error::Component`], [`Error::Panicked`]). [`Error::is_bad_input`]
//! tells the first two groups from the third; `main.rs` exits 2 for them
//! and 1 otherwise. Every message names the flag and value it concerns.

use std::io;

/// Why [`ReverseProxy::start`](crate::ReverseProxy::start) or
/// [`ReverseProxy::run`](crate::ReverseProxy::run) failed
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are invalid or contradict each other: nothing to do, a
    /// group that is not multicast, a limit out of range, an address that
    /// does not resolve or is given twice, a setup that would loop the
    /// group's traffic back into it. The message names the flag
    #[error("{0}")]
    Config(String),
    /// A TLS certificate, key or CA file is missing, unreadable, not PEM,
    /// or unusable (a key that does not fit the certificate). The message
    /// names the flag and the file
    #[error("{0}")]
    TlsFile(String),
    /// A socket could not be set up as configured: an address in use or
    /// not on this host, a group that cannot be joined on the interface.
    /// `what` names the flag and address; the OS error is the source
    #[error("{what}")]
    Bind {
        /// The step, flag and address, e.g. "binding --tcp-output-addr 0.0.0.0:9100"
        what: String,
        /// What the OS (or the socket layer) said
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The OS refused something the proxy needs at start: a thread, a
    /// poll instance
    #[error("{what}")]
    Os {
        /// What was being done, e.g. "starting a thread for tcp output 0.0.0.0:9100"
        what: String,
        /// The OS error
        #[source]
        source: io::Error,
    },
    /// A component stopped on its own while running: its poll instance
    /// failed, which a working kernel never does. The other components are
    /// stopped first
    #[error("{component}")]
    Component {
        /// The component, e.g. "tcp output 0.0.0.0:9100"
        component: String,
        /// The OS error
        #[source]
        source: io::Error,
    },
    /// A component thread panicked: a bug
    #[error("{component}: thread panicked")]
    Panicked {
        /// The component
        component: String,
    },
}

impl Error {
    /// Bad input (the settings, or what this host offers them), as opposed
    /// to a fault at run time: `main.rs` exits 2 for it
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Config(_) | Self::TlsFile(_) | Self::Bind { .. })
    }

    /// [`Error::Bind`] for `what` and `source`
    pub(crate) fn bind(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Bind {
            what: what.into(),
            source: source.into(),
        }
    }

    /// [`Error::Os`] for `what` and `source`
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> Self {
        Self::Os {
            what: what.into(),
            source,
        }
    }
}

/// `return Err(Error::Config(format!(...)))`
macro_rules! bail_config {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Config(format!($($arg)*)))
    };
}
pub(crate) use bail_config;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_groups_and_chain() {
        assert!(Error::Config("x".into()).is_bad_input());
        assert!(Error::TlsFile("x".into()).is_bad_input());
        let e = Error::bind(
            "binding --tcp-output-addr 127.0.0.1:1",
            io::Error::from(io::ErrorKind::AddrInUse),
        );
        assert!(e.is_bad_input());
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert!(
            chain.starts_with("binding --tcp-output-addr 127.0.0.1:1: ")
                && chain.contains("in use"),
            "{chain}"
        );
        let e = Error::Component {
            component: "tcp output x".into(),
            source: io::Error::other("epoll broke"),
        };
        assert!(!e.is_bad_input());
        assert!(!Error::Panicked {
            component: "x".into()
        }
        .is_bad_input());
        assert!(!Error::os("starting a thread", io::Error::other("no")).is_bad_input());
    }
}
