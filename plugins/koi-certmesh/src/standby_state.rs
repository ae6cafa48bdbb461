//! The standby CA's own state on the machine that was promoted (issue 11 item 6): where it
//! lives, the record `status` shows, and the CA key while it is unlocked in this process.
//!
//! ```text
//! $KOI_HOME/certmesh/standby/          0700  built in standby.staging/, renamed into place
//!     ca/ca.pem, ca/vault.sealed             the mesh root and the CA key + TOTP secret, sealed
//!                                            under the standby's OWN passphrase (Argon2id)
//!     roster-manifest.json                   the last roster manifest the CA signed and this
//!                                            standby verified (never rolled back)
//!     audit.log                              the primary's audit log, as transferred then
//!                                            appended by each sync (every entry verified)
//!     standby.json                           this record ([`StandbyState`])
//! ```
//!
//! The machine stays a member (`membership.json` says `member`: it renews and heartbeats as
//! before); `standby.json` is what makes it a standby. The record carries the role, the term and
//! the primary's endpoint, which a later failover (item 7) builds on.

use std::path::PathBuf;
use std::sync::Mutex;

use koi_certmesh_core::UnlockedCa;
use koi_sdk::store::JsonFile;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// Format version of `standby.json`.
pub const STATE_VERSION: u32 = 1;

/// `certmesh/standby`.
pub fn dir(layout: &Layout) -> PathBuf {
    layout.dir().join("standby")
}

/// Where a promotion builds the standby directory before renaming it into place.
pub fn staging_dir(layout: &Layout) -> PathBuf {
    layout.dir().join("standby.staging")
}

/// `certmesh/standby/ca` (a [`koi_certmesh_core::CaStore`]).
pub fn ca_dir(layout: &Layout) -> PathBuf {
    dir(layout).join("ca")
}

/// `certmesh/standby/roster-manifest.json`.
pub fn manifest_path(layout: &Layout) -> PathBuf {
    dir(layout).join("roster-manifest.json")
}

/// `certmesh/standby/audit.log`.
pub fn audit_path(layout: &Layout) -> PathBuf {
    dir(layout).join("audit.log")
}

/// The standby's record (`certmesh/standby/standby.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandbyState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Always `standby` (a failover would record `primary` here).
    pub role: String,
    /// The primary's term when this machine was promoted.
    pub term: u64,
    /// The primary's host name.
    pub primary: String,
    /// The primary's API (`HOST:PORT`), where the roster is synced from.
    pub primary_endpoint: String,
    /// The mesh root's fingerprint.
    pub ca_fingerprint: String,
    /// When the promotion was sealed here (RFC 3339).
    pub promoted_at: String,
    /// The roster version of the last verified manifest (only grows).
    pub roster_version: u64,
    /// When a sync last ended (RFC 3339), ok or not.
    #[serde(default)]
    pub last_sync_at: Option<String>,
    /// When a sync last succeeded (RFC 3339).
    #[serde(default)]
    pub last_sync_ok_at: Option<String>,
    /// Why the last sync failed (absent when it succeeded).
    #[serde(default)]
    pub last_sync_error: Option<String>,
    /// Manifests refused because their version was lower than the one held (rollbacks).
    #[serde(default)]
    pub rollbacks_rejected: u64,
    /// Entries of the audit log copy (verified at promotion and at each sync).
    pub audit_entries: u64,
    /// Why the last audit log sync failed (absent when it succeeded).
    #[serde(default)]
    pub last_audit_sync_error: Option<String>,
}

fn store(layout: &Layout) -> JsonFile<StandbyState> {
    JsonFile::new(dir(layout).join("standby.json"))
}

/// Saves the record into `dir` (a promotion's staging directory).
pub fn save_in(dir: &std::path::Path, state: &StandbyState) -> Result<(), String> {
    JsonFile::new(dir.join("standby.json"))
        .save(state)
        .map_err(|e| format!("could not save the standby record: {e}"))
}

/// The record, if this machine is a standby. A promotion killed between moving the previous
/// standby directory aside and renaming the new one into place left only `standby.old/`: it is
/// put back first.
pub fn load(layout: &Layout) -> Option<StandbyState> {
    let old = layout.dir().join("standby.old");
    if !dir(layout).exists() && old.exists() && std::fs::rename(&old, dir(layout)).is_ok() {
        tracing::warn!(
            "certmesh standby: restored the standby directory an interrupted promotion had moved aside"
        );
    }
    store(layout).load().ok().flatten()
}

/// Saves the record (atomically).
pub fn save(layout: &Layout, state: &StandbyState) -> Result<(), String> {
    store(layout)
        .save(state)
        .map_err(|e| format!("could not save the standby record: {e}"))
}

/// The standby's CA key while unlocked in this (daemon) process; `None` while locked.
#[derive(Default)]
pub struct Held(Mutex<Option<UnlockedCa>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held(unlocked: {})", self.is_unlocked())
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnlockedCa>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the opened vault.
    pub fn install(&self, unlocked: UnlockedCa) {
        *self.lock() = Some(unlocked);
    }

    /// Whether the standby's key is open here.
    pub fn is_unlocked(&self) -> bool {
        self.lock().is_some()
    }

    /// The fingerprint of the held CA, if unlocked.
    pub fn fingerprint(&self) -> Option<String> {
        self.lock().as_ref().map(|u| u.ca().fingerprint())
    }

    /// Drops the key (zeroized), e.g. when the machine leaves the mesh.
    pub fn forget(&self) {
        *self.lock() = None;
    }
}

/// Adds the standby CA's part of `status` to `details` (role, term, standbys or the standby's
/// record) and returns the summary with it, led by the role and the term (`primary, term N`,
/// `standby CA (term N, LOCKED …`, `member, term N` once a heartbeat read it). `roster` is the
/// primary's roster on the CA.
pub fn status(
    layout: &Layout,
    held: &Held,
    roster: Option<&koi_certmesh_core::Roster>,
    details: &mut serde_json::Map<String, serde_json::Value>,
    summary: String,
) -> String {
    use serde_json::{Value, json};
    if let Some(roster) = roster {
        details.insert("term".into(), Value::from(roster.mesh.term));
        details.insert("standbys".into(), json!(roster.mesh.standbys));
        // The role and term lead, so `koi status` (one line per plugin) shows them.
        let standbys = if roster.mesh.standbys.is_empty() {
            String::new()
        } else {
            format!(", standby CA(s): {}", roster.mesh.standbys.join(", "))
        };
        return format!("primary, term {}{standbys}: {summary}", roster.mesh.term);
    }
    let Some(state) = load(layout) else {
        let hb = crate::heartbeat::last(layout);
        if let Some(hb) = &hb {
            // The standbys of the roster the CA last served (who may claim a higher term).
            details.insert("standbys".into(), json!(hb.standbys));
        }
        return match hb.and_then(|hb| hb.term) {
            Some(term) => {
                details.insert("term".into(), Value::from(term));
                format!("member, term {term}: {summary}")
            }
            None => format!("member: {summary}"),
        };
    };
    let locked = !held.is_unlocked();
    details.insert("role".into(), Value::from(state.role.clone()));
    details.insert("term".into(), Value::from(state.term));
    let mut record = serde_json::to_value(&state).unwrap_or_default();
    if let Value::Object(m) = &mut record {
        m.insert("locked".into(), Value::from(locked));
    }
    details.insert("standby".into(), record);
    let sync = match (&state.last_sync_error, &state.last_sync_ok_at) {
        (Some(e), _) => format!("LAST SYNC FAILED: {e}"),
        (None, Some(at)) => format!("roster synced at {at}"),
        (None, None) => "roster not synced since promotion".to_owned(),
    };
    format!(
        "standby CA (term {}, {}, roster version {}, {sync}) for primary {}; {summary}",
        state.term,
        if locked {
            "LOCKED — `koi certmesh unlock` opens it"
        } else {
            "unlocked"
        },
        state.roster_version,
        state.primary
    )
}
