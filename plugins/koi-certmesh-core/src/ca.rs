//! The root certificate authority: an ECDSA P-256 key and a self-signed root certificate built
//! with rcgen. The root has a random 16-byte serial (never rcgen's key-derived default, which
//! would repeat on re-issue with the same key), SKI and AKI, explicit validity, `CA:TRUE,
//! pathlen:0` (the root signs leaves directly), key usage `keyCertSign, cRLSign`, and the mesh
//! [`Scope`] as critical name constraints. The private key lives only inside [`CertAuthority`];
//! nothing in the public API returns it, and it is zeroized on drop.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber, SigningKey,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::scope::Scope;

/// Default lifetime of the root certificate (10 years).
pub const DEFAULT_CA_VALIDITY_DAYS: i64 = 3650;

/// Options for [`CertAuthority::create`].
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Subject common name, e.g. "Koi certmesh CA (stone-01)".
    pub common_name: String,
    /// Optional subject organization.
    pub organization: Option<String>,
    /// Root lifetime in days.
    pub validity_days: i64,
    /// What the CA may certify.
    pub scope: Scope,
    /// Entropy the user supplied (`--entropy mash|passphrase|manual`), mixed with the OS RNG to
    /// make the CA key. `None` uses the OS RNG alone. Never the only source.
    pub extra_entropy: Option<Zeroizing<Vec<u8>>>,
}

impl CaOptions {
    /// Options with the default lifetime and the given name and scope.
    pub fn new(common_name: impl Into<String>, scope: Scope) -> Self {
        CaOptions {
            common_name: common_name.into(),
            organization: None,
            validity_days: DEFAULT_CA_VALIDITY_DAYS,
            scope,
            extra_entropy: None,
        }
    }
}

/// The CA's private key. Not `Clone`, not `Debug`-printable, zeroized on drop.
pub(crate) struct CaKey(KeyPair);

impl Drop for CaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A loaded, usable certificate authority (root key + root certificate).
pub struct CertAuthority {
    key: CaKey,
    cert_der: Vec<u8>,
    cert_pem: String,
    scope: Scope,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("fingerprint", &self.fingerprint())
            .field("scope", &self.scope)
            .field("key", &"[private key elided]")
            .finish()
    }
}

/// 16 random bytes for a serial number: top bit cleared (positive INTEGER) and the next bit set
/// (so DER keeps all 16 bytes): 126 random bits.
pub(crate) fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// A P-256 key whose scalar is SHA-256("koi-certmesh ca key" ‖ 32 OS-RNG bytes ‖ user entropy),
/// retried in the (≈2⁻¹²⁸) case the digest is not a valid scalar. The OS RNG alone already gives
/// a full-strength key; the user's input can only add to it, never replace it.
fn key_mixing_user_entropy(extra: &[u8]) -> Result<KeyPair> {
    use p256::pkcs8::EncodePrivateKey;
    for _ in 0..4 {
        let mut os = Zeroizing::new([0u8; 32]);
        rand::fill(&mut os[..]);
        let mut hasher = Sha256::new();
        hasher.update(b"koi-certmesh ca key");
        hasher.update(&os[..]);
        hasher.update(extra);
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(&hasher.finalize());
        let Ok(secret) = p256::SecretKey::from_slice(&scalar[..]) else {
            continue;
        };
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| Error::crypto("encode the CA key", e))?;
        return KeyPair::try_from(der.as_bytes()).map_err(|e| Error::crypto("load the CA key", e));
    }
    Err(Error::crypto(
        "generate the CA key",
        "four candidate scalars in a row were out of range",
    ))
}

/// SHA-256 of DER bytes as 64 lower-case hex digits (the pinned CA fingerprint format).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Normalises a user-typed fingerprint (`AB:CD ...`, any case) for comparison with
/// [`CertAuthority::fingerprint`].
pub fn normalize_fingerprint(input: &str) -> String {
    input
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl CertAuthority {
    /// Generates a new P-256 key and a self-signed root certificate valid from `now`.
    pub fn create(opts: &CaOptions, now: OffsetDateTime) -> Result<Self> {
        if opts.common_name.trim().is_empty() {
            return Err(Error::Issuance {
                reason: "the CA needs a common name".into(),
                next: "Pass a name such as \"Koi certmesh CA (stone-01)\".",
            });
        }
        if opts.validity_days < 1 {
            return Err(Error::Issuance {
                reason: "the CA validity must be at least one day".into(),
                next: "Pass a positive number of days.",
            });
        }
        let key = match &opts.extra_entropy {
            None => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| Error::crypto("generate the CA key", e))?,
            Some(extra) => key_mixing_user_entropy(extra)?,
        };
        let key = CaKey(key);
        let params = root_params(opts, now)?;
        let cert = params.self_signed(&key.0).map_err(|source| Error::Rcgen {
            what: "root",
            source,
        })?;
        Ok(CertAuthority {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            scope: opts.scope.clone(),
            not_after: params.not_after,
            key,
        })
    }

    /// Rebuilds the CA from its certificate (PEM) and its PKCS#8 private key (from the vault).
    /// The key must match the certificate's public key.
    pub(crate) fn from_parts(cert_pem: &str, pkcs8: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::InvalidCertificate {
            what: "of the CA (ca.pem)".into(),
            reason,
        };
        let der = pem_to_der(cert_pem, "CERTIFICATE").map_err(bad)?;
        let key = KeyPair::try_from(pkcs8).map_err(|e| Error::SealedFormat {
            what: "CA vault".into(),
            reason: format!("the CA key inside does not parse ({e})"),
        })?;
        let key = CaKey(key);
        if key.0.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(bad("the CA key is not ECDSA P-256".into()));
        }
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| bad(format!("it does not parse: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.0.public_key_raw() {
            return Err(bad(
                "its public key does not match the key in the vault (files from two different CAs?)"
                    .into(),
            ));
        }
        let scope = scope_from_cert(&x509).map_err(bad)?;
        let not_after = x509.validity().not_after.to_datetime();
        Ok(CertAuthority {
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            scope,
            not_after,
            key,
        })
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 fingerprint of the root certificate (64 hex digits), the value members pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.cert_der)
    }

    /// The mesh scope, as written in the root's name constraints.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// When the root certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA public key as an uncompressed SEC1 point (what audit-log verification uses).
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.key.0.public_key_raw().to_vec()
    }

    /// ECDSA P-256 / SHA-256 signature (DER) over `msg` with the CA key.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.key
            .0
            .sign(msg)
            .map_err(|e| Error::crypto("sign with the CA key", e))
    }

    /// The private key as PKCS#8 DER, only for sealing into the vault.
    pub(crate) fn key_pkcs8(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.0.serialize_der())
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key.0
    }
}

fn root_params(opts: &CaOptions, now: OffsetDateTime) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, opts.common_name.trim());
    if let Some(org) = &opts.organization {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    // Whole seconds: X.509 times have no fractions, and the stored value must equal the encoded one.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(opts.validity_days);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = Vec::new();
    params.name_constraints = opts.scope.name_constraints();
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// Reads the scope back from the root's name-constraints extension.
///
/// A domain-only scope was written with the private ranges as IP constraints; it reads back with
/// those ranges as explicit subnets, which has the same effect.
fn scope_from_cert(x509: &X509Certificate<'_>) -> std::result::Result<Scope, String> {
    let nc = x509
        .name_constraints()
        .map_err(|e| format!("its name constraints do not parse: {e}"))?;
    let Some(nc) = nc else {
        return Ok(Scope::unrestricted());
    };
    let mut domains: Vec<String> = Vec::new();
    let mut subnets: Vec<String> = Vec::new();
    for sub in nc.value.permitted_subtrees.iter().flatten() {
        match &sub.base {
            GeneralName::DNSName(d) => domains.push((*d).to_owned()),
            GeneralName::IPAddress(b) => {
                let net = match b.len() {
                    8 => {
                        let a: [u8; 4] = b[..4].try_into().map_err(|_| "bad IPv4 constraint")?;
                        let m: [u8; 4] = b[4..].try_into().map_err(|_| "bad IPv4 mask")?;
                        ipnet::Ipv4Net::with_netmask(a.into(), m.into())
                            .map(ipnet::IpNet::V4)
                            .map_err(|e| format!("bad IPv4 constraint: {e}"))?
                    }
                    32 => {
                        let a: [u8; 16] = b[..16].try_into().map_err(|_| "bad IPv6 constraint")?;
                        let m: [u8; 16] = b[16..].try_into().map_err(|_| "bad IPv6 mask")?;
                        ipnet::Ipv6Net::with_netmask(a.into(), m.into())
                            .map(ipnet::IpNet::V6)
                            .map_err(|e| format!("bad IPv6 constraint: {e}"))?
                    }
                    n => return Err(format!("an IP constraint of {n} bytes")),
                };
                subnets.push(net.to_string());
            }
            _ => return Err("a name constraint of a kind koi-certmesh does not write".into()),
        }
    }
    Scope::new(&domains, &subnets).map_err(|e| e.to_string())
}

/// Decodes exactly one PEM block with the given label; refuses anything else.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> std::result::Result<Vec<u8>, String> {
    let (rest, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("it is not PEM ({e})"))?;
    if block.label != label
        && !(label == "CERTIFICATE REQUEST" && block.label == "NEW CERTIFICATE REQUEST")
    {
        return Err(format!(
            "expected a PEM '{label}' block, found '{}'",
            block.label
        ));
    }
    if !rest.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("there is data after the PEM block (send exactly one)".into());
    }
    Ok(block.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_entropy_is_mixed_with_the_os_rng_never_alone() {
        let mut opts = CaOptions::new("Koi test CA", Scope::unrestricted());
        opts.extra_entropy = Some(Zeroizing::new(b"same keyboard mash".to_vec()));
        let now = OffsetDateTime::now_utc();
        let a = CertAuthority::create(&opts, now).unwrap();
        let b = CertAuthority::create(&opts, now).unwrap();
        // Same user input, different keys: the OS RNG is always in the mix.
        assert_ne!(a.public_key_sec1(), b.public_key_sec1());
        // The key is a working P-256 key matching its root (round trip through the vault form).
        let back = CertAuthority::from_parts(a.cert_pem(), &a.key_pkcs8()).unwrap();
        assert_eq!(back.public_key_sec1(), a.public_key_sec1());
    }

    #[test]
    fn root_has_random_16_byte_serial_pathlen0_ski_aki_and_constraints() {
        let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap();
        let ca = CertAuthority::create(
            &CaOptions::new("Koi test CA", scope),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let (_, x) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert_eq!(x.raw_serial().len(), 16);
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let mut ski = None;
        let mut aki = None;
        for ext in x.extensions() {
            match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    ski = Some(k.0.to_vec())
                }
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => {}
            }
        }
        assert!(ski.is_some());
        assert_eq!(ski, aki);
        assert!(x.name_constraints().unwrap().unwrap().critical);
        // Two roots never share a serial.
        let ca2 = CertAuthority::create(
            &CaOptions::new("Koi test CA", Scope::unrestricted()),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let (_, y) = X509Certificate::from_der(ca2.cert_der()).unwrap();
        assert_ne!(x.raw_serial(), y.raw_serial());
        assert!(y.name_constraints().unwrap().is_none());
    }

    #[test]
    fn from_parts_round_trips_and_reads_scope_back() {
        let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap();
        let ca = CertAuthority::create(
            &CaOptions::new("Koi test CA", scope.clone()),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let back = CertAuthority::from_parts(ca.cert_pem(), &ca.key_pkcs8()).unwrap();
        assert_eq!(back.scope(), &scope);
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(back.not_after(), ca.not_after());
        let other = CertAuthority::create(
            &CaOptions::new("Other", Scope::unrestricted()),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let err = CertAuthority::from_parts(ca.cert_pem(), &other.key_pkcs8()).unwrap_err();
        assert!(err.to_string().contains("does not match"));
    }

    #[test]
    fn fingerprint_normalisation() {
        assert_eq!(normalize_fingerprint("AB:cd 0F"), "abcd0f");
    }
}
