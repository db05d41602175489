//! Test certificates made with rcgen, shared by the TLS test files
//! (`mod pki;` in each): a CA, leaf certificates signed by it, and both as
//! PEM files for the binaries' `--ca-file`, `--tls-cert`, ... flags

// Each test crate that includes this module uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate, its key, and both as PEM files
pub(crate) struct Issued {
    pub(crate) cert: Certificate,
    pub(crate) key: KeyPair,
    pub(crate) cert_pem: PathBuf,
    pub(crate) key_pem: PathBuf,
}

impl Issued {
    /// The certificate as a one-element chain
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    /// The key in rustls form
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// What a leaf certificate is for
#[derive(Clone, Copy)]
pub(crate) enum Leaf {
    Server,
    /// A server certificate valid only in 2000
    ExpiredServer,
    Client,
}

fn write_pems(dir: &Path, name: &str, cert: Certificate, key: KeyPair) -> Issued {
    let cert_pem = dir.join(format!("{name}.pem"));
    let key_pem = dir.join(format!("{name}.key"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    Issued {
        cert,
        key,
        cert_pem,
        key_pem,
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

/// A self-signed CA, written to `dir/NAME.pem` and `dir/NAME.key`
pub(crate) fn make_ca(dir: &Path, name: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = dn(&format!("mproxy test {name}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    write_pems(dir, name, cert, key)
}

/// A leaf certificate for `sans`, signed by `ca`, written like [`make_ca`]
pub(crate) fn issue(dir: &Path, name: &str, ca: &Issued, sans: &[&str], kind: Leaf) -> Issued {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_string()).collect();
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name = dn(&format!("mproxy test {name}"));
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![match kind {
        Leaf::Client => ExtendedKeyUsagePurpose::ClientAuth,
        _ => ExtendedKeyUsagePurpose::ServerAuth,
    }];
    if let Leaf::ExpiredServer = kind {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    write_pems(dir, name, cert, key)
}
