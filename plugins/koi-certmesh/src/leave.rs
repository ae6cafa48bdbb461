//! `koi certmesh leave [--yes]`: this machine stops being part of its mesh, member or CA. After
//! a confirmation (a typed host name on the CA, whose key is destroyed), it removes the mesh root
//! from every trust store, keeps a record of the leave (and the CA's audit log, roster and root)
//! under `$KOI_HOME/certmesh-left/<anchor name>/`, deletes this machine's certificate folders of
//! the mesh, then the mesh state itself.
//!
//! Crash safety comes from the order: every step before the last is idempotent and leaves
//! `certmesh/` in place, so a run killed there is simply run again; the last step renames
//! `certmesh/` to `certmesh.leaving/` (atomic) and deletes that, and any run finds a leftover
//! `certmesh.leaving/` and finishes deleting it first. If a trust store cannot be changed, the
//! leave stops before anything else is removed, so the mesh still works and `leave` can be
//! retried with the privilege the store needs.

use koi_certmesh_core::Roster;
use koi_certmesh_core::atomic::{ensure_private_dir, write_atomic};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

use crate::app::{self, App};
use crate::authority::Authority;
use crate::error;
use crate::files::{Membership, anchor_name};
use crate::layout::Layout;
use crate::trust::{self, RemovalTarget};
use crate::truststore::{self, StoreReport};

/// The audit event a CA signs into its log before it is destroyed.
pub const MESH_LEFT: &str = "mesh_left";

/// Params of `leave`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveParams {
    /// Leave without asking (for scripts; required when there is no terminal to ask).
    #[serde(default)]
    pub yes: bool,
}

/// What `leave` did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LeaveResult {
    /// `primary` (this machine was the CA) or `member`; absent when only an interrupted leave
    /// was finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// SHA-256 of the mesh root that was removed from the trust stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// The root's removal from each trust store.
    pub trust: Vec<StoreReport>,
    /// Folders deleted: certificate folders of the mesh, then the mesh state.
    pub removed: Vec<String>,
    /// Where the record of the leave is kept (with the CA's audit log, roster and root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// How the leave was audited.
    pub audit: String,
    /// What to do next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<String>,
}

/// `left.json`: the record a leave keeps.
#[derive(Debug, Serialize, Deserialize)]
struct LeftRecord {
    ca_fingerprint: String,
    role: String,
    hostname: String,
    #[serde(default)]
    ca_endpoint: Option<String>,
    left_at: String,
    actor: String,
    audit: String,
}

/// The mesh this machine is leaving.
#[derive(Debug, Clone)]
struct Mesh {
    fingerprint: String,
    role: String,
    hostname: String,
    ca_endpoint: Option<String>,
}

impl Mesh {
    fn is_ca(&self) -> bool {
        self.role == "primary"
    }
}

/// `$KOI_HOME/certmesh.leaving`: the mesh state between its rename and its deletion.
fn leaving_dir(layout: &Layout) -> PathBuf {
    layout.home().join("certmesh.leaving")
}

/// `$KOI_HOME/certmesh-left/<anchor name>`: what is kept of a mesh this machine left.
fn record_dir(layout: &Layout, fingerprint: &str) -> PathBuf {
    layout
        .home()
        .join("certmesh-left")
        .join(anchor_name(fingerprint))
}

/// How `trust status` names a mesh this machine left: `left <when> (<role> <host>)`.
pub fn left_mesh(layout: &Layout, fingerprint: &str) -> Option<String> {
    let bytes = std::fs::read(record_dir(layout, fingerprint).join("left.json")).ok()?;
    let record: LeftRecord = serde_json::from_slice(&bytes).ok()?;
    let role = if record.role == "primary" {
        "CA"
    } else {
        "member"
    };
    Some(format!(
        "left {} (was {role} {})",
        record.left_at, record.hostname
    ))
}

/// The `leave` method.
pub async fn run(ctx: Context, p: LeaveParams) -> Result<LeaveResult, MethodError> {
    let app = App::of(&ctx)?;
    let authority = app.authority();
    let layout = authority.layout().clone();
    let _writer = authority.writer_for_command()?;
    let finished = finish_interrupted(&layout)?;
    if !layout.dir().exists() {
        return match finished {
            Some(path) => Ok(LeaveResult {
                role: None,
                ca_fingerprint: None,
                trust: Vec::new(),
                removed: vec![path],
                record: None,
                audit: "finished deleting the state of a leave that was interrupted (its trust \
                        stores and certificates had already been cleaned)"
                    .into(),
                next: Vec::new(),
            }),
            None => Err(error::fail(
                format!(
                    "This machine is not in a mesh ({} does not exist), so there is nothing to leave.",
                    layout.dir().display()
                ),
                "`koi certmesh trust status` lists any koi root still installed; `koi certmesh trust remove --fingerprint FP` removes one.",
            )),
        };
    }
    let mesh = identify(&layout)?;
    confirm(&ctx, &layout, &mesh, p.yes).await?;

    // 1. Trust stores: stop here, with everything else intact, if one cannot be changed.
    let report = trust::remove_root(
        &ctx,
        &layout,
        RemovalTarget {
            name: anchor_name(&mesh.fingerprint),
            fingerprint: Some(mesh.fingerprint.clone()),
        },
        Some("koi certmesh leave --yes".into()),
    )
    .await?;
    if !report.ok() {
        return Err(trust::store_failure(
            &report,
            "Leaving stopped before anything else was removed, because the mesh root could not be taken out of every trust store",
            "koi certmesh leave",
        ));
    }

    // 2–4 touch the disk and may sign (a last audit entry): off the protocol workers.
    let (audit, record, removed) = {
        let layout = layout.clone();
        let mesh = mesh.clone();
        ctx.blocking("leave", move || {
            // 2. Audit (a CA unlocked in this process signs a last entry), then keep the record.
            let audit = audit(&authority, &layout, &mesh)?;
            let record = keep_record(&layout, &mesh, &audit)?;

            // 3. This machine's certificate folders of the mesh.
            let mut removed = Vec::new();
            for dir in cert_dirs(&layout, &mesh) {
                remove_cert_dir(&dir)?;
                removed.push(dir.display().to_string());
            }

            // 4. The mesh state: rename (atomic), then delete. The CA key leaves memory too.
            authority.forget_session();
            // A standby's copy of the CA key too (crate::standby_state).
            app.standby.forget();
            let leaving = leaving_dir(&layout);
            std::fs::rename(layout.dir(), &leaving).map_err(|e| {
                error::fail(
                    format!(
                        "Failed to move {} to {}: {e}.",
                        layout.dir().display(),
                        leaving.display()
                    ),
                    "Check that KOI_HOME is writable by this user, then run `koi certmesh leave` again.",
                )
            })?;
            removed.extend(finish_interrupted(&layout)?);
            Ok((audit, record, removed))
        })
        .await?
    };
    let mut next = Vec::new();
    if mesh.is_ca() && ctx.mode() == RunMode::Daemon {
        next.push(
            "The daemon's certmesh API keeps its port and mDNS advertisement (answering \"not a \
             CA\") until koi daemon restarts; restart the daemon before `koi certmesh create` \
             makes this machine a CA again."
                .to_owned(),
        );
    }
    next.push("To join a mesh: `koi certmesh join`; to start one: `koi certmesh create`.".into());
    Ok(LeaveResult {
        role: Some(mesh.role),
        ca_fingerprint: Some(mesh.fingerprint),
        trust: report.stores,
        removed,
        record: Some(record.display().to_string()),
        audit,
        next,
    })
}

/// Deletes `certmesh.leaving/` if a leave left it behind; returns its path when it did.
fn finish_interrupted(layout: &Layout) -> Result<Option<String>, MethodError> {
    let leaving = leaving_dir(layout);
    match std::fs::remove_dir_all(&leaving) {
        Ok(()) => Ok(Some(leaving.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error::fail(
            format!("Failed to delete {}: {e}.", leaving.display()),
            "Check that KOI_HOME is writable by this user, then run `koi certmesh leave` again.",
        )),
    }
}

/// Which mesh `certmesh/` holds: from `membership.json`, else (a CA) from `ca/ca.pem`.
fn identify(layout: &Layout) -> Result<Mesh, MethodError> {
    if let Ok(Some(m)) = Membership::load(layout) {
        return Ok(Mesh {
            fingerprint: m.ca_fingerprint,
            role: m.role,
            hostname: m.hostname,
            ca_endpoint: m.ca_endpoint,
        });
    }
    let ca = layout.ca_dir().join("ca.pem");
    let fingerprint = std::fs::read_to_string(&ca)
        .ok()
        .and_then(|pem| truststore::fingerprint(&pem).ok())
        .ok_or_else(|| {
            error::fail(
                format!(
                    "{} holds neither a readable membership.json nor {}, so koi cannot tell which mesh root to remove.",
                    layout.dir().display(),
                    ca.display()
                ),
                "`koi certmesh trust status` lists the koi roots installed; remove this mesh's with `koi certmesh trust remove --fingerprint FP`.",
            )
        })?;
    Ok(Mesh {
        fingerprint,
        role: if layout.is_ca() { "primary" } else { "member" }.into(),
        hostname: crate::layout::hostname()?,
        ca_endpoint: None,
    })
}

/// Asks before anything is changed: a yes/no for a member, the typed host name for the CA.
async fn confirm(
    ctx: &Context,
    layout: &Layout,
    mesh: &Mesh,
    yes: bool,
) -> Result<(), MethodError> {
    if yes {
        return Ok(());
    }
    if !ctx.interactive() {
        return Err(ctx.no_terminal(
            "`koi certmesh leave` asks for confirmation",
            "Run `koi certmesh leave --yes` to leave without being asked.",
        ));
    }
    let certs = layout.certs(&mesh.hostname);
    if mesh.is_ca() {
        let typed = ctx
            .prompt(
                &format!(
                    "This machine is the mesh's CA. Leaving DESTROYS THE CA: its key, roster and \
                     enrollment secret are deleted for good, nothing can sign for this mesh again, \
                     and every member will have to join a new mesh.\nIt also removes the root \
                     {} from this machine's trust stores and deletes {} (and device \
                     certificates issued under {}).\nType this machine's host name ({}) to \
                     destroy the CA",
                    mesh.fingerprint,
                    certs.display(),
                    layout.home().join("certs").display(),
                    mesh.hostname
                ),
                None,
            )
            .await?;
        if typed.trim() != mesh.hostname {
            return Err(error::fail(
                "The host name typed does not match; nothing was changed.",
                "Run `koi certmesh leave` again and type the host name shown.",
            ));
        }
        return Ok(());
    }
    let ca = mesh.ca_endpoint.as_deref().unwrap_or("its CA");
    let ok = ctx
        .confirm(
            &format!(
                "Leave the mesh of {ca}? This removes its root {} from this machine's trust \
                 stores and deletes the membership and {}. Joining again needs a new code.",
                mesh.fingerprint,
                certs.display()
            ),
            false,
        )
        .await?;
    if ok {
        Ok(())
    } else {
        Err(error::fail(
            "You did not confirm; nothing was changed.",
            "Run `koi certmesh leave` again and answer yes to leave.",
        ))
    }
}

/// Signs a `mesh_left` entry when this process holds the CA unlocked; says what was recorded.
fn audit(authority: &Authority, layout: &Layout, mesh: &Mesh) -> Result<String, MethodError> {
    if !mesh.is_ca() {
        return Ok(
            "members keep no audit log and cannot reach a CA they are leaving; \
                   left.json records the leave"
                .into(),
        );
    }
    if !authority.is_unlocked() {
        return Ok(
            "the CA was locked, so no signed entry could be added; the audit log is kept \
                   as it was, and left.json beside it records the leave"
                .into(),
        );
    }
    authority.with_session(|s| {
        s.audit(
            MESH_LEFT,
            &app::actor(None),
            json!({ "ca_fingerprint": mesh.fingerprint, "hostname": mesh.hostname }),
        )?;
        let mut roster = Roster::load(&layout.roster()).map_err(error::core)?;
        s.save_roster(layout, &mut roster)
    })?;
    Ok(format!(
        "a signed `{MESH_LEFT}` entry closes the audit log, which is kept"
    ))
}

/// Writes `certmesh-left/<anchor>/`: `left.json`, and copies of the membership and (CA) the
/// audit log, pending refusals, roster and root. Idempotent: a rerun rewrites the same files.
fn keep_record(layout: &Layout, mesh: &Mesh, audit: &str) -> Result<PathBuf, MethodError> {
    let dir = record_dir(layout, &mesh.fingerprint);
    let parent = dir.parent().unwrap_or(layout.home());
    ensure_private_dir(parent).map_err(error::core)?;
    ensure_private_dir(&dir).map_err(error::core)?;
    let sources = [
        layout.membership(),
        layout.audit(),
        layout.audit_pending(),
        layout.roster(),
        layout.ca_dir().join("ca.pem"),
    ];
    for source in sources {
        let bytes = match std::fs::read(&source) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(error::fail(
                    format!("Failed to read {} to keep it: {e}.", source.display()),
                    "Check the file's owner and permissions, then run `koi certmesh leave` again.",
                ));
            }
        };
        let name = source.file_name().unwrap_or_default();
        write_atomic(&dir.join(name), &bytes).map_err(error::core)?;
    }
    let record = LeftRecord {
        ca_fingerprint: mesh.fingerprint.clone(),
        role: mesh.role.clone(),
        hostname: mesh.hostname.clone(),
        ca_endpoint: mesh.ca_endpoint.clone(),
        left_at: OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        actor: app::actor(None),
        audit: audit.to_owned(),
    };
    let mut json = serde_json::to_vec_pretty(&record)
        .map_err(|e| MethodError::new(format!("Failed to encode the leave record: {e}")))?;
    json.push(b'\n');
    write_atomic(&dir.join("left.json"), &json).map_err(error::core)?;
    Ok(dir)
}

/// This machine's certificate folder, and every other folder under `certs/` whose `ca.pem` is
/// this mesh's root (device certificates the CA issued to the default `--out`).
fn cert_dirs(layout: &Layout, mesh: &Mesh) -> Vec<PathBuf> {
    let own = layout.certs(&mesh.hostname);
    let mut dirs = Vec::new();
    if own.exists() {
        dirs.push(own.clone());
    }
    let Ok(entries) = std::fs::read_dir(layout.home().join("certs")) else {
        return dirs;
    };
    let mut others: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| *p != own && p.is_dir())
        .filter(|p| {
            std::fs::read_to_string(p.join("ca.pem"))
                .ok()
                .and_then(|pem| truststore::fingerprint(&pem).ok())
                .is_some_and(|fp| fp == mesh.fingerprint)
        })
        .collect();
    others.sort();
    dirs.extend(others);
    dirs
}

/// Deletes a certificate folder with `ca.pem` last, so a folder a crash leaves half-deleted is
/// still recognised as this mesh's by the next run.
fn remove_cert_dir(dir: &Path) -> Result<(), MethodError> {
    let fail = |path: &Path, e: std::io::Error| {
        error::fail(
            format!("Failed to delete {}: {e}.", path.display()),
            "Check the folder's owner and permissions, then run `koi certmesh leave` again.",
        )
    };
    let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, e))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "ca.pem") {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| fail(&path, e))?;
    }
    match std::fs::remove_file(dir.join("ca.pem")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&dir.join("ca.pem"), e)),
    }
    std::fs::remove_dir(dir).map_err(|e| fail(dir, e))
}
