//! Small read-only looks at PEM certificates: expiry, fingerprint, public key. Used to report
//! status and to check that what a CA sent back is what was asked for.

use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The DER bytes of the first PEM block.
pub fn der(pem: &str) -> Option<Vec<u8>> {
    let (_, block) = parse_x509_pem(pem.as_bytes()).ok()?;
    Some(block.contents)
}

/// `notAfter` as RFC 3339.
pub fn not_after(pem: &str) -> Option<String> {
    let der = der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    cert.validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// SHA-256 fingerprint (lower-case hex) of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Option<String> {
    der(pem).map(|d| koi_certmesh_core::fingerprint_sha256(&d))
}

/// The raw subject public key (SEC1 point for EC keys) of the first certificate in `pem`.
pub fn public_key(pem: &str) -> Option<Vec<u8>> {
    let der = der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}
