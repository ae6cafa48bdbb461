//! The audit log: append-only JSON lines, hash-chained and signed with the CA key.
//!
//! Each line is one [`AuditEntry`] `{seq, ts, event, actor, details, prev_hash, hash, sig}`:
//! `seq` counts from 1, `prev_hash` is the previous entry's `hash` (64 zeros for the first),
//! `hash` is SHA-256 (hex) over the canonical JSON of the entry without `hash` and `sig`, and `sig`
//! is the CA's ECDSA P-256/SHA-256 signature (DER, base64) over those same canonical bytes.
//! Canonical JSON = object keys sorted at every level, no insignificant whitespace, serde_json's
//! string and number formatting.
//!
//! Appends write one whole line with a single `write` and `fsync` it. A crash mid-append can only
//! leave a last line without its newline; [`verify`] reports that as [`AuditVerdict::TornTail`]
//! (distinct from tampering), appends are refused until [`repair_torn_tail`] truncates it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::atomic::{open_append_private, sync_dir};
use crate::ca::CertAuthority;
use crate::error::{Error, Result};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Well-known event names (any string is allowed; these are the ones certmesh emits).
pub mod events {
    /// The mesh was created (first entry).
    pub const POND_INITIALIZED: &str = "pond_initialized";
    /// A member enrolled.
    pub const MEMBER_ENROLLED: &str = "member_enrolled";
    /// A certificate was issued.
    pub const CERT_ISSUED: &str = "cert_issued";
    /// Issuance was refused (scope, CSR).
    pub const ISSUANCE_REFUSED: &str = "issuance_refused";
    /// A TOTP attempt (details carry the [`crate::TotpOutcome`]).
    pub const TOTP_ATTEMPT: &str = "totp_attempt";
    /// The CA was unlocked.
    pub const CA_UNLOCKED: &str = "ca_unlocked";
    /// The TOTP secret was rotated.
    pub const SECRET_ROTATED: &str = "secret_rotated";
    /// A member was revoked.
    pub const MEMBER_REVOKED: &str = "member_revoked";
    /// A torn tail was truncated.
    pub const LOG_REPAIRED: &str = "log_repaired";
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// 1-based sequence number.
    pub seq: u64,
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// Event name.
    pub event: String,
    /// Who did it: the operator's name, a host name, or "system".
    pub actor: String,
    /// Event-specific data (never secrets).
    pub details: Value,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// SHA-256 over the canonical entry without `hash`/`sig`, hex.
    pub hash: String,
    /// CA signature over the same bytes, DER, base64.
    pub sig: String,
}

impl AuditEntry {
    fn canonical_body(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("ts".into(), Value::from(self.ts.clone()));
        m.insert("event".into(), Value::from(self.event.clone()));
        m.insert("actor".into(), Value::from(self.actor.clone()));
        m.insert("details".into(), self.details.clone());
        m.insert("prev_hash".into(), Value::from(self.prev_hash.clone()));
        let mut out = Vec::new();
        canonical_json(&Value::Object(m), &mut out);
        out
    }
}

/// Writes `v` as canonical JSON (sorted keys, compact) into `out`.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                out.push(b':');
                if let Some(val) = m.get(*k) {
                    canonical_json(val, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// The last entry's position, to anchor the log elsewhere (the roster keeps one) so that
/// truncating whole lines from the end is detected too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence number of the last entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tamper {
    /// Not a JSON audit entry (or an empty line).
    Unparseable {
        /// Parser message.
        reason: String,
    },
    /// `seq` is not the next number: a line was removed, inserted or moved.
    Sequence {
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// `prev_hash` does not match the previous entry's hash.
    ChainBroken,
    /// The entry's content does not match its `hash` (it was edited).
    HashMismatch,
    /// The hash matches but the signature does not (forged by someone without the CA key).
    BadSignature,
    /// The log ends before the anchored head (lines were removed from the end).
    Truncated {
        /// The anchored head's seq.
        expected_seq: u64,
        /// The last seq present.
        found_seq: u64,
    },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Unparseable { reason } => write!(f, "not a valid entry ({reason})"),
            Tamper::Sequence { expected, found } => write!(
                f,
                "expected seq {expected}, found {found} (a line was removed, inserted or moved)"
            ),
            Tamper::ChainBroken => write!(f, "prev_hash does not match the previous entry"),
            Tamper::HashMismatch => write!(f, "the content does not match its hash (edited)"),
            Tamper::BadSignature => write!(f, "the signature is not the CA's"),
            Tamper::Truncated {
                expected_seq,
                found_seq,
            } => write!(
                f,
                "the log ends at seq {found_seq} but the roster anchors seq {expected_seq} (lines removed from the end)"
            ),
        }
    }
}

/// Result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum AuditVerdict {
    /// Every line verifies.
    Intact {
        /// Number of entries.
        entries: u64,
        /// Last entry (None for an empty log).
        head: Option<AuditHead>,
    },
    /// The first bad line, 1-based.
    Tampered {
        /// Line number.
        line: usize,
        /// What is wrong.
        problem: Tamper,
    },
    /// Every complete line verifies, but the file ends in a partial line (crash mid-append).
    TornTail {
        /// 1-based number of the torn line.
        line: usize,
        /// Intact entries before it.
        entries: u64,
        /// Byte offset where the torn line starts (truncate here to repair).
        offset: u64,
    },
}

/// Verifies the whole log at `path` against the CA public key (uncompressed SEC1 point).
/// A missing file is an empty, intact log. `expected_head`, if given, must be present.
pub fn verify(
    path: &Path,
    ca_public_key_sec1: &[u8],
    expected_head: Option<&AuditHead>,
) -> Result<AuditVerdict> {
    let key = VerifyingKey::from_sec1_bytes(ca_public_key_sec1).map_err(|e| {
        Error::InvalidCertificate {
            what: "of the CA (for audit verification)".into(),
            reason: format!("its public key is not a P-256 point ({e})"),
        }
    })?;
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    Ok(verify_bytes(&data, &key, expected_head))
}

fn verify_bytes(
    data: &[u8],
    key: &VerifyingKey,
    expected_head: Option<&AuditHead>,
) -> AuditVerdict {
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut count: u64 = 0;
    let mut offset: usize = 0;
    let mut line_no = 0usize;
    while offset < data.len() {
        line_no += 1;
        let Some(nl) = data[offset..].iter().position(|&b| b == b'\n') else {
            return AuditVerdict::TornTail {
                line: line_no,
                entries: count,
                offset: offset as u64,
            };
        };
        let line = &data[offset..offset + nl];
        offset += nl + 1;
        let entry: AuditEntry = match std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(reason) => {
                return AuditVerdict::Tampered {
                    line: line_no,
                    problem: Tamper::Unparseable { reason },
                };
            }
        };
        if let Err(problem) = check_entry(&entry, count + 1, &prev_hash, key) {
            return AuditVerdict::Tampered {
                line: line_no,
                problem,
            };
        }
        count += 1;
        prev_hash = entry.hash;
    }
    if let Some(h) = expected_head
        && count < h.seq
    {
        return AuditVerdict::Tampered {
            line: line_no + 1,
            problem: Tamper::Truncated {
                expected_seq: h.seq,
                found_seq: count,
            },
        };
    }
    let head = (count > 0).then_some(AuditHead {
        seq: count,
        hash: prev_hash,
    });
    if let (Some(h), Some(have)) = (expected_head, &head)
        && have.seq == h.seq
        && have.hash != h.hash
    {
        return AuditVerdict::Tampered {
            line: line_no,
            problem: Tamper::ChainBroken,
        };
    }
    AuditVerdict::Intact {
        entries: count,
        head,
    }
}

fn check_entry(
    e: &AuditEntry,
    expected_seq: u64,
    prev_hash: &str,
    key: &VerifyingKey,
) -> std::result::Result<(), Tamper> {
    if e.seq != expected_seq {
        return Err(Tamper::Sequence {
            expected: expected_seq,
            found: e.seq,
        });
    }
    if e.prev_hash != prev_hash {
        return Err(Tamper::ChainBroken);
    }
    let body = e.canonical_body();
    if hex::encode(Sha256::digest(&body)) != e.hash {
        return Err(Tamper::HashMismatch);
    }
    let sig = B64
        .decode(&e.sig)
        .ok()
        .and_then(|d| Signature::from_der(&d).ok())
        .ok_or(Tamper::BadSignature)?;
    key.verify(&body, &sig).map_err(|_| Tamper::BadSignature)
}

/// Truncates a torn last line. Returns the number of bytes removed (0 if the log was whole).
/// Refuses to touch a log that is tampered before the tail.
pub fn repair_torn_tail(path: &Path, ca_public_key_sec1: &[u8]) -> Result<u64> {
    match verify(path, ca_public_key_sec1, None)? {
        AuditVerdict::Intact { .. } => Ok(0),
        AuditVerdict::Tampered { line, problem } => Err(Error::AuditTampered {
            path: path.to_path_buf(),
            line,
            reason: problem.to_string(),
        }),
        AuditVerdict::TornTail { offset, .. } => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io("open", path, e))?;
            let len = f
                .metadata()
                .map_err(|e| Error::io("inspect", path, e))?
                .len();
            f.set_len(offset)
                .map_err(|e| Error::io("truncate", path, e))?;
            f.sync_all().map_err(|e| Error::io("flush", path, e))?;
            Ok(len - offset)
        }
    }
}

/// An open log, positioned after its last verified entry.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: fs::File,
    next_seq: u64,
    prev_hash: String,
    /// Set when a write or fsync failed: the file may end in a partial line, so further appends
    /// are refused until the log is reopened (which detects and reports the torn tail).
    poisoned: bool,
    /// The CA the log was verified against; appends must be signed by the same CA.
    ca_public_key: Vec<u8>,
}

impl AuditLog {
    /// Opens (creating, 0600) the log at `path` after verifying it. A torn tail or any tampering
    /// is an error: appending would bury it.
    pub fn open(path: &Path, ca: &CertAuthority) -> Result<Self> {
        let created = !path.exists();
        let (next_seq, prev_hash) = match verify(path, &ca.public_key_sec1(), None)? {
            AuditVerdict::Intact { head: None, .. } => (1, GENESIS_HASH.to_owned()),
            AuditVerdict::Intact { head: Some(h), .. } => (h.seq + 1, h.hash),
            AuditVerdict::TornTail { line, .. } => {
                return Err(Error::AuditTornTail {
                    path: path.to_path_buf(),
                    line,
                });
            }
            AuditVerdict::Tampered { line, problem } => {
                return Err(Error::AuditTampered {
                    path: path.to_path_buf(),
                    line,
                    reason: problem.to_string(),
                });
            }
        };
        let file =
            open_append_private(path).map_err(|e| Error::io("open for appending", path, e))?;
        if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            next_seq,
            prev_hash,
            poisoned: false,
            ca_public_key: ca.public_key_sec1(),
        })
    }

    /// Appends one signed entry and fsyncs it. Returns the entry written.
    pub fn append(
        &mut self,
        ca: &CertAuthority,
        event: &str,
        actor: &str,
        details: Value,
        now: OffsetDateTime,
    ) -> Result<AuditEntry> {
        if self.poisoned {
            return Err(Error::AuditTornTail {
                path: self.path.clone(),
                line: usize::try_from(self.next_seq).unwrap_or(usize::MAX),
            });
        }
        if ca.public_key_sec1() != self.ca_public_key {
            return Err(Error::Issuance {
                reason: "the audit log was opened for another CA than the one signing this entry"
                    .into(),
                next: "Open the log with the CA that will sign its entries.",
            });
        }
        let ts = now
            .to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::crypto("format the audit timestamp", e))?;
        let mut entry = AuditEntry {
            seq: self.next_seq,
            ts,
            event: event.to_owned(),
            actor: actor.to_owned(),
            details,
            prev_hash: self.prev_hash.clone(),
            hash: String::new(),
            sig: String::new(),
        };
        let body = entry.canonical_body();
        entry.hash = hex::encode(Sha256::digest(&body));
        entry.sig = B64.encode(ca.sign(&body)?);
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| Error::crypto("encode the audit entry", e))?;
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            self.poisoned = true;
            return Err(Error::io("append to", &self.path, e));
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(Error::io("flush", &self.path, e));
        }
        self.next_seq += 1;
        self.prev_hash = entry.hash.clone();
        Ok(entry)
    }

    /// The head after the last append (store it in the roster).
    pub fn head(&self) -> Option<AuditHead> {
        (self.next_seq > 1).then(|| AuditHead {
            seq: self.next_seq - 1,
            hash: self.prev_hash.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":"é"}],"c":null}}"#).unwrap();
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#
        );
    }
}
