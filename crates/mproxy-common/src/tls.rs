//! PEM files for rustls (feature `tls`): certificates and keys read at
//! start-up, with one-line errors naming the flag and the file
//!
//! Shared by `mproxy-proxy` (TLS upstreams) and `mproxy-reverseproxy`
//! (TLS listeners); behind a feature so the binaries without TLS do not
//! link rustls. The crypto provider is always *ring* (no cmake or NASM to
//! build), passed explicitly rather than installed process-wide.

use std::path::Path;
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

#[cfg(test)]
mod tests {
    use super::*;

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
