//! TLS listeners: the rustls server configuration and why a session failed
//!
//! A listener written `tls://HOST:PORT` (`--tcp-output-addr` or
//! `--tcp-listen-addr`) speaks TLS with the certificate of `--tls-cert` and
//! the key of `--tls-key`; with `--tls-client-ca` every client must present
//! a certificate issued by one of that file's CAs (mutual TLS).
//!
//! rustls is sans-IO: a [`rustls::ServerConnection`] only turns bytes into
//! bytes. Every TLS connection, input or output, is driven non-blocking by
//! its listener's event loop, so a slow handshake never holds up anyone
//! else. A handshake that has not finished after `--tls-handshake-timeout`
//! seconds ends the connection, and at most `--max-handshakes` run at once
//! per listener (a newcomer evicts the oldest). The crypto provider is
//! always *ring*, passed explicitly, as in `mproxy-proxy`.
//!
//! Every file is read and checked at start-up: a missing or malformed
//! file is bad input (exit 2, one line naming the flag and the file).
//!
//! PEM files are read by `mproxy_common::tls` (feature `tls`), shared with
//! `mproxy-proxy`, so both edges word file errors alike.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mproxy_common::tls::{load_certs, load_key, provider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::error::{bail_config, Error};

/// Default `--tls-handshake-timeout`, in seconds
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// TLS settings shared by every `tls://` listener
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerOptions {
    /// PEM certificate chain the listeners present (`--tls-cert`)
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (`--tls-key`)
    pub key: Option<PathBuf>,
    /// PEM file of the CAs that issue client certificates; when set, every
    /// client must present one (`--tls-client-ca`)
    pub client_ca: Option<PathBuf>,
    /// Longest a TLS handshake may take before the connection is closed
    pub handshake_timeout: Duration,
}

impl Default for TlsServerOptions {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        }
    }
}

impl TlsServerOptions {
    /// The flags that are set, for "only applies to tls:// listeners" errors
    pub(crate) fn flags_set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.cert.is_some() {
            v.push("--tls-cert");
        }
        if self.key.is_some() {
            v.push("--tls-key");
        }
        if self.client_ca.is_some() {
            v.push("--tls-client-ca");
        }
        v
    }

    /// Check what needs no I/O, given whether any listener is `tls://`
    ///
    /// # Errors
    /// A `tls://` listener without `--tls-cert` and `--tls-key`, TLS flags
    /// without a `tls://` listener, a handshake timeout out of range.
    pub(crate) fn validate(&self, any_tls: bool) -> Result<(), Error> {
        let secs = self.handshake_timeout.as_secs();
        if !(1..=3600).contains(&secs) {
            bail_config!("--tls-handshake-timeout {secs} out of range (1 to 3600 s)");
        }
        if !any_tls {
            let set = self.flags_set();
            if !set.is_empty() {
                bail_config!(
                    "{} only applies to TLS listeners: give --tcp-output-addr tls://HOST:PORT \
                     or --tcp-listen-addr tls://HOST:PORT",
                    set.join(", ")
                );
            }
            return Ok(());
        }
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) => bail_config!("--tls-cert needs --tls-key"),
            (None, Some(_)) => bail_config!("--tls-key needs --tls-cert"),
            (None, None) => bail_config!("a tls:// listener needs --tls-cert and --tls-key"),
        }
    }
}

/// Build the server configuration, reading and checking every file
///
/// # Errors
/// One line naming the flag and file: unreadable, not PEM, no certificate
/// or key in it, a CA certificate rustls cannot use, a key that does not
/// match the certificate.
pub(crate) fn server_config(opts: &TlsServerOptions) -> Result<Arc<ServerConfig>, Error> {
    opts.validate(true)?;
    let (Some(cert), Some(key)) = (&opts.cert, &opts.key) else {
        bail_config!("a tls:// listener needs --tls-cert and --tls-key");
    };
    let file = |e: &dyn std::fmt::Display| Error::TlsFile(e.to_string());
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS set-up: {e}")))?;
    let builder = match &opts.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = load_certs(path, "--tls-client-ca").map_err(|e| file(&e))?;
            for (i, c) in certs.into_iter().enumerate() {
                roots.add(c).map_err(|e| {
                    Error::TlsFile(format!(
                        "--tls-client-ca {}: certificate {} is not usable as a CA: {e}",
                        path.display(),
                        i + 1
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::TlsFile(format!("--tls-client-ca {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = load_certs(cert, "--tls-cert").map_err(|e| file(&e))?;
    let key_der = load_key(key, "--tls-key").map_err(|e| file(&e))?;
    let config = builder.with_single_cert(chain, key_der).map_err(|e| {
        Error::TlsFile(format!(
            "--tls-key {} does not fit --tls-cert {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(config))
}

/// One line on why a client's TLS session failed, with a hint where one helps
pub(crate) fn explain(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::NoCertificatesPresented => {
            " (--tls-client-ca requires a client certificate)"
        }
        rustls::Error::InvalidCertificate(_) => " (client certificate not accepted)",
        rustls::Error::InvalidMessage(_) => " (does the client speak TLS?)",
        _ => "",
    };
    format!("TLS: {e}{hint}")
}

/// Explain an I/O error of a TLS session (rustls errors come wrapped in
/// `io::Error`s of kind `InvalidData`)
pub(crate) fn explain_io(e: &io::Error) -> String {
    match e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()) {
        Some(tls) => explain(tls),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cert: Option<&str>, key: Option<&str>) -> TlsServerOptions {
        TlsServerOptions {
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            ..TlsServerOptions::default()
        }
    }

    #[test]
    fn test_validate() {
        assert!(opts(None, None).validate(false).is_ok());
        let e = opts(Some("c.pem"), None).validate(false).unwrap_err();
        assert!(
            e.to_string().starts_with("--tls-cert only applies to TLS"),
            "{e}"
        );
        let e = opts(None, None).validate(true).unwrap_err();
        assert!(e.to_string().contains("needs --tls-cert and --tls-key"));
        let e = opts(Some("c.pem"), None).validate(true).unwrap_err();
        assert_eq!(e.to_string(), "--tls-cert needs --tls-key");
        assert!(opts(Some("c.pem"), Some("k.pem")).validate(true).is_ok());
        let mut o = opts(Some("c.pem"), Some("k.pem"));
        o.handshake_timeout = Duration::ZERO;
        assert!(o.validate(true).is_err());
    }

    #[test]
    fn test_missing_and_garbage_files() {
        let e = server_config(&opts(
            Some("/nonexistent/c.pem"),
            Some("/nonexistent/k.pem"),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--tls-cert /nonexistent/c.pem: cannot read"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("mproxy-rp-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        let g = garbage.to_str().unwrap();
        let e = server_config(&opts(Some(g), Some(g)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let mut o = opts(Some(g), Some(g));
        o.client_ca = Some(garbage.clone());
        let e = server_config(&o).unwrap_err().to_string();
        assert!(e.starts_with("--tls-client-ca"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_explain() {
        let s = explain(&rustls::Error::NoCertificatesPresented);
        assert!(s.contains("--tls-client-ca"), "{s}");
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(explain_io(&io), s);
        assert_eq!(explain_io(&io::ErrorKind::TimedOut.into()), "timed out");
    }
}
