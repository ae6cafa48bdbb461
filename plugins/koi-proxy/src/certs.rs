//! Certificates: the files certmesh writes in `$KOI_HOME/certs/<host>/` (read, never written:
//! private keys stay certmesh's), loaded and checked into a [`HotCert`] that handshakes read
//! through an `ArcSwap`. A reload validates the new pair first (it parses, the key fits the
//! certificate, the certificate is still valid) and only then swaps it in one atomic step; a bad
//! pair keeps the current one and records why. Open connections keep the session they negotiated.

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider every TLS config and key load uses (ring; docs/proxy.md says why), its
/// cipher suites in the order the listeners prefer them ([`suite_rank`]).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let aes = aes_in_hardware();
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite(), aes));
    Arc::new(provider)
}

/// Where a cipher suite stands in the server's order (lower first): AES-128-GCM, then
/// AES-256-GCM, then ChaCha20-Poly1305 on a CPU with AES instructions; ChaCha20-Poly1305 first on
/// one without (a Raspberry Pi 4), where software AES is several times slower. AES-128 comes
/// before AES-256 as browsers rank them: the same security margin for a LAN certificate, and its
/// SHA-256 key schedule has hardware support where SHA-384's often has none (ring runs SHA-512
/// in plain code on AMD CPUs: a TLS 1.3 handshake with AES-256-GCM-SHA384 spent 12 % of its time
/// there).
pub fn suite_rank(suite: rustls::CipherSuite, aes_in_hardware: bool) -> u8 {
    use rustls::CipherSuite as S;
    let chacha = matches!(
        suite,
        S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    );
    let aes128 = matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    );
    match (chacha, aes128, aes_in_hardware) {
        (true, _, false) => 0,
        (false, true, _) => 1,
        (false, false, _) => 2,
        (true, _, true) => 3,
    }
}

/// Whether this CPU has AES and carry-less multiply instructions (what AES-GCM runs fast on).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// This machine's host name as certmesh names its directory: the first label, lower case.
pub fn machine_host() -> String {
    let uname = rustix::system::uname();
    let raw = uname.nodename().to_string_lossy().to_ascii_lowercase();
    raw.split('.').next().unwrap_or_default().to_owned()
}

/// What `status` shows about the certificate in use.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CertInfo {
    /// DNS names in the certificate.
    pub names: Vec<String>,
    /// Expiry (RFC 3339).
    pub not_after: String,
    /// Serial number (hex).
    pub serial: String,
}

/// A loaded pair: the key for handshakes and what it says.
struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// The file bytes it came from, to skip reloading what did not change.
    fingerprint: Vec<u8>,
}

/// One certificate directory, swappable while handshakes read it.
pub struct HotCert {
    dir: PathBuf,
    current: ArcSwapOption<CertifiedKey>,
    info: ArcSwapOption<CertInfo>,
    fingerprint: ArcSwap<Vec<u8>>,
    /// Why the last reload was refused (cleared by a good one).
    last_error: ArcSwapOption<String>,
    swaps: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HotCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCert").field("dir", &self.dir).finish()
    }
}

impl HotCert {
    /// A certificate for `dir`, loaded now if its files are there.
    pub fn new(dir: PathBuf) -> Arc<Self> {
        let cert = Arc::new(Self {
            dir,
            current: ArcSwapOption::empty(),
            info: ArcSwapOption::empty(),
            fingerprint: ArcSwap::from_pointee(Vec::new()),
            last_error: ArcSwapOption::empty(),
            swaps: std::sync::atomic::AtomicU64::new(0),
        });
        cert.reload();
        cert
    }

    /// The directory the files are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key handshakes get now (none until a valid pair was loaded).
    pub fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// What the certificate in use says.
    pub fn info(&self) -> Option<CertInfo> {
        self.info.load_full().map(|i| (*i).clone())
    }

    /// Why the last reload was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.load_full().map(|e| (*e).clone())
    }

    /// How many times a new pair was swapped in.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads and checks the files; swaps them in if they are good and new. Blocking (file reads):
    /// call it from `spawn_blocking`, or where a few small reads are acceptable.
    pub fn reload(&self) {
        match load(&self.dir) {
            Ok(loaded) => {
                self.last_error.store(None);
                if **self.fingerprint.load() == loaded.fingerprint {
                    return;
                }
                self.fingerprint.store(Arc::new(loaded.fingerprint));
                self.info.store(Some(Arc::new(loaded.info.clone())));
                self.current.store(Some(loaded.key));
                self.swaps
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    dir = %self.dir.display(),
                    serial = %loaded.info.serial,
                    "certificate loaded for new handshakes"
                );
            }
            Err(why) => {
                if self.current.load().is_some() {
                    tracing::warn!("kept the current certificate: {why}");
                } else {
                    tracing::info!("no certificate yet: {why}");
                }
                self.last_error.store(Some(Arc::new(why)));
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (certmesh writes it: `koi certmesh join` or `koi certmesh \
             renew --now`)",
            path.display()
        )
    })
}

/// Loads `fullchain.pem` (or `cert.pem`) and `key.pem` from `dir` and checks them.
fn load(dir: &Path) -> Result<Loaded, String> {
    let chain_path = if dir.join("fullchain.pem").exists() {
        dir.join("fullchain.pem")
    } else {
        dir.join("cert.pem")
    };
    let key_path = dir.join("key.pem");
    let chain_pem = read(&chain_path)?;
    let key_pem = read(&key_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse {}: {e}", chain_path.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{} holds no certificate", chain_path.display()))?;
    let info = describe(leaf.as_ref()).map_err(|e| {
        format!(
            "cannot parse the certificate in {}: {e}",
            chain_path.display()
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("cannot parse the key {}: {e}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "the certificate {} and key {} do not fit together: {e}",
            chain_path.display(),
            key_path.display()
        )
    })?;
    let mut fingerprint = chain_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok(Loaded {
        key: Arc::new(certified),
        info,
        fingerprint,
    })
}

/// Names, expiry and serial of a DER certificate; refuses one that has expired.
fn describe(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "it is not valid now (valid {} to {})",
            validity.not_before, validity.not_after
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let not_after = validity
        .not_after
        .to_datetime()
        .format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| validity.not_after.to_string());
    Ok(CertInfo {
        names,
        not_after,
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// Whether `names` (from a certificate) cover `host`, wildcards included.
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || n.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, names: &[&str]) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        describe(cert.der()).unwrap().serial
    }

    #[test]
    fn aes_128_leads_with_aes_hardware_and_chacha_leads_without() {
        let order = |aes: bool| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites.sort_by_key(|s| suite_rank(s.suite(), aes));
            p.cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        use rustls::CipherSuite as S;
        assert_eq!(
            order(true),
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        assert_eq!(
            order(false),
            [
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384
            ]
        );
        // Nothing is dropped: every suite ring offers is still offered.
        assert_eq!(
            provider().cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }

    #[test]
    fn a_good_pair_swaps_and_a_bad_one_keeps_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotCert::new(dir.path().to_path_buf());
        assert!(hot.key().is_none());
        assert!(hot.last_error().unwrap().contains("cert.pem"));
        let first = write_pair(dir.path(), &["grafana.lan"]);
        hot.reload();
        assert_eq!(hot.info().unwrap().serial, first);
        assert_eq!(hot.info().unwrap().names, vec!["grafana.lan".to_owned()]);
        // A key that belongs to another certificate: refused, the first stays.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.path().join("key.pem"), other.serialize_pem()).unwrap();
        hot.reload();
        assert!(hot.last_error().unwrap().contains("do not fit together"));
        assert_eq!(hot.info().unwrap().serial, first);
        assert!(hot.key().is_some());
        let second = write_pair(dir.path(), &["grafana.lan", "jellyfin.lan"]);
        hot.reload();
        assert_eq!(hot.info().unwrap().serial, second);
        assert_eq!(hot.swaps(), 2);
    }

    #[test]
    fn wildcards_cover_one_label() {
        let names = vec!["*.lan".to_owned(), "stone.lan".to_owned()];
        assert!(covers(&names, "grafana.lan"));
        assert!(covers(&names, "stone.lan"));
        assert!(!covers(&names, "a.b.lan"));
        assert!(!covers(&["x.lan".to_owned()], "grafana.lan"));
    }
}
