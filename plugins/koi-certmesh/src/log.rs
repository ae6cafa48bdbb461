//! `koi certmesh log [--verify] [--last N]`: the CA's audit log. `--verify` checks every line's
//! hash chain and CA signature and the roster's anchor of the last entry, and fails naming the
//! first bad line (an edited, removed or reordered entry, or a cut-off end).

use std::sync::Arc;

use koi_certmesh_core::Roster;
use koi_certmesh_core::audit::{self, AuditEntry, AuditVerdict};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::error;

/// Params of `log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Check the hash chain and signatures; fail on the first bad line.
    #[serde(default)]
    pub verify: bool,
    /// Show only the last N entries.
    #[serde(default)]
    pub last: Option<u32>,
}

/// One entry as shown.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogEntry {
    /// Sequence number.
    pub seq: u64,
    /// Time (RFC 3339, UTC).
    #[schemars(title = "Time")]
    pub ts: String,
    /// Event.
    pub event: String,
    /// Who.
    pub actor: String,
    /// Event details.
    pub details: Value,
    /// This entry's hash (the next entry's `prev_hash`).
    pub hash: String,
}

/// Result of `log`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogResult {
    /// The entries (all, or the last N).
    pub entries: Vec<LogEntry>,
    /// With --verify: `intact` and the number of entries checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Refusals recorded while the CA was locked, waiting to be signed in at the next unlock.
    pub pending_unsigned: usize,
}

/// The `log` method.
pub async fn run(app: Arc<App>, ctx: Context, p: LogParams) -> Result<LogResult, MethodError> {
    let layout = app.authority(&ctx).layout().clone();
    if !layout.is_ca() {
        return Err(error::fail(
            "This machine is not a certmesh CA; the audit log lives on the CA.",
            "Run `koi certmesh log` on the CA.",
        ));
    }
    let path = layout.audit();
    let verified = if p.verify {
        let ca_pem = std::fs::read_to_string(layout.ca_dir().join("ca.pem")).map_err(|e| {
            error::fail(
                format!("Failed to read the CA certificate: {e}."),
                "The CA directory is damaged; restore it from a backup.",
            )
        })?;
        let key = crate::x509::public_key(&ca_pem).ok_or_else(|| {
            error::fail(
                "The CA certificate does not parse.",
                "The CA directory is damaged; restore it from a backup.",
            )
        })?;
        let head = Roster::load(&layout.roster())
            .map_err(error::core)?
            .mesh
            .audit_head;
        match audit::verify(&path, &key, head.as_ref()).map_err(error::core)? {
            AuditVerdict::Intact { entries, .. } => Some(format!(
                "intact: {entries} entries, every hash and signature checks"
            )),
            AuditVerdict::Tampered { line, problem } => {
                return Err(error::fail(
                    format!(
                        "The audit log {} fails verification at line {line}: {problem}.",
                        path.display()
                    ),
                    "Entries were edited, removed or reordered after they were written. Keep this copy as evidence and restore the log from a backup.",
                ));
            }
            AuditVerdict::TornTail { line, .. } => {
                return Err(error::fail(
                    format!(
                        "The audit log {} ends in a partial line (line {line}): a crash interrupted a write.",
                        path.display()
                    ),
                    "`koi certmesh unlock` repairs it (the repair itself is audited).",
                ));
            }
        }
    } else {
        None
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(error::fail(
                format!("Failed to read {}: {e}.", path.display()),
                "Check its permissions.",
            ));
        }
    };
    let mut entries: Vec<LogEntry> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .map(|e| LogEntry {
            seq: e.seq,
            ts: e.ts,
            event: e.event,
            actor: e.actor,
            details: e.details,
            hash: e.hash,
        })
        .collect();
    if let Some(n) = p.last {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    let pending_unsigned = crate::authority::pending_count(&layout);
    Ok(LogResult {
        entries,
        verified,
        pending_unsigned,
    })
}
