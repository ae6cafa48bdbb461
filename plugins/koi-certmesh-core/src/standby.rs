//! What the standby CA needs from the core: the CA's secrets packed for the encrypted transfer
//! (never on disk in the clear), sealing what a standby received into its own vault (the same
//! Argon2id → AES-256-GCM format as the primary's, [`crate::keystore`]), and signed roster
//! manifests — the primary signs, the standby verifies with the root it holds.
//!
//! Manifest signatures are ECDSA P-256 / SHA-256 over the canonical JSON of the manifest body
//! (with a `kind` field, so a signature over anything else the CA signs — audit entries,
//! checkpoints — can never pass as a manifest).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::ca::{CertAuthority, pem_to_der};
use crate::error::{Error, Result};
use crate::keystore::{CaStore, KdfParams, Passphrase, UnlockedCa};
use crate::totp::TotpSecret;

/// The `kind` every roster manifest body carries.
pub const MANIFEST_KIND: &str = "koi-certmesh roster manifest v1";

/// The CA key (PKCS#8) and the TOTP secret, length-prefixed (`u32 BE` each), for the transfer
/// to a standby. Zeroized on drop.
pub fn export_secrets(unlocked: &UnlockedCa) -> Result<Zeroizing<Vec<u8>>> {
    let key = unlocked.ca().key_pkcs8();
    let totp = unlocked.totp_secret().as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(8 + key.len() + totp.len()));
    for part in [&key[..], totp] {
        let len = u32::try_from(part.len())
            .map_err(|_| Error::crypto("pack the CA secrets", "a part is too large"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Splits what [`export_secrets`] packed: `(CA key PKCS#8, TOTP secret)`.
pub fn split_secrets(packed: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = || Error::crypto("unpack the CA secrets", "the packed secrets are malformed");
    let take = |at: usize| -> Result<(usize, usize)> {
        let len = packed.get(at..at + 4).ok_or_else(bad)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = (at + 4).checked_add(len).ok_or_else(bad)?;
        if end > packed.len() {
            return Err(bad());
        }
        Ok((at + 4, end))
    };
    let (a0, a1) = take(0)?;
    let (b0, b1) = take(a1)?;
    if b1 != packed.len() {
        return Err(bad());
    }
    Ok((&packed[a0..a1], &packed[b0..b1]))
}

/// Seals a transferred CA into a new store at `dir` under the standby's own passphrase: the key
/// must match `cert_pem` (the root the member pinned), the TOTP secret must be well formed.
/// Refuses an existing store (the caller builds in a fresh staging directory).
pub fn seal_transferred(
    dir: &std::path::Path,
    cert_pem: &str,
    packed: &[u8],
    pass: &Passphrase,
    params: KdfParams,
) -> Result<UnlockedCa> {
    let (key, totp) = split_secrets(packed)?;
    let ca = CertAuthority::from_parts(cert_pem, key)?;
    let totp = TotpSecret::from_bytes(totp)?;
    CaStore::new(dir).create(ca, totp, pass, params)
}

/// Signs a manifest body (canonical JSON of `body`; it must carry `kind` = [`MANIFEST_KIND`]):
/// the DER signature, base64.
pub fn sign_manifest(ca: &CertAuthority, body: &Value) -> Result<String> {
    if body.get("kind").and_then(Value::as_str) != Some(MANIFEST_KIND) {
        return Err(Error::crypto(
            "sign a roster manifest",
            "the body does not carry the manifest kind",
        ));
    }
    let mut bytes = Vec::new();
    crate::audit::canonical_json(body, &mut bytes);
    Ok(B64.encode(ca.sign(&bytes)?))
}

fn root_key(ca_cert_pem: &str) -> Option<p256::ecdsa::VerifyingKey> {
    let der = pem_to_der(ca_cert_pem, "CERTIFICATE").ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    crate::audit::verifying_key(&cert.public_key().subject_public_key.data).ok()
}

/// Verifies `bytes` — whole lines fetched from the primary — as the continuation of a copy of
/// the audit log whose last entry is `head` (`None`: an empty copy) and which ends at byte
/// `offset`, against the root `ca_cert_pem`: each entry must carry the CA's signature and chain
/// to the one before. Returns the head after them. Nothing is written.
pub fn verify_continuation(
    ca_cert_pem: &str,
    head: Option<&crate::audit::AuditHead>,
    offset: u64,
    bytes: &[u8],
) -> std::result::Result<Option<crate::audit::AuditHead>, String> {
    let key = root_key(ca_cert_pem).ok_or("the mesh root held here does not parse")?;
    let start = match head {
        Some(h) => crate::audit::Start {
            seq: h.seq,
            hash: h.hash.clone(),
            offset,
        },
        None => crate::audit::Start::genesis(),
    };
    let (verdict, io) = crate::audit::verify_reader(bytes, &key, start, None, &mut |_| {});
    io.map_err(|e| e.to_string())?;
    match verdict {
        crate::audit::AuditVerdict::Intact { head: after, .. } => {
            Ok(after.or_else(|| head.cloned()))
        }
        crate::audit::AuditVerdict::Tampered { line, problem } => Err(format!(
            "entry {line} of the primary's log does not continue the copy held here ({problem})"
        )),
        crate::audit::AuditVerdict::TornTail { line, .. } => Err(format!(
            "entry {line} of the primary's log arrived incomplete"
        )),
    }
}

/// Whether `sig` (base64 DER) is the CA's signature over the manifest `body`, the CA being the
/// root certificate `ca_cert_pem`; a body without the manifest kind never verifies.
pub fn verify_manifest(ca_cert_pem: &str, body: &Value, sig: &str) -> bool {
    if body.get("kind").and_then(Value::as_str) != Some(MANIFEST_KIND) {
        return false;
    }
    let Some(key) = root_key(ca_cert_pem) else {
        return false;
    };
    let Some(sig) = B64
        .decode(sig)
        .ok()
        .and_then(|d| Signature::from_der(&d).ok())
    else {
        return false;
    };
    let mut bytes = Vec::new();
    crate::audit::canonical_json(body, &mut bytes);
    key.verify(&bytes, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaOptions;
    use crate::scope::Scope;
    use serde_json::json;

    fn unlocked(dir: &std::path::Path) -> UnlockedCa {
        let ca = CertAuthority::create(
            &CaOptions::new("koi test", Scope::unrestricted()),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        CaStore::new(dir)
            .create(
                ca,
                TotpSecret::generate(),
                &Passphrase::new("primary passphrase"),
                KdfParams::INSECURE_FOR_TESTS,
            )
            .unwrap()
    }

    #[test]
    fn secrets_travel_and_seal_under_the_standbys_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let primary = unlocked(&tmp.path().join("p"));
        let packed = export_secrets(&primary).unwrap();
        let standby_dir = tmp.path().join("s");
        let pass = Passphrase::new("standby passphrase");
        seal_transferred(
            &standby_dir,
            primary.ca().cert_pem(),
            &packed,
            &pass,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        let reopened = CaStore::new(&standby_dir).unlock(&pass).unwrap();
        assert_eq!(reopened.ca().fingerprint(), primary.ca().fingerprint());
        assert_eq!(
            reopened.totp_secret().as_bytes(),
            primary.totp_secret().as_bytes()
        );
        assert!(
            CaStore::new(&standby_dir)
                .unlock(&Passphrase::new("primary passphrase"))
                .is_err()
        );
        let vault = std::fs::read(standby_dir.join("vault.sealed")).unwrap();
        let key = primary.ca().key_pkcs8();
        assert!(!vault.windows(key.len()).any(|w| w == &key[..]));
        // Truncated or padded packings are refused, never panic.
        for n in 0..packed.len() {
            assert!(split_secrets(&packed[..n]).is_err());
        }
        let mut longer = packed.to_vec();
        longer.push(0);
        assert!(split_secrets(&longer).is_err());
    }

    #[test]
    fn a_manifest_verifies_only_unchanged_under_its_own_root() {
        let tmp = tempfile::tempdir().unwrap();
        let a = unlocked(&tmp.path().join("a"));
        let b = unlocked(&tmp.path().join("b"));
        let body = json!({"kind": MANIFEST_KIND, "version": 7, "roster": {"x": 1}});
        let sig = sign_manifest(a.ca(), &body).unwrap();
        assert!(verify_manifest(a.ca().cert_pem(), &body, &sig));
        assert!(!verify_manifest(b.ca().cert_pem(), &body, &sig));
        let mut changed = body.clone();
        changed["version"] = json!(8);
        assert!(!verify_manifest(a.ca().cert_pem(), &changed, &sig));
        assert!(!verify_manifest(a.ca().cert_pem(), &body, "not base64!"));
        assert!(sign_manifest(a.ca(), &json!({"version": 1})).is_err());
    }

    #[test]
    fn a_log_continuation_verifies_only_from_the_copys_head_and_unaltered() {
        let tmp = tempfile::tempdir().unwrap();
        let primary = unlocked(&tmp.path().join("p"));
        let ca = primary.ca();
        let path = tmp.path().join("audit.log");
        let mut log = crate::audit::AuditLog::open(&path, ca).unwrap();
        let now = time::OffsetDateTime::now_utc();
        for n in 0..2 {
            log.append(ca, "test", "t", json!({"n": n}), now).unwrap();
        }
        let head = log.head();
        let offset = std::fs::metadata(&path).unwrap().len();
        for n in 2..4 {
            log.append(ca, "test", "t", json!({"n": n}), now).unwrap();
        }
        let all = std::fs::read(&path).unwrap();
        let more = &all[usize::try_from(offset).unwrap()..];
        let pem = ca.cert_pem();
        let after = verify_continuation(pem, head.as_ref(), offset, more).unwrap();
        assert_eq!(after, log.head());
        // From an empty copy, the whole log.
        assert_eq!(verify_continuation(pem, None, 0, &all).unwrap(), log.head());
        // Nothing new: the head stays.
        assert_eq!(
            verify_continuation(pem, head.as_ref(), offset, b"").unwrap(),
            head
        );
        // Another starting point, an altered byte, another root: refused.
        assert!(verify_continuation(pem, None, 0, more).is_err());
        let mut altered = more.to_vec();
        let at = altered.iter().position(|b| *b == b'"').unwrap() + 1;
        altered[at] ^= 1;
        assert!(verify_continuation(pem, head.as_ref(), offset, &altered).is_err());
        let other = unlocked(&tmp.path().join("o"));
        assert!(verify_continuation(other.ca().cert_pem(), head.as_ref(), offset, more).is_err());
    }
}
