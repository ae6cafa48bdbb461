//! Audit log sync to a standby CA: append-only, every entry verified before it is kept.
//!
//! The standby asks `POST /v1/certmesh/standby/audit {offset}` — the byte length of its copy —
//! and the primary answers the whole lines of its log from that offset (at most [`CHUNK_BYTES`]
//! per answer, with its log's length so the standby knows whether more follows). The standby
//! verifies them as the continuation of its copy ([`koi_certmesh_core::standby::verify_continuation`]:
//! the CA's signature on each entry and the hash chain from the copy's last entry) with the root
//! it holds, and only then appends them (fsynced). A primary whose log is shorter than the copy, or
//! whose entries do not chain to it (restored from an old backup, or tampered), is refused and the
//! copy is left as it is; the reason is in `status` (`standby.last_audit_sync_error`). Reading
//! needs no key, so a locked primary still serves its log.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{self, Answer, CaEndpoint};
use crate::error::Refusal;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::standby_state::{self, StandbyState};
use crate::tls::CaPin;

/// The audit sync route.
pub const AUDIT_PATH: &str = "/v1/certmesh/standby/audit";
/// Most bytes of log lines in one answer (more than the longest audit line, 1 MiB).
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Most answers fetched in one sync (the rest follows at the next).
pub const MAX_ROUNDS: usize = 64;

/// `POST /v1/certmesh/standby/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// The byte length of the standby's copy: send the lines from here.
    pub offset: u64,
}

/// The answer: whole lines from `offset`, and the primary log's length.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditChunk {
    /// Whole lines (possibly none).
    pub lines: String,
    /// The primary's log length in bytes.
    pub log_bytes: u64,
}

/// The primary's side (blocking): the lines of its log from `bytes`' offset.
pub fn serve(layout: &Layout, body: &[u8]) -> Result<AuditChunk, Refusal> {
    let req: AuditRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal::BadRequest(format!(
            "The audit sync request is not valid JSON of the expected shape: {e}."
        ))
    })?;
    let path = layout.audit();
    let mut file = std::fs::File::open(&path)
        .map_err(|e| Refusal::Internal(format!("cannot read the audit log: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| Refusal::Internal(e.to_string()))?
        .len();
    if req.offset > len {
        return Err(Refusal::NotPermitted(format!(
            "The standby's copy of the audit log ({} bytes) is longer than this primary's log ({len} bytes): the logs diverged (was this primary restored from a backup?). The standby keeps its copy; promote it again to replace the copy.",
            req.offset
        )));
    }
    file.seek(SeekFrom::Start(req.offset))
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let mut buf = Vec::with_capacity(
        CHUNK_BYTES.min(usize::try_from(len - req.offset).unwrap_or(CHUNK_BYTES)),
    );
    file.take(CHUNK_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    let lines = String::from_utf8(buf)
        .map_err(|_| Refusal::Internal("the audit log is not UTF-8".into()))?;
    Ok(AuditChunk {
        lines,
        log_bytes: len,
    })
}

/// Removes a torn last line of the copy (a crash mid-append); returns the copy's length.
fn trim_torn(path: &Path) -> Result<u64, String> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot open the standby's audit copy: {e}")),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(0);
        file.seek(SeekFrom::Start(start))
            .map_err(|e| e.to_string())?;
        file.read_exact(&mut block[..n])
            .map_err(|e| e.to_string())?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        tracing::warn!(
            "certmesh standby: removed a torn last line ({} bytes) from the audit copy",
            len - end
        );
    }
    Ok(end)
}

/// Verifies `lines` against the copy at `path` (length `offset`) and appends them.
fn verify_and_append(path: &Path, ca_pem: &str, offset: u64, lines: &[u8]) -> Result<u64, String> {
    let head = koi_certmesh_core::audit_tail::read_last(path, 1)
        .map_err(|e| e.to_string())?
        .pop()
        .map(|e| koi_certmesh_core::AuditHead {
            seq: e.seq,
            hash: e.hash,
        });
    let after =
        koi_certmesh_core::standby::verify_continuation(ca_pem, head.as_ref(), offset, lines)?;
    if !lines.is_empty() {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot append to the standby's audit copy: {e}"))?;
        file.write_all(lines).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
    }
    Ok(after.map_or(0, |h| h.seq))
}

/// The standby's side: fetches, verifies and appends until the copy is level with the primary
/// (or [`MAX_ROUNDS`] answers). Returns the copy's entry count.
pub async fn sync(layout: &Layout, state: &StandbyState) -> Result<u64, String> {
    let membership = Membership::load(layout)
        .map_err(|e| e.message().to_owned())?
        .ok_or("this machine is no longer in a mesh")?;
    let files = CertFiles::at(layout, &membership.hostname);
    let endpoint =
        CaEndpoint::parse(&state.primary_endpoint).map_err(|e| e.message().to_owned())?;
    let pin = CaPin::new(Some(state.ca_fingerprint.clone()));
    let path = standby_state::audit_path(layout);
    let ca_path = standby_state::ca_dir(layout).join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path)
        .map_err(|e| format!("cannot read the standby's root {}: {e}", ca_path.display()))?;
    let mut entries = state.audit_entries;
    for _ in 0..MAX_ROUNDS {
        let p = path.clone();
        let offset = tokio::task::spawn_blocking(move || trim_torn(&p))
            .await
            .map_err(|e| e.to_string())??;
        let answer = client::request_up_to::<AuditRequest, AuditChunk>(
            &endpoint,
            &pin,
            Some(files.tls_identity()?),
            Method::POST,
            AUDIT_PATH,
            Some(&AuditRequest { offset }),
            CHUNK_BYTES * 2 + 4096,
        )
        .await
        .map_err(|e| e.message().to_owned())?;
        let chunk = match answer {
            Answer::Ok(c) => c,
            Answer::Refused { status, body } => {
                return Err(format!(
                    "the primary at {endpoint} refused the audit sync ({status} {}): {}",
                    body.reason, body.error
                ));
            }
        };
        let got = chunk.lines.len() as u64;
        let (p, pem) = (path.clone(), ca_pem.clone());
        entries = tokio::task::spawn_blocking(move || {
            verify_and_append(&p, &pem, offset, chunk.lines.as_bytes())
        })
        .await
        .map_err(|e| e.to_string())??
        .max(entries);
        if got == 0 || offset + got >= chunk.log_bytes {
            break;
        }
    }
    Ok(entries)
}
