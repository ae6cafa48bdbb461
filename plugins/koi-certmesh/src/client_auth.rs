//! Client certificates on the CA's API. The TLS layer asks every client for a certificate and
//! checks only that the client holds its key (the handshake signature, [`PresentedCert`]); which
//! mesh issued it, and whether it is still valid, is decided by the route that needs it
//! ([`MemberCert::verify`]). That is what lets `POST /v1/certmesh/renew` answer a certificate from
//! another mesh, or an expired one, with a clear refusal that is audited, instead of a TLS alert
//! the member cannot explain; `GET /v1/certmesh/roster` requires a valid member certificate.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Accepts any client certificate whose key signed the handshake; see the module docs.
#[derive(Debug)]
pub struct PresentedCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PresentedCert {
    /// The verifier, with the provider's signature algorithms.
    pub fn new() -> Arc<Self> {
        Arc::new(PresentedCert {
            algorithms: crate::tls::provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for PresentedCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// A client certificate that the mesh's root signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCert {
    /// SHA-256 of the certificate (what the roster records).
    pub fingerprint: String,
    /// Serial, lower-case hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Start of validity.
    pub not_before: OffsetDateTime,
}

impl MemberCert {
    /// Checks that `der` was signed by the root `ca_der` (issuer name and signature) and returns
    /// its facts; the validity period is the caller's to judge. `Err` says why not, for a refusal.
    pub fn verify(der: &[u8], ca_der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("the client certificate does not parse ({e})"))?;
        let (_, root) = X509Certificate::from_der(ca_der)
            .map_err(|e| format!("the mesh root does not parse ({e})"))?;
        if cert.issuer() != root.subject()
            || cert.verify_signature(Some(root.public_key())).is_err()
        {
            return Err(format!(
                "the client certificate (issuer \"{}\") was not issued by this mesh's CA",
                crate::refusals::bounded(&cert.issuer().to_string(), 120)
            ));
        }
        let serial = hex_of(cert.raw_serial());
        Ok(MemberCert {
            fingerprint: koi_certmesh_core::fingerprint_sha256(der),
            serial,
            not_after: cert.validity().not_after.to_datetime(),
            not_before: cert.validity().not_before.to_datetime(),
        })
    }

    /// Whether it is inside its validity period at `now`.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn hex_of(bytes: &[u8]) -> String {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `der` is a currently valid certificate of the mesh whose root is `ca_der` (for
/// member-only routes such as the roster).
pub fn is_current_member_cert(der: &[u8], ca_der: &[u8]) -> bool {
    MemberCert::verify(der, ca_der).is_ok_and(|c| c.valid_at(OffsetDateTime::now_utc()))
}

/// The raw subject public key of the DER certificate `der`.
pub fn public_key_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}
