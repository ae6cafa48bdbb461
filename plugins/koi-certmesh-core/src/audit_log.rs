//! The open audit log: verified on open (from its signed checkpoint when there is one, see
//! [`crate::checkpoint`]), then appended to one signed, fsynced line at a time, with a fresh
//! checkpoint every [`crate::checkpoint::CHECKPOINT_EVERY`] appends. The format and verification
//! are in [`crate::audit`].

use std::fs;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::atomic::{open_append_private, sync_dir};
use crate::audit::{
    AuditEntry, AuditHead, AuditVerdict, GENESIS_HASH, Start, Tamper, verify_reader, verifying_key,
};
use crate::ca::CertAuthority;
use crate::error::{Error, Result};

/// Cuts the file at `path` to `offset` bytes and flushes it; returns the bytes removed.
pub(crate) fn truncate_at(path: &Path, offset: u64) -> Result<u64> {
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
    /// Entries were written by [`Self::append_unsynced`] and not yet fsynced.
    unsynced: bool,
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
            unsynced: false,
            ca_public_key: public,
        };
        Ok((log, torn))
    }

    /// Signs and writes a checkpoint at the current head (nothing for an empty log). The caller
    /// decides what a failure means; a missing checkpoint only makes the next open slower.
    /// Entries not yet fsynced ([`Self::append_unsynced`]) are fsynced first, so a checkpoint
    /// never covers an entry that could still be lost.
    pub fn write_checkpoint(&mut self, ca: &CertAuthority) -> Result<()> {
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(Error::io("flush", &self.path, e));
            }
            self.unsynced = false;
        }
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
        let entry = self.append_unsynced(ca, event, actor, details, now)?;
        self.sync(ca)?;
        Ok(entry)
    }

    /// Appends one signed entry WITHOUT fsyncing it (group commit: the CA's renewal batch
    /// appends one entry per renewal, then calls [`Self::sync`] once, before it saves the roster
    /// or answers anyone). Nothing may rely on the entry — no roster may record it as the head,
    /// no answer may leave — until [`Self::sync`] returned `Ok`. No checkpoint is written here,
    /// so a checkpoint never covers an entry that is not durable.
    pub fn append_unsynced(
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
        self.next_seq += 1;
        self.prev_hash = entry.hash.clone();
        self.end += line.len() as u64;
        self.since_checkpoint += 1;
        self.unsynced = true;
        Ok(entry)
    }

    /// Fsyncs the entries appended since the last sync (none: nothing to do), then writes a
    /// checkpoint when one is due. A failed fsync poisons the log: further appends are refused
    /// until it is reopened, which finds whatever did not reach the disk.
    pub fn sync(&mut self, ca: &CertAuthority) -> Result<()> {
        if self.poisoned {
            return Err(Error::AuditTornTail {
                path: self.path.clone(),
                line: usize::try_from(self.next_seq).unwrap_or(usize::MAX),
            });
        }
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(Error::io("flush", &self.path, e));
            }
            self.unsynced = false;
        }
        if self.since_checkpoint >= crate::checkpoint::CHECKPOINT_EVERY {
            // Best effort: the entries are durable; without a fresh checkpoint the next open
            // verifies a little more.
            let _ = self.write_checkpoint(ca);
        }
        Ok(())
    }

    /// The head after the last append (store it in the roster).
    pub fn head(&self) -> Option<AuditHead> {
        (self.next_seq > 1).then(|| AuditHead {
            seq: self.next_seq - 1,
            hash: self.prev_hash.clone(),
        })
    }
}
