//! `koi certmesh log [--verify] [--last N]`: the CA's audit log. `--verify` checks every line's
//! hash chain and CA signature and the roster's anchor of the last entry, and fails naming the
//! first bad line (an edited, removed or reordered entry, or a cut-off end). On a standby CA it
//! shows the standby's synced copy of the primary's log (`standby/audit.log`, [`crate::standby_audit`])
//! under the root the standby holds, with `copy_of` naming the primary (no roster anchor: the
//! copy may run ahead of the last manifest).
//!
//! Cost. Entries are read backwards from the end of the file ([`audit_tail::read_last`]): the last
//! [`DEFAULT_PAGE`] unless `--last N` (at most [`MAX_PAGE`]). `--verify` streams the file one line
//! at a time (constant memory) on the blocking pool, so the plugin keeps answering the host.

use koi_certmesh_core::Roster;
use koi_certmesh_core::audit::{self, AuditEntry, AuditVerdict};
use koi_certmesh_core::audit_tail;
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
    /// Show only the last N entries (default 1000, at most 10000).
    #[serde(default)]
    pub last: Option<u32>,
}

/// Entries shown without `--last`.
pub const DEFAULT_PAGE: u32 = 1000;
/// Most entries one `log` answer holds (each at most about 1.5 KB: well inside the frame limit).
pub const MAX_PAGE: u32 = 10_000;

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
    /// The last N entries, oldest first.
    pub entries: Vec<LogEntry>,
    /// With --verify: `intact` and the number of entries checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Refusals recorded while the CA was locked, waiting to be signed in at the next unlock.
    pub pending_unsigned: usize,
    /// On a standby: the primary whose log this is a copy of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

/// Which log `log` reads: its file, the root that signed it and the roster anchor, if any.
struct Source {
    path: std::path::PathBuf,
    ca_pem: std::path::PathBuf,
    anchor: bool,
    copy_of: Option<String>,
}

/// The `log` method.
pub async fn run(ctx: Context, p: LogParams) -> Result<LogResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    let source = if layout.is_ca() {
        Source {
            path: layout.audit(),
            ca_pem: layout.ca_dir().join("ca.pem"),
            anchor: true,
            copy_of: None,
        }
    } else if let Some(state) = crate::standby_state::load(&layout) {
        Source {
            path: crate::standby_state::audit_path(&layout),
            ca_pem: crate::standby_state::ca_dir(&layout).join("ca.pem"),
            anchor: false,
            copy_of: Some(state.primary),
        }
    } else {
        return Err(error::fail(
            "This machine is not a certmesh CA; the audit log lives on the CA.",
            "Run `koi certmesh log` on the CA.",
        ));
    };
    let last = p.last.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
    let verify = p.verify;
    let reporter = ctx.clone();
    ctx.blocking("log", move || {
        // Refusals counted but not yet written go in first, so the log is up to date.
        authority.flush_refusals();
        let verified = if verify {
            Some(verify_all(&layout, &source, &reporter)?)
        } else {
            None
        };
        let path = source.path.clone();
        let n = usize::try_from(last).unwrap_or(usize::MAX);
        let entries = audit_tail::read_last(&path, n)
            .map_err(error::core)?
            .into_iter()
            .map(|e: AuditEntry| LogEntry {
                seq: e.seq,
                ts: e.ts,
                event: e.event,
                actor: e.actor,
                details: e.details,
                hash: e.hash,
            })
            .collect();
        Ok(LogResult {
            entries,
            verified,
            pending_unsigned: if source.anchor {
                crate::pending::pending_count(&layout)
            } else {
                0
            },
            copy_of: source.copy_of,
        })
    })
    .await
}

/// Verifies every line of the log (streaming) against the CA key and, on the CA, the roster's
/// anchor. Reports progress (bytes) as it goes, which also tells the host the method is alive.
fn verify_all(
    layout: &crate::layout::Layout,
    source: &Source,
    ctx: &Context,
) -> Result<String, MethodError> {
    let path = source.path.clone();
    let total = std::fs::metadata(&path).map_or(0, |m| m.len());
    let ca_pem = std::fs::read_to_string(&source.ca_pem).map_err(|e| {
        error::fail(
            format!("Failed to read the CA certificate: {e}."),
            koi_certmesh_core::roster::ROSTER_DAMAGED_NEXT.replace("roster.json", "ca/ca.pem"),
        )
    })?;
    let key = crate::x509::public_key(&ca_pem).ok_or_else(|| {
        error::fail(
            "The CA certificate does not parse.",
            koi_certmesh_core::roster::ROSTER_DAMAGED_NEXT.replace("roster.json", "ca/ca.pem"),
        )
    })?;
    let head = if source.anchor {
        Roster::load(&layout.roster())
            .map_err(error::core)?
            .mesh
            .audit_head
    } else {
        None
    };
    let mut progress = |done: u64| {
        ctx.progress("Verifying the audit log…", Some(done), Some(total));
    };
    match audit::verify_with_progress(&path, &key, head.as_ref(), &mut progress)
        .map_err(error::core)?
    {
        AuditVerdict::Intact { entries, .. } => Ok(format!(
            "intact: {entries} entries, every hash and signature checks"
        )),
        AuditVerdict::Tampered { line, problem } if !source.anchor => Err(error::fail(
            format!(
                "This standby's copy of the audit log {} fails verification at line {line}: \
                 {problem}.",
                path.display()
            ),
            "Run `koi certmesh log --verify` on the primary; if its log verifies, run `koi \
             certmesh promote` here again for a fresh copy.",
        )),
        AuditVerdict::TornTail { line, .. } if !source.anchor => Err(error::fail(
            format!(
                "This standby's copy of the audit log {} ends in a partial line (line {line}): a \
                 crash interrupted a sync.",
                path.display()
            ),
            "Start `koi daemon`: the standby's next sync cuts the partial line and appends the \
             rest from the primary.",
        )),
        AuditVerdict::Tampered { line, problem } => Err(error::fail(
            format!(
                "The audit log {} fails verification at line {line}: {problem}.",
                path.display()
            ),
            "Entries were edited, removed or reordered after they were written. koi keeps no copy \
             of the log: put back one you saved. If this CA may be compromised, start a new mesh \
             with `koi certmesh leave` (it keeps this log as evidence) and then `koi certmesh \
             create` (members join the new mesh).",
        )),
        AuditVerdict::TornTail { line, .. } => Err(error::fail(
            format!(
                "The audit log {} ends in a partial line (line {line}): a crash interrupted a write.",
                path.display()
            ),
            "`koi certmesh unlock` repairs it (the repair itself is audited).",
        )),
    }
}
