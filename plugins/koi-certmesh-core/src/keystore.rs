//! Encryption at rest. A passphrase is stretched with Argon2id into a 256-bit key, which seals
//! data with AES-256-GCM under a fresh random 96-bit nonce. The envelope (JSON) records the KDF
//! parameters, salt and nonce; all of them, plus a format tag and a purpose string, are bound as
//! associated data, so a file cannot be re-labelled, moved between purposes or weakened without
//! failing authentication. Plaintext only ever exists in memory, in `Zeroizing` buffers.
//!
//! On top of that, the CA store: a directory holding `ca.pem` (the root certificate) and
//! `vault.sealed` (the CA private key and the TOTP secret, sealed together so one unlock costs
//! one Argon2id run). Files are 0600, the directory 0700.
//!
//! Parameters ([`KdfParams::RECOMMENDED`]): Argon2id v1.3, m = 64 MiB, t = 3, p = 1. See the
//! crate README for the measurement and the reasoning.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::atomic::{ensure_private_dir, write_atomic};
use crate::ca::CertAuthority;
use crate::error::{Error, Result};
use crate::totp::TotpSecret;

/// Envelope format tag.
pub const SEALED_FORMAT: &str = "koi-certmesh-sealed";
/// Envelope format version.
pub const SEALED_VERSION: u32 = 1;
/// Shortest passphrase accepted when sealing.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
const SALT_BYTES: usize = 16;
const NONCE_BYTES: usize = 12;
/// Purpose string of the CA vault.
pub const VAULT_PURPOSE: &str = "ca-vault";
/// File name of the root certificate inside the CA store.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the sealed vault inside the CA store.
pub const VAULT_FILE: &str = "vault.sealed";

/// A passphrase typed by the operator. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(s: impl Into<String>) -> Self {
        let s: String = s.into();
        Passphrase(s.into_bytes())
    }
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([elided])")
    }
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// m = 64 MiB, t = 3, p = 1 (RFC 9106's second recommended option is 64 MiB, t = 3, p = 4;
    /// p = 1 because the target is a single-core-speed ARM board and argon2 here is
    /// single-threaded).
    pub const RECOMMENDED: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 1,
    };
    /// Cheap parameters for tests only; never use for real secrets.
    #[doc(hidden)]
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        m_cost_kib: 256,
        t_cost: 1,
        p_cost: 1,
    };
    /// Upper bounds accepted from a file (a hostile file must not make us allocate 4 TiB).
    const MAX_M_KIB: u32 = 4 * 1024 * 1024;
    const MAX_T: u32 = 64;
    const MAX_P: u32 = 16;

    fn argon2(&self) -> std::result::Result<Argon2<'static>, String> {
        if self.m_cost_kib > Self::MAX_M_KIB
            || self.t_cost > Self::MAX_T
            || self.p_cost > Self::MAX_P
        {
            return Err(format!(
                "the Argon2id parameters (m={} KiB, t={}, p={}) exceed this build's limits",
                self.m_cost_kib, self.t_cost, self.p_cost
            ));
        }
        let p = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| format!("invalid Argon2id parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, p))
    }
}

/// KDF section of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfSection {
    /// Always "argon2id".
    pub alg: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    /// Cost parameters.
    #[serde(flatten)]
    pub params: KdfParams,
    /// Salt, base64.
    pub salt: String,
}

/// A sealed blob as stored on disk (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEnvelope {
    /// [`SEALED_FORMAT`].
    pub format: String,
    /// [`SEALED_VERSION`].
    pub version: u32,
    /// What the blob is for (bound into the AEAD).
    pub purpose: String,
    /// Key derivation.
    pub kdf: KdfSection,
    /// Always "aes-256-gcm".
    pub cipher: String,
    /// Nonce, base64.
    pub nonce: String,
    /// Ciphertext with the 16-byte tag appended, base64.
    pub ciphertext: String,
}

impl SealedEnvelope {
    fn aad(&self) -> Vec<u8> {
        format!(
            "{}|v{}|{}|{}|{}|m={}|t={}|p={}|{}|{}|{}",
            self.format,
            self.version,
            self.purpose,
            self.kdf.alg,
            self.kdf.version,
            self.kdf.params.m_cost_kib,
            self.kdf.params.t_cost,
            self.kdf.params.p_cost,
            self.kdf.salt,
            self.cipher,
            self.nonce
        )
        .into_bytes()
    }

    /// Reads and parses an envelope file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::SealedFormat {
            what: path.display().to_string(),
            reason: format!("it is not a sealed envelope ({e})"),
        })
    }

    /// Writes the envelope atomically as a 0600 file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::crypto("encode the envelope", e))?;
        write_atomic(path, &json)
    }
}

/// A key derived from a passphrase, with the salt and parameters it came from. Zeroized on drop.
pub struct SealingKey {
    key: Zeroizing<[u8; 32]>,
    salt: [u8; SALT_BYTES],
    params: KdfParams,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// Derives a key with a fresh random salt (for a new file or a passphrase change).
    pub fn derive_new(pass: &Passphrase, params: KdfParams) -> Result<Self> {
        if String::from_utf8_lossy(pass.bytes()).chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(Error::WeakPassphrase {
                reason: "it has fewer than 8 characters",
            });
        }
        let mut salt = [0u8; SALT_BYTES];
        rand::fill(&mut salt);
        Self::derive(pass, salt, params)
            .map_err(|reason| Error::crypto("derive the sealing key", reason))
    }

    /// Derives the key for an existing envelope (its salt and parameters).
    pub fn derive_for(pass: &Passphrase, env: &SealedEnvelope, what: &str) -> Result<Self> {
        let fmt_err = |reason: String| Error::SealedFormat {
            what: what.to_owned(),
            reason,
        };
        check_header(env).map_err(fmt_err)?;
        let salt_v = B64
            .decode(&env.kdf.salt)
            .map_err(|_| fmt_err("the salt is not base64".into()))?;
        let salt: [u8; SALT_BYTES] = salt_v
            .try_into()
            .map_err(|_| fmt_err("the salt is not 16 bytes".into()))?;
        Self::derive(pass, salt, env.kdf.params).map_err(fmt_err)
    }

    fn derive(
        pass: &Passphrase,
        salt: [u8; SALT_BYTES],
        params: KdfParams,
    ) -> std::result::Result<Self, String> {
        let argon = params.argon2()?;
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(pass.bytes(), &salt, key.as_mut())
            .map_err(|e| format!("Argon2id failed: {e}"))?;
        Ok(SealingKey { key, salt, params })
    }

    /// Seals `plaintext` for `purpose` under a fresh nonce.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<SealedEnvelope> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::fill(&mut nonce);
        let mut env = SealedEnvelope {
            format: SEALED_FORMAT.into(),
            version: SEALED_VERSION,
            purpose: purpose.into(),
            kdf: KdfSection {
                alg: "argon2id".into(),
                version: 0x13,
                params: self.params,
                salt: B64.encode(self.salt),
            },
            cipher: "aes-256-gcm".into(),
            nonce: B64.encode(nonce),
            ciphertext: String::new(),
        };
        let aad = env.aad();
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref())
            .map_err(|e| Error::crypto("set up AES-256-GCM", e))?;
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|e| Error::crypto("encrypt", e))?;
        env.ciphertext = B64.encode(ct);
        Ok(env)
    }

    /// Opens an envelope sealed for `purpose`. A wrong passphrase and an altered file both give
    /// [`Error::WrongPassphrase`] (AES-GCM cannot tell them apart).
    pub fn open(
        &self,
        env: &SealedEnvelope,
        purpose: &str,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let fmt_err = |reason: String| Error::SealedFormat {
            what: what.to_owned(),
            reason,
        };
        check_header(env).map_err(fmt_err)?;
        if env.purpose != purpose {
            return Err(fmt_err(format!(
                "it holds '{}', not '{purpose}'",
                env.purpose
            )));
        }
        if env.kdf.params != self.params || B64.encode(self.salt) != env.kdf.salt {
            return Err(fmt_err(
                "it was sealed with another salt or parameters than this key".into(),
            ));
        }
        let nonce_v = B64
            .decode(&env.nonce)
            .map_err(|_| fmt_err("the nonce is not base64".into()))?;
        let nonce: [u8; NONCE_BYTES] = nonce_v
            .try_into()
            .map_err(|_| fmt_err("the nonce is not 12 bytes".into()))?;
        let ct = B64
            .decode(&env.ciphertext)
            .map_err(|_| fmt_err("the ciphertext is not base64".into()))?;
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref())
            .map_err(|e| Error::crypto("set up AES-256-GCM", e))?;
        let aad = env.aad();
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::WrongPassphrase {
                what: what.to_owned(),
            })
    }
}

fn check_header(env: &SealedEnvelope) -> std::result::Result<(), String> {
    if env.format != SEALED_FORMAT || env.version != SEALED_VERSION {
        return Err(format!(
            "unknown format '{}' version {}",
            env.format, env.version
        ));
    }
    if env.kdf.alg != "argon2id" || env.kdf.version != 0x13 || env.cipher != "aes-256-gcm" {
        return Err(format!(
            "unsupported algorithms {}/{}/{}",
            env.kdf.alg, env.kdf.version, env.cipher
        ));
    }
    // Refuse nonsensical costs early. (Altered parameters could not decrypt anyway: they are
    // bound into the AEAD's associated data and change the derived key.)
    if env.kdf.params.m_cost_kib < KdfParams::INSECURE_FOR_TESTS.m_cost_kib {
        return Err("the Argon2id memory cost is below the minimum".into());
    }
    Ok(())
}

/// Vault plaintext layout: `u16 len | CA PKCS#8 DER | u16 len | TOTP secret`, big-endian.
fn encode_vault(ca_pkcs8: &[u8], totp: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let too_big = |_| Error::crypto("encode the vault", "a field is larger than 64 KiB");
    let mut v = Zeroizing::new(Vec::with_capacity(4 + ca_pkcs8.len() + totp.len()));
    v.extend_from_slice(
        &u16::try_from(ca_pkcs8.len())
            .map_err(too_big)?
            .to_be_bytes(),
    );
    v.extend_from_slice(ca_pkcs8);
    v.extend_from_slice(&u16::try_from(totp.len()).map_err(too_big)?.to_be_bytes());
    v.extend_from_slice(totp);
    Ok(v)
}

fn decode_vault(v: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    let take = |v: &[u8], at: usize| -> std::result::Result<(usize, usize), String> {
        let len_bytes = v.get(at..at + 2).ok_or("truncated vault")?;
        let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if v.len() < at + 2 + len {
            return Err("truncated vault".into());
        }
        Ok((at + 2, at + 2 + len))
    };
    let (a0, a1) = take(v, 0)?;
    let (b0, b1) = take(v, a1)?;
    if b1 != v.len() {
        return Err("trailing bytes in vault".into());
    }
    Ok((&v[a0..a1], &v[b0..b1]))
}

/// The CA store directory: `ca.pem` + `vault.sealed`.
#[derive(Clone, Debug)]
pub struct CaStore {
    dir: PathBuf,
}

/// An unlocked CA: the authority, the TOTP secret and the key that re-seals the vault.
#[derive(Debug)]
pub struct UnlockedCa {
    ca: CertAuthority,
    totp: TotpSecret,
    sealing: SealingKey,
    store: CaStore,
}

impl CaStore {
    /// A store rooted at `dir` (e.g. `$KOI_HOME/certmesh/ca`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CaStore { dir: dir.into() }
    }

    /// Path of the root certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Path of the sealed vault.
    pub fn vault_path(&self) -> PathBuf {
        self.dir.join(VAULT_FILE)
    }

    /// True when a CA has been created here.
    pub fn exists(&self) -> bool {
        self.vault_path().exists()
    }

    /// Writes a new CA: the vault first, then the certificate. Refuses to overwrite.
    pub fn create(
        &self,
        ca: CertAuthority,
        totp: TotpSecret,
        pass: &Passphrase,
        params: KdfParams,
    ) -> Result<UnlockedCa> {
        if self.exists() {
            return Err(Error::AlreadyExists {
                path: self.vault_path(),
                next: "A CA already lives here; use `koi certmesh unlock`, or remove the directory deliberately first.",
            });
        }
        ensure_private_dir(&self.dir)?;
        let sealing = SealingKey::derive_new(pass, params)?;
        let unlocked = UnlockedCa {
            ca,
            totp,
            sealing,
            store: self.clone(),
        };
        unlocked.write_vault()?;
        write_atomic(&self.cert_path(), unlocked.ca.cert_pem().as_bytes())?;
        Ok(unlocked)
    }

    /// Decrypts the vault with `pass` and rebuilds the CA.
    pub fn unlock(&self, pass: &Passphrase) -> Result<UnlockedCa> {
        let vault_path = self.vault_path();
        let what = format!("the CA vault at {}", vault_path.display());
        let env = SealedEnvelope::read(&vault_path)?;
        let sealing = SealingKey::derive_for(pass, &env, &what)?;
        let plain = sealing.open(&env, VAULT_PURPOSE, &what)?;
        let (ca_key, totp) = decode_vault(&plain).map_err(|reason| Error::SealedFormat {
            what: what.clone(),
            reason,
        })?;
        let cert_path = self.cert_path();
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|e| Error::io("read", &cert_path, e))?;
        let ca = CertAuthority::from_parts(&cert_pem, ca_key)?;
        let totp = TotpSecret::from_bytes(totp)?;
        Ok(UnlockedCa {
            ca,
            totp,
            sealing,
            store: self.clone(),
        })
    }
}

impl UnlockedCa {
    /// The certificate authority.
    pub fn ca(&self) -> &CertAuthority {
        &self.ca
    }

    /// The enrollment TOTP secret.
    pub fn totp_secret(&self) -> &TotpSecret {
        &self.totp
    }

    /// Replaces the TOTP secret (`koi certmesh rotate-secret`) and re-seals the vault.
    pub fn rotate_totp_secret(&mut self) -> Result<&TotpSecret> {
        let new = TotpSecret::generate();
        let old = std::mem::replace(&mut self.totp, new);
        if let Err(e) = self.write_vault() {
            self.totp = old;
            return Err(e);
        }
        Ok(&self.totp)
    }

    /// Re-seals the vault under a new passphrase (fresh salt).
    pub fn change_passphrase(&mut self, new: &Passphrase, params: KdfParams) -> Result<()> {
        let sealing = SealingKey::derive_new(new, params)?;
        let old = std::mem::replace(&mut self.sealing, sealing);
        if let Err(e) = self.write_vault() {
            self.sealing = old;
            return Err(e);
        }
        Ok(())
    }

    fn write_vault(&self) -> Result<()> {
        let plain = encode_vault(&self.ca.key_pkcs8(), self.totp.as_bytes())?;
        let env = self.sealing.seal(VAULT_PURPOSE, &plain)?;
        env.write(&self.store.vault_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_purpose_binding() {
        let k = SealingKey::derive_new(
            &Passphrase::new("correct horse"),
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        let env = k.seal("x", b"hello").unwrap();
        assert_eq!(&**k.open(&env, "x", "t").unwrap(), b"hello");
        assert!(matches!(
            k.open(&env, "y", "t"),
            Err(Error::SealedFormat { .. })
        ));
        let mut relabelled = env.clone();
        relabelled.kdf.params.t_cost = 2;
        let k2 =
            SealingKey::derive_for(&Passphrase::new("correct horse"), &relabelled, "t").unwrap();
        assert!(matches!(
            k2.open(&relabelled, "x", "t"),
            Err(Error::WrongPassphrase { .. })
        ));
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let k = SealingKey::derive_new(
            &Passphrase::new("correct horse"),
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        let env = k.seal("x", b"hello").unwrap();
        let bad =
            SealingKey::derive_for(&Passphrase::new("wrong horse!"), &env, "the CA vault").unwrap();
        let e = bad.open(&env, "x", "the CA vault").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("Cannot unlock the CA vault") && msg.contains("passphrase is wrong"),
            "{msg}"
        );
    }

    #[test]
    fn short_passphrase_and_hostile_params_are_refused() {
        assert!(matches!(
            SealingKey::derive_new(&Passphrase::new("short"), KdfParams::INSECURE_FOR_TESTS),
            Err(Error::WeakPassphrase { .. })
        ));
        let k = SealingKey::derive_new(
            &Passphrase::new("correct horse"),
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        let mut env = k.seal("x", b"hello").unwrap();
        env.kdf.params.m_cost_kib = u32::MAX;
        assert!(matches!(
            SealingKey::derive_for(&Passphrase::new("correct horse"), &env, "t"),
            Err(Error::SealedFormat { .. })
        ));
        env.kdf.params.m_cost_kib = 8;
        assert!(matches!(
            SealingKey::derive_for(&Passphrase::new("correct horse"), &env, "t"),
            Err(Error::SealedFormat { .. })
        ));
    }

    #[test]
    fn vault_file_never_holds_the_key_in_any_readable_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = CaStore::new(dir.path().join("ca"));
        let ca = CertAuthority::create(
            &crate::ca::CaOptions::new("t", crate::scope::Scope::unrestricted()),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let pkcs8 = ca.key_pkcs8();
        let secret = TotpSecret::generate();
        let secret_bytes = secret.as_bytes().to_vec();
        store
            .create(
                ca,
                secret,
                &Passphrase::new("correct horse"),
                KdfParams::INSECURE_FOR_TESTS,
            )
            .unwrap();
        for entry in std::fs::read_dir(dir.path().join("ca")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            // The 32-byte private scalar sits at a fixed place in ring's PKCS#8; check the
            // whole DER, its base64 and its hex, and the TOTP secret likewise.
            for needle in [&pkcs8[..], &secret_bytes[..]] {
                assert!(!has(needle));
                assert!(!has(B64.encode(needle).as_bytes()));
                assert!(!has(hex::encode(needle).as_bytes()));
            }
            assert!(!has(b"PRIVATE KEY"));
        }
    }

    #[test]
    fn vault_codec_rejects_truncation() {
        let v = encode_vault(b"abc", b"0123456789abcdef").unwrap();
        assert_eq!(
            decode_vault(&v).unwrap(),
            (&b"abc"[..], &b"0123456789abcdef"[..])
        );
        for n in 0..v.len() {
            assert!(decode_vault(&v[..n]).is_err());
        }
    }
}
