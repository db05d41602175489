//! PEM files for rustls (feature `tls`): certificates and keys read at
//! start-up, with one-line errors naming the flag and the file; and
//! certificate pins (`--pin-sha256`)
//!
//! Shared by `mproxy-proxy` (TLS upstreams) and `mproxy-reverseproxy`
//! (TLS listeners); behind a feature so the binaries without TLS do not
//! link rustls. The crypto provider is always *ring* (no cmake or NASM to
//! build), passed explicitly rather than installed process-wide.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that cannot be used; the message names the flag and the file
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PemError(String);

/// The *ring* crypto provider
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of the PEM file `path`, given with `flag`
///
/// # Errors
/// Unreadable, not PEM, or no certificate in it.
pub fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    const WHAT: &str = "certificate (-----BEGIN CERTIFICATE-----)";
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| pem_error(flag, path, &e, WHAT))?;
    if certs.is_empty() {
        return Err(pem_error(flag, path, &pem::Error::NoItemsFound, WHAT));
    }
    Ok(certs)
}

/// The private key (PKCS#8, PKCS#1 or SEC1) of the PEM file `path`,
/// given with `flag`
///
/// # Errors
/// Unreadable, not PEM, or no key in it.
pub fn load_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| pem_error(flag, path, &e, "private key (-----BEGIN PRIVATE KEY-----)"))
}

fn pem_error(flag: &str, path: &Path, e: &pem::Error, what: &str) -> PemError {
    let p = path.display();
    PemError(match e {
        pem::Error::Io(io) => format!("{flag} {p}: cannot read: {io}"),
        pem::Error::NoItemsFound => format!("{flag} {p}: no PEM {what} found"),
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "{flag} {p}: not valid PEM: no '-----END {}-----' line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "{flag} {p}: not valid PEM: malformed line '{}'",
            String::from_utf8_lossy(line).trim()
        ),
        other => format!("{flag} {p}: not valid PEM: {other}"),
    })
}

/// A `--pin-sha256` value: the SHA-256 of a server's certificate (its DER
/// encoding) or of its public key (the DER SubjectPublicKeyInfo)
///
/// Written as 64 hex digits (colons allowed, as `openssl x509 -noout
/// -fingerprint -sha256` prints them) or as base64 (as curl's
/// `--pinnedpubkey sha256//...` takes it; the `sha256//` prefix is
/// accepted). How to get them from a PEM certificate:
///
/// ```text
/// openssl x509 -in cert.pem -noout -fingerprint -sha256          # the certificate, hex
/// openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der \
///     | openssl dgst -sha256 -binary | base64                    # the public key, base64
/// ```
///
/// A public-key pin survives a renewal that keeps the key; a certificate
/// pin does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl fmt::Display for Pin {
    /// Lower-case hex
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256//")
            .or_else(|| t.strip_prefix("sha256:"))
            .unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        } else {
            base64_decode(t)
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a SHA-256 hash (64 hex digits, colons allowed, or 44 base64 characters)"
                )
            })
    }
}

impl Pin {
    /// The SHA-256 of `data`
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Standard base64 (padded), as curl and HPKP write public-key pins
    pub fn to_base64(&self) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(44);
        for chunk in self.0.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// The pins a certificate answers to
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertPins {
    /// SHA-256 of the certificate
    pub cert: Pin,
    /// SHA-256 of its public key (`None` if the certificate does not parse)
    pub public_key: Option<Pin>,
}

impl CertPins {
    /// Hash `cert` and its public key
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let public_key = webpki::EndEntityCert::try_from(cert)
            .ok()
            .map(|c| Pin::of(c.subject_public_key_info().as_ref()));
        Self {
            cert: Pin::of(cert.as_ref()),
            public_key,
        }
    }

    /// Whether `pin` is one of them
    pub fn matches(&self, pin: &Pin) -> bool {
        self.cert == *pin || self.public_key.as_ref() == Some(pin)
    }
}

impl fmt::Display for CertPins {
    /// `certificate sha256 HEX, public key sha256 BASE64`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate sha256 {}", self.cert)?;
        if let Some(k) = &self.public_key {
            write!(f, ", public key sha256 {}", k.to_base64())?;
        }
        Ok(())
    }
}

/// Whether rustls refused a certificate because it is a CA certificate
/// presented as a server's own (webpki's `CaUsedAsEndEntity`: what a
/// self-signed certificate made by a plain `openssl req -x509` gets)
pub fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
        }
        _ => false,
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pin_forms() {
        // sha256("abc")
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let pin = Pin::of(b"abc");
        assert_eq!(pin.to_string(), hex);
        let b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        assert_eq!(pin.to_base64(), b64);
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            hex.to_string(),
            hex.to_uppercase(),
            colons,
            b64.to_string(),
            b64.trim_end_matches('=').to_string(),
            format!("sha256//{b64}"),
            format!("sha256:{hex}"),
        ] {
            assert_eq!(form.parse::<Pin>(), Ok(pin), "{form}");
        }
        for bad in ["", "abc", &hex[..62], "!!!!", &b64[..40], "sha256//"] {
            let e = bad.parse::<Pin>().unwrap_err();
            assert!(e.contains("is not a SHA-256 hash"), "{bad}: {e}");
        }
    }

    #[test]
    fn test_errors_name_the_flag_and_the_file() {
        let dir = std::env::temp_dir().join(format!("mproxy-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = load_certs(&missing, "--ca-file").unwrap_err().to_string();
        assert!(
            e.starts_with("--ca-file ") && e.contains("missing.pem: cannot read"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = load_certs(&empty, "--tls-cert").unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_key(&empty, "--tls-key").unwrap_err().to_string();
        assert!(e.contains("--tls-key") && e.contains("private key"), "{e}");
        let cut = dir.join("cut.pem");
        std::fs::write(&cut, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let e = load_certs(&cut, "--tls-cert").unwrap_err().to_string();
        assert!(e.contains("not valid PEM"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
