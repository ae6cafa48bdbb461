//! The CA API's server certificate, swappable while the API serves ([`ApiCert`]).
//!
//! The API's rustls config resolves its certificate through [`ApiCert`] on every handshake instead
//! of holding one fixed certificate. When the CA renews its own API certificate
//! ([`crate::ca_renew`]), [`ApiCert::reload`] reads the new files and replaces the certified key
//! in one step under a lock. A connection already open keeps the TLS session it negotiated (its
//! keys do not depend on the certificate afterwards), so keep-alive requests on it go on being
//! served; every handshake after the swap gets the new certificate. The daemon is not restarted
//! and no connection is dropped.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certified key the API presents, replaceable while it serves.
#[derive(Debug)]
pub struct ApiCert {
    current: RwLock<Arc<CertifiedKey>>,
}

/// Reads a certificate chain (leaf first, then the root) and its key into a certified key,
/// checking that they fit together.
pub fn certified_key(fullchain: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fullchain)
        .map_err(|e| format!("cannot read {}: {e}", fullchain.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse {}: {e}", fullchain.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", fullchain.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, &crate::tls::provider()).map_err(|e| {
        format!(
            "the certificate {} and key {} do not fit together: {e}",
            fullchain.display(),
            key.display()
        )
    })
}

impl ApiCert {
    /// The resolver for the certificate in `fullchain` and its `key`.
    pub fn load(fullchain: &Path, key: &Path) -> Result<Arc<Self>, String> {
        Ok(Arc::new(ApiCert {
            current: RwLock::new(Arc::new(certified_key(fullchain, key)?)),
        }))
    }

    /// Replaces the certificate for the handshakes from now on; on an error the current one stays.
    pub fn reload(&self, fullchain: &Path, key: &Path) -> Result<(), String> {
        let fresh = Arc::new(certified_key(fullchain, key)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The leaf certificate presented now (DER).
    pub fn leaf_der(&self) -> Option<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert
            .first()
            .cloned()
    }
}

impl ResolvesServerCert for ApiCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_leaves_the_current_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1, der1) = write_pair(dir.path(), "one");
        let (c2, k2, der2) = write_pair(dir.path(), "two");
        let cert = ApiCert::load(&c1, &k1).unwrap();
        assert_eq!(cert.leaf_der().unwrap().as_ref(), der1.as_slice());
        cert.reload(&c2, &k2).unwrap();
        assert_eq!(cert.leaf_der().unwrap().as_ref(), der2.as_slice());
        // A certificate with another key's file: refused, the current one stays.
        let err = cert.reload(&c1, &k2).unwrap_err();
        assert!(err.contains("do not fit together"), "{err}");
        assert!(cert.reload(&dir.path().join("missing.pem"), &k2).is_err());
        assert_eq!(cert.leaf_der().unwrap().as_ref(), der2.as_slice());
    }
}
