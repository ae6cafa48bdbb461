//! Leaf issuance. From a member's CSR (PEM): the CSR's own signature is verified, only its public
//! key is used (it must be ECDSA P-256), and everything else it asks for — CA flag, key usages,
//! names, extensions — is ignored. The leaf gets exactly what the CA decides: `CA:FALSE`
//! (`IsCa::ExplicitNoCa`), key usage `digitalSignature`, EKU serverAuth + clientAuth, a 30-day
//! validity, a random 16-byte serial, AKI/SKI, and the SANs the caller supplied after each one has
//! passed the mesh [`Scope`](crate::Scope). "Issue for a device" does the same with a key the
//! library generates, for machines that cannot run certmesh themselves.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use zeroize::{Zeroize, Zeroizing};

use crate::ca::{CertAuthority, fingerprint_sha256, pem_to_der, random_serial};
use crate::error::{Error, Result};

/// Leaf certificate lifetime.
pub const LEAF_VALIDITY_DAYS: i64 = 30;
/// How far `notBefore` is back-dated to absorb clock skew between machines.
pub const LEAF_BACKDATE_SECONDS: i64 = 60;
/// Largest CSR accepted (PEM text).
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// Most SANs accepted in one certificate.
pub const MAX_SANS: usize = 64;

/// What the caller wants certified. The names are checked against the scope; nothing is taken
/// from the CSR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafRequest {
    /// Subject common name (normally the host name); also added as a DNS SAN.
    pub hostname: String,
    /// Further DNS SANs (`host.local`, `host.<zone>`, aliases).
    pub dns_names: Vec<String>,
    /// IP SANs (LAN addresses).
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetime of the leaf; `None` is [`LEAF_VALIDITY_DAYS`]. Only koi-certmesh's debug-build
    /// test clock sets it (`KOI_TEST_CERT_LIFETIME_SECS`, docs/certmesh.md "Testing time").
    pub validity: Option<Duration>,
}

impl LeafRequest {
    /// A request for `hostname` with no further names.
    pub fn new(hostname: impl Into<String>) -> Self {
        LeafRequest {
            hostname: hostname.into(),
            ..LeafRequest::default()
        }
    }
}

/// A freshly signed leaf certificate and the facts the roster records about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// The root, PEM (for `ca.pem`).
    pub ca_pem: String,
    /// Leaf followed by root (for `fullchain.pem`).
    pub fullchain_pem: String,
    /// Serial number, hex.
    pub serial_hex: String,
    /// SHA-256 of the leaf DER, hex.
    pub fingerprint: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS SANs as issued (normalised, de-duplicated).
    pub dns_names: Vec<String>,
    /// IP SANs as issued.
    pub ip_addresses: Vec<IpAddr>,
}

/// A certificate plus the private key the library generated for a device.
pub struct DeviceBundle {
    /// The certificate and its facts.
    pub cert: IssuedCert,
    /// The device's private key, PKCS#8 PEM. Handle as a secret; zeroized on drop.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DeviceBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBundle")
            .field("cert", &self.cert)
            .field("key_pem", &"[private key elided]")
            .finish()
    }
}

struct DeviceKey(KeyPair);
impl Drop for DeviceKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl CertAuthority {
    /// Issues a leaf for the public key in `csr_pem`, with the names in `req`.
    ///
    /// Refuses: oversized or malformed PEM, a CSR whose signature does not verify, keys other
    /// than ECDSA P-256, names outside the scope, a leaf that would outlive the root.
    pub fn issue_from_csr(
        &self,
        csr_pem: &str,
        req: &LeafRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCert> {
        let spki = verified_csr_public_key(csr_pem)?;
        self.issue_for_key(&spki, req, now)
    }

    /// Generates a P-256 key for a device and issues a leaf for it (`koi certmesh issue`).
    pub fn issue_for_device(&self, req: &LeafRequest, now: OffsetDateTime) -> Result<DeviceBundle> {
        let key = DeviceKey(
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| Error::crypto("generate the device key", e))?,
        );
        let cert = self.issue_for_key(&key.0, req, now)?;
        Ok(DeviceBundle {
            cert,
            key_pem: Zeroizing::new(key.0.serialize_pem()),
        })
    }

    /// Re-issues a device's certificate for the key certmesh generated for it earlier
    /// (`koi certmesh issue --renew`): `key_pem` is that key (PKCS#8 PEM, read back from the
    /// device's folder); the key is parsed, used for its public half only, and zeroized.
    pub fn issue_for_device_key(
        &self,
        key_pem: &str,
        req: &LeafRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCert> {
        let key = DeviceKey(
            KeyPair::from_pem(key_pem).map_err(|e| Error::crypto("read the device key", e))?,
        );
        self.issue_for_key(&key.0, req, now)
    }

    /// Re-signs a certificate for a public key the CA already certified (a renewal pushed by
    /// the CA, where no CSR can be had): `spki_der` is the DER SubjectPublicKeyInfo read from the
    /// member's current certificate, which must be ECDSA P-256. The names in `req` are checked
    /// against the scope as for any leaf.
    pub fn issue_for_public_key(
        &self,
        spki_der: &[u8],
        req: &LeafRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCert> {
        let refuse = |reason: String| Error::Issuance {
            reason,
            next: "Renew from the member instead (`koi certmesh renew --now` on it).",
        };
        let spki = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| refuse(format!("the public key to re-sign is not usable ({e})")))?;
        if spki.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(refuse(
                "the public key to re-sign is not ECDSA P-256 (the only key type certmesh issues for)"
                    .into(),
            ));
        }
        self.issue_for_key(&spki, req, now)
    }

    fn issue_for_key(
        &self,
        public_key: &impl PublicKeyData,
        req: &LeafRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedCert> {
        let (dns_names, ip_addresses) = self.checked_names(req)?;
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let not_before = now - Duration::seconds(LEAF_BACKDATE_SECONDS);
        let not_after = now
            + req
                .validity
                .unwrap_or_else(|| Duration::days(LEAF_VALIDITY_DAYS));
        if not_after > self.not_after() {
            return Err(Error::Issuance {
                reason: format!(
                    "the CA certificate expires on {}, before this leaf would",
                    self.not_after()
                ),
                next: "Create a new CA (the old one is near the end of its life).",
            });
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_names[0].as_str());
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let mut sans = Vec::with_capacity(dns_names.len() + ip_addresses.len());
        for d in &dns_names {
            let ia5 = d
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| Error::InvalidName {
                    name: d.clone(),
                    reason: e.to_string(),
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;

        let issuer = Issuer::from_ca_cert_der(&self.cert_der().to_vec().into(), self.key_pair())
            .map_err(|source| Error::Rcgen {
                what: "issuer (CA)",
                source,
            })?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|source| Error::Rcgen {
                what: "leaf",
                source,
            })?;
        let cert_pem = cert.pem();
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        Ok(IssuedCert {
            fullchain_pem: format!("{cert_pem}{}", self.cert_pem()),
            ca_pem: self.cert_pem().to_owned(),
            fingerprint: fingerprint_sha256(cert.der()),
            cert_pem,
            serial_hex,
            not_before,
            not_after,
            dns_names,
            ip_addresses,
        })
    }

    /// Normalises and scope-checks every requested name. The host name comes first.
    fn checked_names(&self, req: &LeafRequest) -> Result<(Vec<String>, Vec<IpAddr>)> {
        if req.hostname.trim().is_empty() {
            return Err(Error::Issuance {
                reason: "the request has no host name".into(),
                next: "Pass the member's host name; it becomes the subject and the first SAN.",
            });
        }
        if 1 + req.dns_names.len() + req.ip_addresses.len() > MAX_SANS {
            return Err(Error::Issuance {
                reason: format!("more than {MAX_SANS} names were requested"),
                next: "Ask for fewer names (aliases can go in a second certificate).",
            });
        }
        let scope = self.scope();
        let mut dns = Vec::new();
        for name in std::iter::once(&req.hostname).chain(req.dns_names.iter()) {
            let n = scope.check_dns(name)?;
            if !dns.contains(&n) {
                dns.push(n);
            }
        }
        let mut ips = Vec::new();
        for ip in &req.ip_addresses {
            scope.check_ip(*ip)?;
            let ip = crate::scope::canonical_ip(*ip);
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        Ok((dns, ips))
    }
}

/// Parses a PEM CSR, verifies its self-signature, and returns its public key (P-256 only).
pub fn verified_csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo> {
    let bad = |reason: String| Error::InvalidCsr { reason };
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(bad(format!("it is larger than {MAX_CSR_PEM_BYTES} bytes")));
    }
    let der = pem_to_der(csr_pem, "CERTIFICATE REQUEST").map_err(bad)?;
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| bad(format!("it does not parse as PKCS#10 ({e})")))?;
    if !rest.is_empty() {
        return Err(bad("there are bytes after the request".into()));
    }
    csr.verify_signature().map_err(|e| {
        bad(format!(
            "its signature does not verify ({e}); it was altered or not signed by its own key"
        ))
    })?;
    let spki = SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| bad(format!("its public key is not usable ({e})")))?;
    if spki.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(bad(
            "its key is not ECDSA P-256 (the only key type certmesh issues for)".into(),
        ));
    }
    Ok(spki)
}

/// The DER SubjectPublicKeyInfo of a private key in PKCS#8 PEM (to compare a device's key file
/// with its certificate before re-issuing for it).
pub fn public_key_der_of(key_pem: &str) -> Result<Vec<u8>> {
    let key =
        DeviceKey(KeyPair::from_pem(key_pem).map_err(|e| Error::crypto("read the device key", e))?);
    Ok(key.0.subject_public_key_info())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaOptions;
    use crate::scope::Scope;
    use x509_parser::prelude::X509Certificate;

    fn ca(scope: Scope) -> CertAuthority {
        CertAuthority::create(
            &CaOptions::new("Koi test CA", scope),
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    fn csr(key: &KeyPair, ask_ca: bool) -> String {
        let mut p = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        if ask_ca {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn csr_asking_for_ca_gets_a_leaf_with_both_ekus_and_only_caller_names() {
        let ca = ca(Scope::unrestricted());
        let key = KeyPair::generate().unwrap();
        let mut req = LeafRequest::new("stone-01");
        req.dns_names = vec![
            "stone-01.local".into(),
            "STONE-01.lan".into(),
            "stone-01".into(),
        ];
        req.ip_addresses = vec!["192.168.1.20".parse().unwrap()];
        let out = ca
            .issue_from_csr(&csr(&key, true), &req, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(
            out.dns_names,
            vec!["stone-01", "stone-01.local", "stone-01.lan"]
        );
        let der = pem_to_der(&out.cert_pem, "CERTIFICATE").unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(x.raw_serial().len(), 16);
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life, LEAF_VALIDITY_DAYS * 86400 + LEAF_BACKDATE_SECONDS);
        let text = format!("{:?}", x.subject_alternative_name().unwrap().unwrap().value);
        assert!(
            !text.contains("evil"),
            "CSR names leaked into the leaf: {text}"
        );
    }

    #[test]
    fn a_public_key_is_re_signed_as_is_and_only_p256_is_accepted() {
        let ca = ca(Scope::unrestricted());
        let key = KeyPair::generate().unwrap();
        let first = ca
            .issue_from_csr(
                &csr(&key, false),
                &LeafRequest::new("stone-01"),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let der = pem_to_der(&first.cert_pem, "CERTIFICATE").unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        let again = ca
            .issue_for_public_key(
                x.public_key().raw,
                &LeafRequest::new("stone-01"),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert_ne!(again.serial_hex, first.serial_hex);
        let der2 = pem_to_der(&again.cert_pem, "CERTIFICATE").unwrap();
        let (_, y) = X509Certificate::from_der(&der2).unwrap();
        assert_eq!(
            y.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(matches!(
            ca.issue_for_public_key(
                &ed.subject_public_key_info(),
                &LeafRequest::new("x"),
                OffsetDateTime::now_utc()
            ),
            Err(Error::Issuance { .. })
        ));
        assert!(
            ca.issue_for_public_key(
                b"garbage",
                &LeafRequest::new("x"),
                OffsetDateTime::now_utc()
            )
            .is_err()
        );
    }

    #[test]
    fn tampered_csr_is_refused() {
        let key = KeyPair::generate().unwrap();
        let mut der = pem_to_der(&csr(&key, false), "CERTIFICATE REQUEST").unwrap();
        // Flip a byte inside the requested subject/extension area (not the signature).
        let i = der.len() / 3;
        der[i] ^= 0x01;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        assert!(matches!(
            verified_csr_public_key(&pem),
            Err(Error::InvalidCsr { .. })
        ));
    }

    #[test]
    fn garbage_csrs_never_panic() {
        for input in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(verified_csr_public_key(input).is_err());
        }
        let big = "A".repeat(MAX_CSR_PEM_BYTES + 1);
        assert!(verified_csr_public_key(&big).is_err());
    }

    #[test]
    fn non_p256_csr_is_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let e = verified_csr_public_key(&csr(&key, false)).unwrap_err();
        assert!(e.to_string().contains("P-256"), "{e}");
    }

    #[test]
    fn out_of_scope_names_and_ips_are_refused() {
        let ca = ca(Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap());
        let key = KeyPair::generate().unwrap();
        let p = csr(&key, false);
        let now = OffsetDateTime::now_utc();
        let mut ok = LeafRequest::new("stone.lab.example");
        ok.ip_addresses = vec!["10.77.0.5".parse().unwrap()];
        assert!(ca.issue_from_csr(&p, &ok, now).is_ok());
        let mut bad_ip = ok.clone();
        bad_ip.ip_addresses.push("10.78.0.5".parse().unwrap());
        assert!(matches!(
            ca.issue_from_csr(&p, &bad_ip, now),
            Err(Error::OutOfScope { .. })
        ));
        let mut bad_dns = ok.clone();
        bad_dns.dns_names.push("stone.local".into());
        assert!(matches!(
            ca.issue_from_csr(&p, &bad_dns, now),
            Err(Error::OutOfScope { .. })
        ));
        assert!(matches!(
            ca.issue_for_device(&LeafRequest::new("printer.other.example"), now),
            Err(Error::OutOfScope { .. })
        ));
    }

    /// Proves the root's name constraints bind verifiers, not just our own checks: a leaf signed
    /// with the CA key but bypassing the scope check is rejected by `openssl verify`.
    #[test]
    fn openssl_enforces_the_name_constraints() {
        let ca = ca(Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let issuer =
            Issuer::from_ca_cert_der(&ca.cert_der().to_vec().into(), ca.key_pair()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        for (i, (dns, ip, ok)) in [
            ("a.lab.example", "10.77.0.1", true),
            ("bank.example.com", "10.77.0.1", false),
            ("a.lab.example", "203.0.113.8", false),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = CertificateParams::new(vec![dns.to_owned()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
            p.is_ca = IsCa::ExplicitNoCa;
            let pem = p.signed_by(&leaf_key, &issuer).unwrap().pem();
            let name = format!("leaf{i}.pem");
            std::fs::write(dir.path().join(&name), pem).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["verify", "-CAfile", "ca.pem", &name])
                .current_dir(dir.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), ok, "{dns} {ip}: {text}");
            if !ok {
                assert!(text.contains("permitted subtree violation"), "{text}");
            }
        }
    }

    #[test]
    fn device_issuance_returns_a_matching_key() {
        let ca = ca(Scope::unrestricted());
        let b = ca
            .issue_for_device(&LeafRequest::new("printer"), OffsetDateTime::now_utc())
            .unwrap();
        assert!(b.key_pem.contains("BEGIN PRIVATE KEY"));
        let k = KeyPair::from_pem(&b.key_pem).unwrap();
        let der = pem_to_der(&b.cert.cert_pem, "CERTIFICATE").unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            k.public_key_raw()
        );
        assert!(!format!("{b:?}").contains("PRIVATE"));
    }
}
