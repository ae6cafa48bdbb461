//! TLS for the inter-node API (rustls with the ring provider).
//!
//! Server: the CA machine presents its own leaf with the root (`fullchain.pem`); client
//! certificates are optional; the TLS layer checks only that the client holds the key, and the
//! routes check the chain to the mesh root ([`crate::client_auth`]: members use theirs for
//! `GET /v1/certmesh/roster` and `POST /v1/certmesh/renew`).
//!
//! Client: trust comes from the pinned CA fingerprint, not from host names — a member usually
//! reaches the CA by address, and the CA's identity *is* its root. [`CaPin`] requires the server
//! to send the root after its leaf, checks the root's SHA-256 against the pin (or records it on
//! first contact so the user can confirm it), and verifies that the leaf chains to that root and
//! signed the handshake.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The crypto provider every certmesh TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA API's server config: it presents whatever `cert` holds at each handshake, so the CA's
/// own certificate can be renewed while the API serves ([`crate::hot_cert`]).
pub fn server_config(
    cert: Arc<crate::hot_cert::ApiCert>,
    ca_pem: &str,
) -> Result<ServerConfig, String> {
    // Client certificates are judged by the routes that need them (crate::client_auth), so a
    // foreign or expired one gets a clear, audited refusal instead of a TLS alert.
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        ca.map_err(|e| format!("cannot parse the root certificate: {e}"))?;
    }
    let provider = provider();
    let clients = crate::client_auth::PresentedCert::new();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Pins the CA by the SHA-256 of its root certificate.
#[derive(Debug)]
pub struct CaPin {
    expected: Option<String>,
    seen: Mutex<Option<CertificateDer<'static>>>,
    leaf: Mutex<Option<CertificateDer<'static>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl CaPin {
    /// A verifier that requires `expected` (lower-case hex), or, with `None`, accepts a
    /// self-consistent chain and records the root for the user to confirm.
    pub fn new(expected: Option<String>) -> Arc<Self> {
        Arc::new(CaPin {
            expected,
            seen: Mutex::new(None),
            leaf: Mutex::new(None),
            algorithms: provider().signature_verification_algorithms,
        })
    }

    /// The root certificate the server presented (after a handshake).
    pub fn seen_root(&self) -> Option<CertificateDer<'static>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The server's own certificate, once it chained to the pinned root (after a handshake):
    /// whose API answered ([`crate::follow`] checks a higher term's claimant by it).
    pub fn verified_leaf(&self) -> Option<CertificateDer<'static>> {
        self.leaf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A client config using this pin, presenting `client_auth` (cert chain + key) if given.
    pub fn client_config(
        self: &Arc<Self>,
        client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientConfig, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(self.clone());
        let mut config = match client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the member certificate and key do not fit together: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn general(message: String) -> rustls::Error {
    rustls::Error::General(message)
}

impl ServerCertVerifier for CaPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates.last().ok_or_else(|| {
            general(
                "the server did not send a root certificate after its own (not a certmesh CA?)"
                    .into(),
            )
        })?;
        let fingerprint = koi_certmesh_core::fingerprint_sha256(root.as_ref());
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(root.clone().into_owned());
        if let Some(expected) = &self.expected
            && *expected != fingerprint
        {
            return Err(general(format!(
                "the CA's fingerprint is {fingerprint}, not the pinned {expected}"
            )));
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone().into_owned())
            .map_err(|e| general(format!("the CA's root certificate is unusable: {e}")))?;
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &[],
            now,
            self.algorithms.all,
        )?;
        *self
            .leaf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
