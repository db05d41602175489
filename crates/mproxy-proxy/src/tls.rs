//! TLS upstreams: the rustls client configuration, server names, and why a
//! session failed
//!
//! rustls is sans-IO: a [`rustls::ClientConnection`] only turns bytes into
//! bytes, and the upstream thread drives it over its blocking `TcpStream`
//! (with the same 200 ms read timeout as plain TCP, so a `WouldBlock` is
//! just the tick that checks for shutdown and idleness). The crypto
//! provider is always *ring*, passed explicitly, so no process-wide default
//! provider has to be installed.
//!
//! Every file is read and checked here, at start-up: a missing or
//! malformed `--ca-file`, `--client-cert` or `--client-key` is bad input
//! (exit 2, one line naming the flag and the file), never a failure at the
//! first connect.
//!
//! ## Self-signed feeds and pins
//!
//! A self-signed certificate made the usual way (`openssl req -x509
//! -newkey ... -subj /CN=host`) is marked as a CA (basicConstraints
//! CA:TRUE). Given as `--ca-file` it becomes a trust anchor, and the same
//! certificate presented by the server is then refused by webpki as "a CA
//! used as an end entity". That refusal is explained in words, with the
//! certificate's SHA-256, and `--pin-sha256` offers the usual way out:
//! trust exactly that certificate (or its public key). With pins and no
//! `--ca-file`, a certificate matching a pin is accepted without chain,
//! name or date checks (the pin is the identity; the handshake signature
//! still proves the server holds the key); with `--ca-file` as well, both
//! must pass.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail};
use mproxy_common::addr::Host;
use mproxy_common::tls::{is_ca_used_as_end_entity, load_certs, load_key, provider, CertPins, Pin};
use mproxy_common::Endpoint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme,
};

/// TLS settings shared by all TLS upstreams
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of trusted CA certificates; replaces the built-in Mozilla
    /// roots (webpki-roots) when set
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to servers that ask for one (mTLS)
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`
    pub client_key: Option<PathBuf>,
    /// Server name to send (SNI) and verify, instead of the upstream's host
    pub sni: Option<String>,
    /// Accept any server certificate (no authentication at all)
    pub insecure_skip_verify: bool,
    /// Accept a server whose certificate or public key has one of these
    /// SHA-256 hashes (`--pin-sha256`); with `ca_file` the chain must
    /// verify as well
    pub pins: Vec<Pin>,
}

impl TlsOptions {
    /// The flags that are set, for "only applies to TLS upstreams" errors
    pub(crate) fn flags_set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.ca_file.is_some() {
            v.push("--ca-file");
        }
        if self.client_cert.is_some() {
            v.push("--client-cert");
        }
        if self.client_key.is_some() {
            v.push("--client-key");
        }
        if self.sni.is_some() {
            v.push("--sni");
        }
        if self.insecure_skip_verify {
            v.push("--insecure-skip-verify");
        }
        if !self.pins.is_empty() {
            v.push("--pin-sha256");
        }
        v
    }

    /// Check what needs no I/O: flags that go together, the `--sni` syntax
    ///
    /// # Errors
    /// `--client-cert` without `--client-key` (or the reverse), an invalid
    /// `--sni`, `--insecure-skip-verify` with `--ca-file`.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => bail!("--client-cert needs --client-key"),
            (None, Some(_)) => bail!("--client-key needs --client-cert"),
            _ => {}
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            bail!("--insecure-skip-verify and --ca-file exclude each other");
        }
        if self.insecure_skip_verify && !self.pins.is_empty() {
            bail!("--insecure-skip-verify and --pin-sha256 exclude each other");
        }
        if let Some(sni) = &self.sni {
            parse_sni(sni)?;
        }
        Ok(())
    }
}

fn parse_sni(sni: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(sni.to_string())
        .map_err(|_| anyhow!("--sni '{sni}' is neither a valid DNS name nor an IP address"))
}

/// Build the client configuration, reading and checking every file
///
/// # Errors
/// One line naming the flag and file: unreadable, not PEM, no certificate
/// or key in it, a CA certificate rustls cannot use as a trust anchor, a
/// key that does not match the client certificate.
pub(crate) fn client_config(opts: &TlsOptions) -> anyhow::Result<Arc<ClientConfig>> {
    opts.validate()?;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS set-up: {e}"))?;
    let builder = if opts.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        // pins alone replace the CA chain; otherwise the chain is verified
        // by rustls's own WebPKI verifier, wrapped to explain its refusals
        let chain = if opts.pins.is_empty() || opts.ca_file.is_some() {
            let roots = Arc::new(root_store(opts.ca_file.as_deref())?);
            let v = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| anyhow!("TLS set-up: {e}"))?;
            Some(v)
        } else {
            None
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                pins: opts.pins.clone(),
                chain,
                provider,
            }))
    };
    let config = match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "--client-cert")?;
            let key_der = load_key(key, "--client-key")?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                anyhow!(
                    "--client-key {} does not fit --client-cert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The trust anchors: those of `ca_file`, or Mozilla's (webpki-roots)
fn root_store(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path, "--ca-file")?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "--ca-file {}: certificate {} is not usable as a CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

/// The name a TLS upstream is verified against (and sent as SNI)
///
/// `--sni` if given; otherwise the upstream's host: a DNS name, or for an
/// IP literal an IP address that must be among the certificate's IP SANs
/// (rustls then sends no SNI, as RFC 6066 requires).
///
/// # Errors
/// A host name rustls does not accept as a DNS name.
pub(crate) fn server_name(
    sni: Option<&str>,
    endpoint: &Endpoint,
) -> anyhow::Result<ServerName<'static>> {
    if let Some(sni) = sni {
        return parse_sni(sni);
    }
    match endpoint.host() {
        Host::Ip(ip, _) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Name(name) => ServerName::try_from(name.clone()).map_err(|_| {
            anyhow!(
                "--tcp-connect-addr tls://{endpoint}: '{name}' is not a valid TLS server name (set one with --sni)"
            )
        }),
    }
}

/// Why a TLS session could not be used, as counted in the summary
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's chain does not lead to a trusted CA
    UnknownCa,
    /// The server's certificate expired (or is not valid yet)
    Expired,
    /// The certificate is not for the name we verify against
    NameMismatch,
    /// Any other problem with the server's certificate
    BadCertificate,
    /// The server refused us with an alert (e.g. it wants a client certificate)
    Rejected,
    /// Protocol errors, a peer that does not speak TLS, timeouts, EOF
    Other,
}

impl TlsFailure {
    /// All causes, in summary order
    pub const ALL: [Self; 6] = [
        Self::UnknownCa,
        Self::Expired,
        Self::NameMismatch,
        Self::BadCertificate,
        Self::Rejected,
        Self::Other,
    ];

    /// Classify a rustls error
    pub(crate) fn of(e: &rustls::Error) -> Self {
        use CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => Self::UnknownCa,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Self::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::NameMismatch,
                _ => Self::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => Self::BadCertificate,
            rustls::Error::AlertReceived(_) => Self::Rejected,
            _ => Self::Other,
        }
    }

    /// Index into the per-cause counters
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Short label, as in the summary ("unknown CA", "expired", ...)
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown CA",
            Self::Expired => "expired",
            Self::NameMismatch => "name mismatch",
            Self::BadCertificate => "bad certificate",
            Self::Rejected => "rejected by server",
            Self::Other => "other",
        }
    }
}

/// A failed TLS session: its cause and a one-line explanation
#[derive(Debug, Clone)]
pub(crate) struct TlsError {
    pub(crate) cause: TlsFailure,
    pub(crate) message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl TlsError {
    /// Explain an I/O error of a TLS session (rustls errors come wrapped in
    /// `io::Error`s of kind `InvalidData`)
    pub(crate) fn from_io(e: &io::Error, client_cert: bool) -> Self {
        if let Some(tls) = rustls_error(e) {
            let cause = TlsFailure::of(tls);
            // our verifier's own refusals explain themselves
            if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls {
                if let Some(r) = other.0.downcast_ref::<Refusal>() {
                    return Self {
                        cause,
                        message: r.to_string(),
                    };
                }
            }
            let hint = match (cause, tls) {
                (TlsFailure::UnknownCa, _) => {
                    " (not signed by a trusted CA: is --ca-file the CA that issued it?)"
                }
                (TlsFailure::NameMismatch, _) => " (check the upstream's host name or --sni)",
                (
                    TlsFailure::Rejected,
                    rustls::Error::AlertReceived(
                        AlertDescription::CertificateRequired
                        | AlertDescription::BadCertificate
                        | AlertDescription::HandshakeFailure,
                    ),
                ) if !client_cert => {
                    " (the server may require a client certificate: --client-cert/--client-key)"
                }
                (TlsFailure::Other, rustls::Error::InvalidMessage(_)) => {
                    " (does the upstream speak TLS on this port?)"
                }
                _ => "",
            };
            return Self {
                cause,
                message: format!("{tls}{hint}"),
            };
        }
        let message = match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "connection closed during the TLS handshake (does the upstream speak TLS on this port?)"
                    .to_string()
            }
            _ => e.to_string(),
        };
        Self {
            cause: TlsFailure::Other,
            message,
        }
    }

    /// A handshake that did not finish in time
    pub(crate) fn timeout(after: std::time::Duration) -> Self {
        Self {
            cause: TlsFailure::Other,
            message: format!("TLS handshake not finished after {}s", after.as_secs()),
        }
    }
}

/// The rustls error inside an I/O error, if there is one
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why [`Verifier`] refused a server certificate, in words
#[derive(Debug)]
enum Refusal {
    /// No `--pin-sha256` matches
    NoPinMatches(CertPins),
    /// A CA certificate presented as the server's own
    CaAsServer(CertPins),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPinMatches(p) => write!(
                f,
                "the server's certificate matches no --pin-sha256 (it has {p}); \
                 has the feed changed its certificate or key?"
            ),
            Self::CaAsServer(p) => write!(
                f,
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE, \
                 which a plain 'openssl req -x509' sets) and TLS refuses a CA certificate as \
                 a server's own, even one given with --ca-file; if it is the feed's \
                 certificate ({p}; compare 'openssl x509 -in CERT -noout -fingerprint \
                 -sha256'), trust exactly it with --pin-sha256 {}, or give the server a \
                 certificate with CA:FALSE ('-addext basicConstraints=critical,CA:FALSE') or \
                 one issued by the CA of --ca-file",
                p.cert
            ),
        }
    }
}

impl std::error::Error for Refusal {}

fn refuse(r: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// Server certificate verification: the pins (any one must match, if
/// there are any), then the CA chain, name and dates (if `chain` is set,
/// by rustls's WebPKI verifier); a CA certificate used as the server's own
/// is refused with an explanation
#[derive(Debug)]
struct Verifier {
    pins: Vec<Pin>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.pins.is_empty() {
            let pins = CertPins::of(end_entity);
            if !self.pins.iter().any(|p| pins.matches(p)) {
                return Err(refuse(Refusal::NoPinMatches(pins)));
            }
        }
        match &self.chain {
            None => Ok(ServerCertVerified::assertion()),
            Some(chain) => chain
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    if is_ca_used_as_end_entity(&e) {
                        refuse(Refusal::CaAsServer(CertPins::of(end_entity)))
                    } else {
                        e
                    }
                }),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `--insecure-skip-verify`: any certificate for any name is accepted; the
/// handshake signatures are still checked, so the session is encrypted,
/// just not authenticated
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_server_name_defaults() {
        let ip: Endpoint = "127.0.0.1:4443".parse().unwrap();
        assert!(matches!(
            server_name(None, &ip).unwrap(),
            ServerName::IpAddress(_)
        ));
        let v6: Endpoint = "[::1]:4443".parse().unwrap();
        assert!(matches!(
            server_name(None, &v6).unwrap(),
            ServerName::IpAddress(_)
        ));
        let name: Endpoint = "feed.example.org:4443".parse().unwrap();
        assert_eq!(
            server_name(None, &name).unwrap().to_str(),
            "feed.example.org"
        );
        assert_eq!(
            server_name(Some("other.example"), &ip).unwrap().to_str(),
            "other.example"
        );
    }

    #[test]
    fn test_validate() {
        let mut o = TlsOptions {
            client_cert: Some("c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(o.validate().is_err());
        o.client_key = Some("k.pem".into());
        assert!(o.validate().is_ok());
        o.sni = Some("bad name!".into());
        assert!(o.validate().unwrap_err().to_string().contains("--sni"));
    }

    #[test]
    fn test_classify() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(TlsFailure::of(&e), TlsFailure::UnknownCa);
        let io = io::Error::new(io::ErrorKind::InvalidData, e);
        let t = TlsError::from_io(&io, false);
        assert_eq!(t.cause, TlsFailure::UnknownCa);
        assert!(t.message.contains("UnknownIssuer"), "{t}");
        let e = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let t = TlsError::from_io(&io::Error::new(io::ErrorKind::InvalidData, e), false);
        assert_eq!(t.cause, TlsFailure::Rejected);
        assert!(t.message.contains("--client-cert"), "{t}");
        let t = TlsError::from_io(&io::ErrorKind::UnexpectedEof.into(), false);
        assert_eq!(t.cause, TlsFailure::Other);
        for (i, f) in TlsFailure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }

    #[test]
    fn test_missing_and_garbage_files() {
        let e = client_config(&TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--ca-file /nonexistent/ca.pem: cannot read"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("mproxy-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        let e = client_config(&TlsOptions {
            ca_file: Some(garbage.clone()),
            ..TlsOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(&TlsOptions {
            ca_file: Some(broken),
            ..TlsOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not valid PEM"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // the built-in roots
        assert!(client_config(&TlsOptions::default()).is_ok());
    }
}
