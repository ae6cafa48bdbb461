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
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use crate::audit_log::AuditLog;

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
    pub(crate) fn canonical_body(&self) -> Vec<u8> {
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
    /// The entry a signed checkpoint ends at is not there: the log before the checkpoint was
    /// edited, cut or replaced.
    CheckpointMismatch {
        /// The checkpoint's seq.
        seq: u64,
    },
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
            Tamper::CheckpointMismatch { seq } => write!(
                f,
                "entry {seq}, where the CA's signed checkpoint ends, is not the entry the CA signed there (the log before it was edited, cut or replaced)"
            ),
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

/// Longest line the readers accept. Entries written since refusals are bounded are far smaller
/// (about 1.5 KB at most); logs written before that could hold refusals of a few hundred KB.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Entries between two progress calls of [`verify_with_progress`].
pub const PROGRESS_EVERY: u64 = 1000;

/// Where verification starts: the beginning of the log, or a verified [`Checkpoint`]'s position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Start {
    /// Entries before `offset`.
    pub(crate) seq: u64,
    /// Hash of entry `seq` (the genesis hash for 0).
    pub(crate) hash: String,
    /// Byte offset of entry `seq + 1`.
    pub(crate) offset: u64,
}

impl Start {
    pub(crate) fn genesis() -> Self {
        Start {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
            offset: 0,
        }
    }
}

/// Verifies the whole log at `path` against the CA public key (uncompressed SEC1 point).
/// A missing file is an empty, intact log. `expected_head`, if given, must be present.
/// Streams the file one line at a time: memory stays constant whatever the log's size.
pub fn verify(
    path: &Path,
    ca_public_key_sec1: &[u8],
    expected_head: Option<&AuditHead>,
) -> Result<AuditVerdict> {
    verify_with_progress(path, ca_public_key_sec1, expected_head, &mut |_| {})
}

/// [`verify`], calling `progress` with the number of bytes verified so far after every
/// [`PROGRESS_EVERY`] entries (a caller reports it, so a long verification shows it is alive).
pub fn verify_with_progress(
    path: &Path,
    ca_public_key_sec1: &[u8],
    expected_head: Option<&AuditHead>,
    progress: &mut dyn FnMut(u64),
) -> Result<AuditVerdict> {
    let key = verifying_key(ca_public_key_sec1)?;
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(verify_reader(&[][..], &key, Start::genesis(), expected_head, progress).0);
        }
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let reader = BufReader::with_capacity(64 * 1024, file);
    let (verdict, io) = verify_reader(reader, &key, Start::genesis(), expected_head, progress);
    io.map_err(|e| Error::io("read", path, e))?;
    Ok(verdict)
}

pub(crate) fn verifying_key(ca_public_key_sec1: &[u8]) -> Result<VerifyingKey> {
    VerifyingKey::from_sec1_bytes(ca_public_key_sec1).map_err(|e| Error::InvalidCertificate {
        what: "of the CA (for audit verification)".into(),
        reason: format!("its public key is not a P-256 point ({e})"),
    })
}

/// Verifies the entries `reader` yields, starting after `start`. Returns the verdict and, for an
/// intact log, the offset of its end; a read error is returned beside the verdict so far.
pub(crate) fn verify_reader<R: BufRead>(
    mut reader: R,
    key: &VerifyingKey,
    start: Start,
    expected_head: Option<&AuditHead>,
    progress: &mut dyn FnMut(u64),
) -> (AuditVerdict, std::io::Result<u64>) {
    let mut prev_hash = start.hash;
    let mut count = start.seq;
    let mut offset = start.offset;
    let mut line_no = usize::try_from(start.seq).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        let read = match (&mut reader).take(limit).read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let verdict = AuditVerdict::Intact {
                    entries: count,
                    head: None,
                };
                return (verdict, Err(e));
            }
        };
        if read == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE_BYTES {
                let reason = format!("a line longer than {MAX_LINE_BYTES} bytes");
                return tampered(line_no, Tamper::Unparseable { reason }, offset);
            }
            let verdict = AuditVerdict::TornTail {
                line: line_no,
                entries: count,
                offset,
            };
            return (verdict, Ok(offset));
        }
        let line = &buf[..buf.len() - 1];
        let entry: AuditEntry = match std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(reason) => return tampered(line_no, Tamper::Unparseable { reason }, offset),
        };
        if let Err(problem) = check_entry(&entry, count + 1, &prev_hash, key) {
            return tampered(line_no, problem, offset);
        }
        count += 1;
        offset += read as u64;
        prev_hash = entry.hash;
        if count.is_multiple_of(PROGRESS_EVERY) {
            progress(offset);
        }
    }
    (finish(count, prev_hash, line_no, expected_head), Ok(offset))
}

/// [`verify_reader`]'s answer for a bad line: the verdict names it, and reading stopped at
/// `offset` (the start of that line).
fn tampered(line: usize, problem: Tamper, offset: u64) -> (AuditVerdict, std::io::Result<u64>) {
    (AuditVerdict::Tampered { line, problem }, Ok(offset))
}

fn finish(
    count: u64,
    prev_hash: String,
    line_no: usize,
    expected_head: Option<&AuditHead>,
) -> AuditVerdict {
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

pub(crate) fn check_entry(
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
        AuditVerdict::TornTail { offset, .. } => crate::audit_log::truncate_at(path, offset),
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
