//! The end-to-end encryption of a standby promotion: the CA's secrets travel from the primary's
//! certmesh process to the standby's sealed to a key the standby generated for this one transfer,
//! so neither host process, nor anything logging the API's traffic, nor the TLS layer ever holds
//! them in the clear.
//!
//! Scheme: the standby makes an ephemeral X25519 key and sends its public half (inside mutual
//! TLS, with the code); the primary makes its own ephemeral X25519 key, and both derive
//! `HKDF-SHA256(ikm = X25519 shared secret, salt = SHA-256(transcript), info = INFO)` → an
//! AES-256-GCM key used once, under a random 96-bit nonce, with the whole transcript as
//! associated data. The transcript binds the mesh (root fingerprint), the standby's host name,
//! the term and both public keys, so a ciphertext cannot be replayed to another standby, mesh or
//! key. The private halves are `ring` ephemeral keys (consumed by the agreement, never
//! serialisable); the plaintext lives only in `Zeroizing` buffers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// HKDF `info` of the transfer key.
pub const INFO: &[u8] = b"koi-certmesh standby transfer v1";
/// Largest transfer accepted (the audit log dominates it).
pub const MAX_TRANSFER_BYTES: usize = 48 * 1024 * 1024;

/// What both sides bind the transfer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The mesh root's fingerprint (the member's pin).
    pub ca_fingerprint: String,
    /// The standby's host name (from its client certificate on the primary).
    pub standby_host: String,
    /// The term the standby is promoted in.
    pub term: u64,
    /// The standby's X25519 public key.
    pub standby_key: [u8; 32],
    /// The primary's X25519 public key.
    pub primary_key: [u8; 32],
}

impl Transcript {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        for part in [
            INFO,
            self.ca_fingerprint.as_bytes(),
            self.standby_host.as_bytes(),
            &self.term.to_be_bytes(),
            &self.standby_key,
            &self.primary_key,
        ] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// The sealed transfer as it travels (base64 fields).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// The primary's ephemeral X25519 public key.
    pub primary_key: String,
    /// The AES-256-GCM nonce.
    pub nonce: String,
    /// Ciphertext with its tag.
    pub ciphertext: String,
}

fn key_for(shared: &[u8], transcript: &[u8]) -> Result<LessSafeKey, String> {
    let salt = Salt::new(HKDF_SHA256, &Sha256::digest(transcript));
    let prk = salt.extract(shared);
    let okm = prk
        .expand(&[INFO], &AES_256_GCM)
        .map_err(|_| "the transfer key could not be derived".to_owned())?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn public_key(bytes: &[u8]) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| format!("an X25519 public key is 32 bytes, not {}", bytes.len()))
}

/// The standby's side: its ephemeral key for one transfer.
pub struct StandbyKey {
    private: EphemeralPrivateKey,
    public: [u8; 32],
}

impl std::fmt::Debug for StandbyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandbyKey([private key elided])")
    }
}

impl StandbyKey {
    /// A fresh ephemeral key.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng)
            .map_err(|_| "the system random generator failed".to_owned())?;
        let public = public_key(
            private
                .compute_public_key()
                .map_err(|_| "the X25519 public key could not be computed".to_owned())?
                .as_ref(),
        )?;
        Ok(StandbyKey { private, public })
    }

    /// The public half.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The public half, base64 (as it travels).
    pub fn public_b64(&self) -> String {
        B64.encode(self.public)
    }

    /// Opens what the primary sealed to this key (consumes the key: one transfer only). The
    /// transcript is rebuilt from what the standby knows itself plus the primary's public key.
    pub fn open(
        self,
        ca_fingerprint: &str,
        standby_host: &str,
        term: u64,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let decode = |what: &str, v: &str| {
            B64.decode(v)
                .map_err(|_| format!("the transfer's {what} is not base64"))
        };
        let primary_key = public_key(&decode("primary key", &sealed.primary_key)?)?;
        let nonce: [u8; 12] = decode("nonce", &sealed.nonce)?
            .try_into()
            .map_err(|_| "the transfer's nonce is not 12 bytes".to_owned())?;
        let mut buffer = Zeroizing::new(decode("ciphertext", &sealed.ciphertext)?);
        let transcript = Transcript {
            ca_fingerprint: ca_fingerprint.to_owned(),
            standby_host: standby_host.to_owned(),
            term,
            standby_key: self.public,
            primary_key,
        }
        .bytes();
        let key = agreement::agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&X25519, primary_key),
            |shared| key_for(shared, &transcript),
        )
        .map_err(|_| "the key agreement with the primary failed".to_owned())??;
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&transcript),
                &mut buffer[..],
            )
            .map_err(|_| {
                "the transfer does not decrypt: it was altered, or sealed for another key, \
                 standby or mesh"
                    .to_owned()
            })?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

/// The primary's side: seals `plaintext` to the standby's public key `standby_key`.
pub fn seal_to(
    standby_key: &[u8],
    ca_fingerprint: &str,
    standby_host: &str,
    term: u64,
    plaintext: &[u8],
) -> Result<Sealed, String> {
    let standby_key = public_key(standby_key)?;
    let rng = SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&X25519, &rng)
        .map_err(|_| "the system random generator failed".to_owned())?;
    let primary_key = public_key(
        private
            .compute_public_key()
            .map_err(|_| "the X25519 public key could not be computed".to_owned())?
            .as_ref(),
    )?;
    let transcript = Transcript {
        ca_fingerprint: ca_fingerprint.to_owned(),
        standby_host: standby_host.to_owned(),
        term,
        standby_key,
        primary_key,
    }
    .bytes();
    let key = agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&X25519, standby_key),
        |shared| key_for(shared, &transcript),
    )
    .map_err(|_| "the standby's key is not a usable X25519 key".to_owned())??;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce)
        .map_err(|_| "the system random generator failed".to_owned())?;
    let mut buffer = plaintext.to_vec();
    let sealed = key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&transcript),
        &mut buffer,
    );
    if sealed.is_err() {
        zeroize::Zeroize::zeroize(&mut buffer);
        return Err("the transfer could not be encrypted".into());
    }
    Ok(Sealed {
        primary_key: B64.encode(primary_key),
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(&buffer),
    })
}

/// Packs parts as `u32 BE length | bytes`, in a zeroizing buffer.
pub fn pack(parts: &[&[u8]]) -> Result<Zeroizing<Vec<u8>>, String> {
    let total: usize = parts.iter().map(|p| p.len() + 4).sum();
    if total > MAX_TRANSFER_BYTES {
        return Err(format!(
            "the transfer would be {total} bytes, more than the {MAX_TRANSFER_BYTES} allowed"
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(total));
    for part in parts {
        let len = u32::try_from(part.len()).map_err(|_| "a part is too large".to_owned())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Splits what [`pack`] made into exactly `n` parts.
pub fn unpack(bytes: &[u8], n: usize) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::with_capacity(n);
    let mut at = 0usize;
    for _ in 0..n {
        let len = bytes.get(at..at + 4).ok_or("the transfer is truncated")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = (at + 4)
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or("the transfer is truncated")?;
        parts.push(&bytes[at + 4..end]);
        at = end;
    }
    if at != bytes.len() {
        return Err("the transfer has trailing bytes".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_transfer_opens_only_for_its_standby_mesh_and_term() {
        let secret = b"CA key and TOTP secret";
        let attempt = |fp: &str, host: &str, term: u64, tamper: bool| {
            let key = StandbyKey::generate().unwrap();
            let mut sealed = seal_to(&key.public(), "fp", "stone-b", 1, secret).unwrap();
            if tamper {
                let mut ct = B64.decode(&sealed.ciphertext).unwrap();
                ct[0] ^= 1;
                sealed.ciphertext = B64.encode(ct);
            }
            key.open(fp, host, term, &sealed)
        };
        assert_eq!(&attempt("fp", "stone-b", 1, false).unwrap()[..], secret);
        assert!(attempt("other", "stone-b", 1, false).is_err());
        assert!(attempt("fp", "stone-c", 1, false).is_err());
        assert!(attempt("fp", "stone-b", 2, false).is_err());
        assert!(attempt("fp", "stone-b", 1, true).is_err());
        // Sealed to another standby's key: never opens.
        let mine = StandbyKey::generate().unwrap();
        let other = StandbyKey::generate().unwrap();
        let sealed = seal_to(&other.public(), "fp", "stone-b", 1, secret).unwrap();
        assert!(mine.open("fp", "stone-b", 1, &sealed).is_err());
        assert!(seal_to(&[0u8; 31], "fp", "stone-b", 1, secret).is_err());
    }

    #[test]
    fn packing_round_trips_and_refuses_truncation() {
        let packed = pack(&[b"a", b"", b"ccc"]).unwrap();
        assert_eq!(
            unpack(&packed, 3).unwrap(),
            vec![&b"a"[..], &b""[..], &b"ccc"[..]]
        );
        for n in 0..packed.len() {
            assert!(unpack(&packed[..n], 3).is_err());
        }
        assert!(unpack(&packed, 2).is_err());
    }
}
