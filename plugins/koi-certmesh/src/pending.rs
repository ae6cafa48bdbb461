//! Refusals recorded while the CA is locked. They cannot be signed without the key, so
//! `append_pending` keeps each in `audit-pending.jsonl` (bounded by
//! [`crate::refusals::PENDING_MAX_BYTES`], fsynced); at the next unlock `take_pending` moves them
//! to `audit-pending.signing` and [`crate::authority::CaSession::open`] signs them into the log.
//! [`pending_count`] is what `status` and `log` report as not yet signed.

use koi_sdk::MethodError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::authority::ENROLLMENT_REFUSED;
use crate::error;
use crate::layout::Layout;

/// A refusal recorded while locked (`audit-pending.jsonl`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PendingEntry {
    pub(crate) ts: String,
    pub(crate) event: String,
    pub(crate) actor: String,
    pub(crate) details: Value,
}

/// Collects the pending refusals into `audit-pending.signing` (appending, so entries left there by
/// an unlock that crashed mid-signing are kept) and reads them. The caller removes the file once
/// they are signed in: a crash in between signs some twice rather than losing any. Reads line by
/// line and keeps at most [`crate::refusals::MAX_PENDING_LINES`] entries (a file written before
/// pending refusals were bounded can be huge); the rest are returned as a count.
pub(crate) fn take_pending(layout: &Layout) -> Result<(Vec<PendingEntry>, u64), MethodError> {
    use std::io::BufRead;
    let path = layout.audit_pending();
    let signing = layout.audit_pending_signing();
    let fail = |what: &str, p: &std::path::Path, e: std::io::Error| {
        error::fail(
            format!("Failed to {what} {}: {e}.", p.display()),
            "Check the permissions of KOI_HOME/certmesh.",
        )
    };
    match std::fs::File::open(&path) {
        Ok(mut src) => {
            if std::fs::metadata(&signing).is_err() {
                // The usual case: move it in one rename.
                std::fs::rename(&path, &signing).map_err(|e| fail("rename", &path, e))?;
            } else {
                let mut dst = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&signing)
                    .map_err(|e| fail("append to", &signing, e))?;
                std::io::copy(&mut src, &mut dst).map_err(|e| fail("append to", &signing, e))?;
                dst.sync_data().map_err(|e| fail("flush", &signing, e))?;
                std::fs::remove_file(&path).map_err(|e| fail("remove", &path, e))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("read", &path, e)),
    }
    let file = match std::fs::File::open(&signing) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(fail("read", &signing, e)),
    };
    let mut kept = Vec::new();
    let mut over = 0u64;
    // A torn last line (crash mid-write) or any unparseable line is dropped.
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| fail("read", &signing, e))?;
        if kept.len() >= crate::refusals::MAX_PENDING_LINES {
            over += 1;
            continue;
        }
        if let Ok(p) = serde_json::from_slice::<PendingEntry>(&line) {
            kept.push(p);
        }
    }
    Ok((kept, over))
}

/// Appends one refusal to `audit-pending.jsonl`; `Ok(false)` when the file has reached
/// [`crate::refusals::PENDING_MAX_BYTES`] and the refusal was not stored.
pub(crate) fn append_pending(
    layout: &Layout,
    actor: &str,
    details: Value,
) -> Result<bool, MethodError> {
    append_pending_event(layout, ENROLLMENT_REFUSED, actor, details)
}

/// [`append_pending`] for any event (a takeover's `ca_failover`, [`crate::takeover`]).
pub(crate) fn append_pending_event(
    layout: &Layout,
    event: &str,
    actor: &str,
    details: Value,
) -> Result<bool, MethodError> {
    let path = layout.audit_pending();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    if size >= crate::refusals::PENDING_MAX_BYTES {
        return Ok(false);
    }
    let entry = PendingEntry {
        ts: crate::names::rfc3339(OffsetDateTime::now_utc()),
        event: event.into(),
        actor: actor.into(),
        details,
    };
    let mut line = serde_json::to_vec(&entry)
        .map_err(|e| MethodError::new(format!("Failed to encode an audit entry: {e}")))?;
    line.push(b'\n');
    append_durably(&path, &line).map_err(|e| {
        error::fail(
            format!("Failed to append to {}: {e}.", path.display()),
            "Check the disk and the permissions of KOI_HOME/certmesh.",
        )
    })?;
    Ok(true)
}

/// Appends `bytes` to `path` (created 0600, its directory flushed then) in one write, then
/// flushes it to disk: [`koi_sdk::store::append_durable`], with the operating system's error.
fn append_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    koi_sdk::store::append_durable(path, bytes, 0o600).map_err(std::io::Error::from)
}

/// Refusals recorded while locked and not yet signed into the audit log.
pub fn pending_count(layout: &Layout) -> usize {
    use std::io::BufRead;
    [layout.audit_pending(), layout.audit_pending_signing()]
        .iter()
        .filter_map(|p| std::fs::File::open(p).ok())
        .map(|f| {
            std::io::BufReader::new(f)
                .split(b'\n')
                .take_while(Result::is_ok)
                .count()
        })
        .sum()
}
