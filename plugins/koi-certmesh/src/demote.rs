//! Demotion (issue 11 item 7, fourth step of failover): a primary that sees, over mDNS, a
//! primary of its own mesh with a HIGHER term (a standby took over while this machine was gone
//! or cut off) stops signing at once and becomes a standby of the new primary.
//!
//! 1. [`crate::authority::Authority::fence`]: the key is dropped and every signing path (the
//!    API's join, renewal, push and names routes, `issue`, `rotate-secret`, the enrollment
//!    window, `unlock`) refuses with the "superseded" message from then on. This happens on the
//!    mDNS event itself, before any file is touched, so nothing is signed in between.
//! 2. Under the writer lock: the CA's files (`ca/`, `roster.json`, `audit.log` and its
//!    checkpoint, pending entries, TOTP state) move to `certmesh/demoted/`, kept whole — the
//!    entries this CA wrote while partitioned are there, verifiable under the shared root; a
//!    standby directory is built beside them (the same sealed vault, still under this machine's
//!    passphrase; an empty audit log copy and no manifest, which the first sync from the new
//!    primary fills), `standby.json` records the new term and primary; `membership.json` says
//!    `member` with the new primary's endpoint. `roster.json` moves LAST of the CA's files, so a
//!    crash leaves either a CA (which demotes again on the next sighting) or the standby. A
//!    demotion run again after a crash that had already moved `ca/` takes the vault from
//!    `demoted/ca` (and leaves it there): without that, the CA left behind could never demote.
//! 3. The `api` service stops serving and withdraws the primary advertisement
//!    ([`crate::background`]); the `presence` service advertises the standby.

use std::path::Path;

use crate::authority::Authority;
use crate::files::Membership;
use crate::standby_state::{self, StandbyState};

/// `certmesh/demoted`: the superseded CA's files.
pub fn demoted_dir(layout: &crate::layout::Layout) -> std::path::PathBuf {
    layout.dir().join("demoted")
}

/// Host name of a primary's instance name (`koi certmesh CA on HOST`), if well formed.
pub fn primary_host(instance: &str) -> Option<String> {
    crate::presence::instance_host(instance, crate::presence::PRIMARY_INSTANCE_PREFIX)
}

fn move_if_exists(from: &Path, to: &Path) -> Result<(), String> {
    if from.exists() {
        std::fs::rename(from, to)
            .map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Turns this (already fenced) CA into a standby of the primary at `endpoint` with `term`.
/// Blocking.
pub fn demote(
    authority: &Authority,
    term: u64,
    primary: &str,
    endpoint: &str,
) -> Result<(), String> {
    let _writer = authority
        .writer_for_command()
        .map_err(|e| e.message().to_owned())?;
    let layout = authority.layout();
    if !layout.is_ca() {
        return Ok(());
    }
    let membership = Membership::load(layout)
        .map_err(|e| e.message().to_owned())?
        .ok_or("no membership.json")?;
    let demoted = demoted_dir(layout);
    // The vault comes from `ca/`, or — when a demotion was killed after moving `ca/` aside but
    // before `roster.json` (so this machine still counts as a CA) — from `demoted/ca`.
    let vault_dir = if layout.ca_dir().exists() {
        layout.ca_dir()
    } else {
        demoted.join("ca")
    };
    // The standby directory, built in staging then renamed into place.
    let staging = standby_state::staging_dir(layout);
    let _ = std::fs::remove_dir_all(&staging);
    let ca = staging.join("ca");
    koi_certmesh_core::atomic::ensure_private_dir(&ca).map_err(|e| e.to_string())?;
    for name in ["ca.pem", "vault.sealed"] {
        let bytes = std::fs::read(vault_dir.join(name)).map_err(|e| {
            format!(
                "cannot read the CA's {name} in {}: {e}",
                vault_dir.display()
            )
        })?;
        koi_certmesh_core::atomic::write_atomic(&ca.join(name), &bytes)
            .map_err(|e| e.to_string())?;
    }
    koi_certmesh_core::atomic::write_atomic(&staging.join("audit.log"), b"")
        .map_err(|e| e.to_string())?;
    let state = StandbyState {
        version: standby_state::STATE_VERSION,
        role: "standby".into(),
        term,
        primary: primary.to_owned(),
        primary_endpoint: endpoint.to_owned(),
        ca_fingerprint: membership.ca_fingerprint.clone(),
        promoted_at: crate::schedule::rfc3339(crate::clock::now()),
        roster_version: 0,
        last_sync_at: None,
        last_sync_ok_at: None,
        last_sync_error: None,
        rollbacks_rejected: 0,
        audit_entries: 0,
        last_audit_sync_error: None,
    };
    standby_state::save_in(&staging, &state)?;
    let standby = standby_state::dir(layout);
    if standby.exists() {
        let _ = std::fs::remove_dir_all(&standby);
    }
    std::fs::rename(&staging, &standby).map_err(|e| format!("cannot install the standby: {e}"))?;
    // The CA's files, kept whole.
    koi_certmesh_core::atomic::ensure_private_dir(&demoted).map_err(|e| e.to_string())?;
    let dir = layout.dir();
    for name in [
        "audit.log",
        "audit.log.checkpoint",
        "audit-pending.jsonl",
        "audit-pending.signing",
        "totp-state.json",
    ] {
        move_if_exists(&dir.join(name), &demoted.join(name))?;
    }
    // An earlier demotion's `demoted/ca` makes way for this CA's; when `ca/` is already gone
    // (a resumed demotion), `demoted/ca` is the only copy of the vault and stays.
    if layout.ca_dir().exists() {
        let _ = std::fs::remove_dir_all(demoted.join("ca"));
        move_if_exists(&layout.ca_dir(), &demoted.join("ca"))?;
    }
    let mut own = membership;
    own.role = "member".into();
    own.ca_endpoint = Some(endpoint.to_owned());
    own.save_in(&dir).map_err(|e| e.message().to_owned())?;
    move_if_exists(&layout.roster(), &demoted.join("roster.json"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_host_is_read_from_a_well_formed_instance_only() {
        assert_eq!(
            primary_host("koi certmesh CA on fo-b").as_deref(),
            Some("fo-b")
        );
        assert_eq!(primary_host("koi certmesh CA on "), None);
        assert_eq!(primary_host("koi certmesh CA on b\u{1b}[2J"), None);
        assert_eq!(primary_host("printer"), None);
    }
}
