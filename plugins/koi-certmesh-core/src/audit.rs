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
//! Verification lives in [`crate::audit_verify`] and is re-exported here.

use std::fs;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::atomic::{open_append_private, sync_dir};
pub use crate::audit_verify::{
    AuditVerdict, MAX_LINE_BYTES, PROGRESS_EVERY, Tamper, verify, verify_with_progress,
};
use crate::audit_verify::{Start, verify_reader, verifying_key};
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
        AuditVerdict::TornTail { offset, .. } => truncate_at(path, offset),
    }
}

/// Cuts the file at `path` to `offset` bytes and flushes it; returns the bytes removed.
fn truncate_at(path: &Path, offset: u64) -> Result<u64> {
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
    Ok(len.saturating_sub(offset))
}

/// The hash of the last entry of the (just verified, whole-lined) log, `entries` long.
fn last_head(path: &Path, entries: u64) -> Result<String> {
    if entries == 0 {
        return Ok(GENESIS_HASH.to_owned());
    }
    let last = crate::audit_tail::read_last(path, 1)?;
    match last.into_iter().next() {
        Some(e) if e.seq == entries => Ok(e.hash),
        _ => Err(Error::AuditTampered {
            path: path.to_path_buf(),
            line: usize::try_from(entries).unwrap_or(usize::MAX),
            reason: "the last entry changed while the log was being repaired".into(),
        }),
    }
}

/// An open log, positioned after its last verified entry.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: fs::File,
    next_seq: u64,
    prev_hash: String,
    /// Byte offset of the end of the last entry.
    end: u64,
    /// Entries appended since the last checkpoint was written.
    since_checkpoint: u64,
    /// Set when a write or fsync failed: the file may end in a partial line, so further appends
    /// are refused until the log is reopened (which detects and reports the torn tail).
    poisoned: bool,
    /// The CA the log was verified against; appends must be signed by the same CA.
    ca_public_key: Vec<u8>,
}

impl AuditLog {
    /// Opens (creating, 0600) the log at `path` after verifying it — from its signed checkpoint
    /// when there is a valid one ([`crate::checkpoint`]), else every entry. A torn tail or any
    /// tampering is an error: appending would bury it.
    pub fn open(path: &Path, ca: &CertAuthority) -> Result<Self> {
        Self::open_with(path, ca, false).map(|(log, _)| log)
    }

    /// [`Self::open`], but a torn last line (a crash mid-append) is truncated instead of refused.
    /// Returns the log and the number of bytes removed (0 normally).
    pub fn open_repairing(path: &Path, ca: &CertAuthority) -> Result<(Self, u64)> {
        Self::open_with(path, ca, true)
    }

    fn open_with(path: &Path, ca: &CertAuthority, repair: bool) -> Result<(Self, u64)> {
        let public = ca.public_key_sec1();
        let key = verifying_key(&public)?;
        let created = !path.exists();
        let tampered = |line: usize, problem: Tamper| Error::AuditTampered {
            path: path.to_path_buf(),
            line,
            reason: problem.to_string(),
        };
        let (verdict, mut end) = match fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                AuditVerdict::Intact {
                    entries: 0,
                    head: None,
                },
                0,
            ),
            Err(e) => return Err(Error::io("read", path, e)),
            Ok(mut file) => {
                let start = match crate::checkpoint::load(path, &key) {
                    Some(cp) => crate::checkpoint::resume_at(&mut file, &cp, &key)
                        .map_err(|p| tampered(usize::try_from(cp.seq).unwrap_or(usize::MAX), p))?,
                    None => Start::genesis(),
                };
                file.seek(SeekFrom::Start(start.offset))
                    .map_err(|e| Error::io("read", path, e))?;
                let reader = BufReader::with_capacity(64 * 1024, file);
                let (verdict, io) = verify_reader(reader, &key, start, None, &mut |_| {});
                (verdict, io.map_err(|e| Error::io("read", path, e))?)
            }
        };
        let mut torn = 0;
        let (next_seq, prev_hash) = match verdict {
            AuditVerdict::Intact { head: None, .. } => (1, GENESIS_HASH.to_owned()),
            AuditVerdict::Intact { head: Some(h), .. } => (h.seq + 1, h.hash),
            AuditVerdict::TornTail { line, .. } if !repair => {
                return Err(Error::AuditTornTail {
                    path: path.to_path_buf(),
                    line,
                });
            }
            AuditVerdict::TornTail {
                entries, offset, ..
            } => {
                torn = truncate_at(path, offset)?;
                end = offset;
                // The tail after `offset` is gone; the head is the last intact entry.
                let head = last_head(path, entries)?;
                (entries + 1, head)
            }
            AuditVerdict::Tampered { line, problem } => return Err(tampered(line, problem)),
        };
        let file =
            open_append_private(path).map_err(|e| Error::io("open for appending", path, e))?;
        if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        let log = AuditLog {
            path: path.to_path_buf(),
            file,
            next_seq,
            prev_hash,
            end,
            since_checkpoint: 0,
            poisoned: false,
            ca_public_key: public,
        };
        Ok((log, torn))
    }

    /// Signs and writes a checkpoint at the current head (nothing for an empty log). The caller
    /// decides what a failure means; a missing checkpoint only makes the next open slower.
    pub fn write_checkpoint(&mut self, ca: &CertAuthority) -> Result<()> {
        let Some(head) = self.head() else {
            return Ok(());
        };
        let cp = crate::checkpoint::Checkpoint::sign(ca, head.seq, self.end, &head.hash)?;
        crate::checkpoint::save(&self.path, &cp)?;
        self.since_checkpoint = 0;
        Ok(())
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
        self.end += line.len() as u64;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= crate::checkpoint::CHECKPOINT_EVERY {
            // Best effort: the entry is durable; without a fresh checkpoint the next open
            // verifies a little more.
            let _ = self.write_checkpoint(ca);
        }
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
