//! Signed checkpoints of the audit log, so opening it (at every unlock) costs the entries written
//! since the last checkpoint, not the whole chain.
//!
//! A checkpoint (`<log>.checkpoint`, e.g. `audit.jsonl.checkpoint`, 0600) records `{seq, offset,
//! hash, sig}`: entry `seq` ends at byte `offset` and has hash `hash`; `sig` is the CA's ECDSA
//! signature over the canonical JSON of `{kind, seq, offset, hash}`. The CA writes one after every
//! [`CHECKPOINT_EVERY`] (256) appends and at every unlock, always after the entries it covers are on disk.
//!
//! Opening from a checkpoint checks its signature, then that the line ending at `offset` is entry
//! `seq` with that hash (its own hash and signature are re-checked: one ECDSA verification), then
//! every entry after it in full. What that means for someone who can write the CA's files:
//! - They cannot forge a checkpoint (no CA key). A missing, unparseable or wrongly signed one
//!   makes the CA verify the whole log instead: slower, never weaker.
//! - An older genuine checkpoint only makes more entries get verified.
//! - Cutting or replacing the log before the checkpoint, or editing the entry it ends at, is caught.
//! - Editing an entry *before* the checkpoint is not caught at unlock (those bytes are not read);
//!   `koi certmesh log --verify` reads every line and catches it, and entries appended later
//!   still chain to the checkpointed head, so the edit cannot be made part of the chain.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, MAX_LINE_BYTES, Tamper, canonical_json};
use crate::audit_verify::Start;
use crate::ca::CertAuthority;
use crate::error::{Error, Result};

/// Appends between two checkpoints: an unlock verifies fewer than this many entries (plus the
/// ones it writes itself). A checkpoint costs one signature and an atomic write (≈ 1 % of 256
/// appends); verifying 256 entries costs ≈ 0.1 s at the release profile under load
/// (docs/benchmarks.md, "certmesh audit log at scale").
pub const CHECKPOINT_EVERY: u64 = 256;

const KIND: &str = "koi-certmesh audit checkpoint v1";

/// A signed position in the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Entries covered (the last one's seq).
    pub seq: u64,
    /// Byte offset just after entry `seq`'s newline.
    pub offset: u64,
    /// Entry `seq`'s hash.
    pub hash: String,
    /// CA signature (DER, base64) over the canonical `{kind, seq, offset, hash}`.
    pub sig: String,
}

impl Checkpoint {
    fn body(seq: u64, offset: u64, hash: &str) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_json(
            &json!({"kind": KIND, "seq": seq, "offset": offset, "hash": hash}),
            &mut out,
        );
        out
    }

    /// Signs a checkpoint at entry `seq` (hash `hash`) ending at `offset`.
    pub fn sign(ca: &CertAuthority, seq: u64, offset: u64, hash: &str) -> Result<Self> {
        let sig = B64.encode(ca.sign(&Self::body(seq, offset, hash))?);
        Ok(Checkpoint {
            seq,
            offset,
            hash: hash.to_owned(),
            sig,
        })
    }

    fn signature_ok(&self, key: &VerifyingKey) -> bool {
        B64.decode(&self.sig)
            .ok()
            .and_then(|d| Signature::from_der(&d).ok())
            .is_some_and(|sig| {
                key.verify(&Self::body(self.seq, self.offset, &self.hash), &sig)
                    .is_ok()
            })
    }
}

/// The checkpoint file of the log at `log`.
pub fn checkpoint_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(".checkpoint");
    log.with_file_name(name)
}

/// Writes `cp` atomically (0600) beside the log at `log`.
pub fn save(log: &Path, cp: &Checkpoint) -> Result<()> {
    let bytes = serde_json::to_vec(cp).map_err(|e| Error::crypto("encode the checkpoint", e))?;
    crate::atomic::write_atomic(&checkpoint_path(log), &bytes)
}

/// The checkpoint beside `log` if it exists, parses and carries the CA's signature; `None`
/// otherwise (the caller then verifies the whole log).
pub fn load(log: &Path, key: &VerifyingKey) -> Option<Checkpoint> {
    let path = checkpoint_path(log);
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut bytes)
        .ok()?;
    let cp: Checkpoint = serde_json::from_slice(&bytes).ok()?;
    (cp.seq > 0 && cp.signature_ok(key)).then_some(cp)
}

/// Checks that the line of `file` ending at `cp.offset` is the entry `cp` signed, and returns
/// where verification resumes. Reads at most one line.
pub(crate) fn resume_at(
    file: &mut fs::File,
    cp: &Checkpoint,
    key: &VerifyingKey,
) -> std::result::Result<Start, Tamper> {
    let mismatch = Tamper::CheckpointMismatch { seq: cp.seq };
    let len = file.metadata().map_err(|_| mismatch.clone())?.len();
    if cp.offset == 0 || len < cp.offset {
        return Err(mismatch);
    }
    let window = cp
        .offset
        .min(u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1);
    let from = cp.offset - window;
    let mut buf = vec![0u8; usize::try_from(window).map_err(|_| mismatch.clone())?];
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|_| mismatch.clone())?;
    if buf.pop() != Some(b'\n') {
        return Err(mismatch);
    }
    let line = match buf.iter().rposition(|&b| b == b'\n') {
        Some(nl) => &buf[nl + 1..],
        None if from == 0 => &buf[..],
        None => return Err(mismatch),
    };
    let entry: AuditEntry = serde_json::from_slice(line).map_err(|_| mismatch.clone())?;
    let body = entry.canonical_body();
    let intact = entry.seq == cp.seq
        && entry.hash == cp.hash
        && hex::encode(Sha256::digest(&body)) == entry.hash
        && B64
            .decode(&entry.sig)
            .ok()
            .and_then(|d| Signature::from_der(&d).ok())
            .is_some_and(|sig| key.verify(&body, &sig).is_ok());
    if !intact {
        return Err(mismatch);
    }
    Ok(Start {
        seq: cp.seq,
        hash: cp.hash.clone(),
        offset: cp.offset,
    })
}
