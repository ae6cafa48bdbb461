//! Roster sync on the standby CA (issue 11 item 6): the standby pulls the roster manifest the
//! primary's CA signs (`GET /v1/certmesh/standby/roster`, mutual TLS with its member
//! certificate, the primary's root pinned), verifies the signature with the root it holds
//! (`certmesh/standby/ca/ca.pem`, the mesh root), and keeps it only if its version is higher
//! than the one it holds. A lower version is a rollback — an old manifest replayed, or a
//! primary restored from an old backup — and is refused, logged as a warning and counted in
//! `status` (`rollbacks_rejected`); an equal one changes nothing.
//!
//! When. The daemon-mode service [`SERVICE`] syncs at start, every [`INTERVAL`] (a debug build
//! may shorten it with `KOI_TEST_STANDBY_SYNC_SECS`, [`crate::clock`]), and as soon as the
//! member's heartbeat reports a roster version higher than the one held (the heartbeat fetches
//! the primary's roster version on every beat): a change on the primary reaches the standby
//! within one heartbeat.
//!
//! Each sync then brings the standby's copy of the audit log level with the primary's
//! ([`crate::standby_audit`]: append-only, every entry verified before it is kept).

use std::time::{Duration, SystemTime};

use hyper::Method;
use koi_certmesh_core::Roster;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};

use crate::client::{self, Answer, CaEndpoint};
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::standby_api::{MANIFEST_PATH, SignedManifest};
use crate::standby_state::{self, StandbyState};
use crate::tls::CaPin;

/// The service's name (in `status` under `details.daemon_services`).
pub const SERVICE: &str = "standby-sync";
/// Time between two periodic syncs (production).
pub const INTERVAL: Duration = Duration::from_secs(60);
/// How often the service looks at the heartbeat's roster version.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What a verified manifest means against the version held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Newer: keep it.
    Newer(u64),
    /// The version held: nothing to do.
    Same(u64),
    /// Older than the version held: refused.
    Rollback {
        /// The manifest's version.
        offered: u64,
        /// The version held.
        held: u64,
    },
}

/// Checks a signed manifest against the root `ca_pem` (fingerprint `fingerprint`) and the
/// version `held`: `Err` says why it cannot be trusted at all.
pub fn check(
    ca_pem: &str,
    fingerprint: &str,
    signed: &SignedManifest,
    held: u64,
) -> Result<Verdict, String> {
    if !koi_certmesh_core::standby::verify_manifest(ca_pem, &signed.manifest, &signed.sig) {
        return Err(
            "the roster manifest's signature does not verify against the mesh root this \
             standby holds"
                .into(),
        );
    }
    let body = &signed.manifest;
    if body["ca_fingerprint"].as_str() != Some(fingerprint) {
        return Err("the roster manifest is for another mesh".into());
    }
    let version = body["version"]
        .as_u64()
        .ok_or("the roster manifest has no version")?;
    let roster: Roster = serde_json::from_value(body["roster"].clone())
        .map_err(|e| format!("the roster in the manifest does not parse: {e}"))?;
    if roster.mesh.ca_fingerprint != fingerprint {
        return Err("the roster in the manifest is for another mesh".into());
    }
    Ok(match version.cmp(&held) {
        std::cmp::Ordering::Greater => Verdict::Newer(version),
        std::cmp::Ordering::Equal => Verdict::Same(version),
        std::cmp::Ordering::Less => Verdict::Rollback {
            offered: version,
            held,
        },
    })
}

async fn fetch(layout: &Layout, state: &StandbyState) -> Result<SignedManifest, String> {
    let membership = Membership::load(layout)
        .map_err(|e| e.message().to_owned())?
        .ok_or("this machine is no longer in a mesh")?;
    let files = CertFiles::at(layout, &membership.hostname);
    let endpoint =
        CaEndpoint::parse(&state.primary_endpoint).map_err(|e| e.message().to_owned())?;
    let pin = CaPin::new(Some(state.ca_fingerprint.clone()));
    let answer = client::request_up_to::<(), SignedManifest>(
        &endpoint,
        &pin,
        Some(files.tls_identity()?),
        Method::GET,
        MANIFEST_PATH,
        None,
        crate::transfer::MAX_TRANSFER_BYTES,
    )
    .await
    .map_err(|e| e.message().to_owned())?;
    match answer {
        Answer::Ok(signed) => Ok(signed),
        Answer::Refused { status, body } => Err(format!(
            "the primary at {endpoint} refused the roster sync ({status} {}): {}",
            body.reason, body.error
        )),
    }
}

/// One sync: fetch, verify, keep if newer; records the outcome in `standby.json`. `None` when
/// this machine is not a standby.
pub async fn sync_once(layout: &Layout) -> Option<Result<Verdict, String>> {
    let state = standby_state::load(layout)?;
    let outcome = match fetch(layout, &state).await {
        Ok(signed) => {
            let layout = layout.clone();
            let held = state.roster_version;
            let fingerprint = state.ca_fingerprint.clone();
            tokio::task::spawn_blocking(move || apply(&layout, &fingerprint, &signed, held))
                .await
                .unwrap_or_else(|e| Err(format!("the sync task failed: {e}")))
        }
        Err(e) => Err(e),
    };
    // The audit log, append-only and verified (crate::standby_audit).
    let audit = crate::standby_audit::sync(layout, &state).await;
    // Reload: a promotion may have replaced the record meanwhile.
    let mut state = standby_state::load(layout)?;
    match audit {
        Ok(entries) => {
            state.audit_entries = state.audit_entries.max(entries);
            state.last_audit_sync_error = None;
        }
        Err(e) => {
            if state.last_audit_sync_error.as_deref() != Some(e.as_str()) {
                tracing::warn!("certmesh standby: audit log sync refused or failed: {e}");
            }
            state.last_audit_sync_error = Some(e);
        }
    }
    let now = crate::schedule::rfc3339(SystemTime::now());
    state.last_sync_at = Some(now.clone());
    match &outcome {
        Ok(Verdict::Newer(v)) | Ok(Verdict::Same(v)) => {
            state.roster_version = state.roster_version.max(*v);
            state.last_sync_ok_at = Some(now);
            state.last_sync_error = None;
        }
        Ok(Verdict::Rollback { offered, held }) => {
            state.rollbacks_rejected = state.rollbacks_rejected.saturating_add(1);
            let text = format!(
                "refused a roster manifest of version {offered}, older than the version {held} \
                 this standby holds (a rollback: an old manifest replayed, or a primary restored \
                 from an old backup)"
            );
            tracing::warn!("certmesh standby: {text}");
            state.last_sync_error = Some(text);
        }
        Err(e) => state.last_sync_error = Some(e.clone()),
    }
    if let Err(e) = standby_state::save(layout, &state) {
        tracing::warn!("{e}");
    }
    Some(outcome)
}

fn apply(
    layout: &Layout,
    fingerprint: &str,
    signed: &SignedManifest,
    held: u64,
) -> Result<Verdict, String> {
    let ca_path = standby_state::ca_dir(layout).join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_path)
        .map_err(|e| format!("cannot read the standby's root {}: {e}", ca_path.display()))?;
    let verdict = check(&ca_pem, fingerprint, signed, held)?;
    if let Verdict::Newer(v) = verdict {
        let bytes = serde_json::to_vec_pretty(signed).map_err(|e| e.to_string())?;
        koi_certmesh_core::atomic::write_atomic(&standby_state::manifest_path(layout), &bytes)
            .map_err(|e| e.to_string())?;
        tracing::info!("certmesh standby: roster synced to version {v}");
    }
    Ok(verdict)
}

/// The sync service: on a standby under `koi daemon`, syncs periodically and when the
/// heartbeat reports a newer roster version; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let layout = crate::app::App::of(&ctx)?.authority().layout().clone();
    let interval = crate::clock::standby_sync_interval(INTERVAL);
    let mut next = tokio::time::Instant::now();
    let mut triggered_by: Option<u64> = None;
    loop {
        // A standby that took over (crate::takeover) is the CA now: nothing to sync from.
        if let Some(state) = standby_state::load(&layout).filter(|_| !layout.is_ca()) {
            let beat = crate::heartbeat::last(&layout).and_then(|hb| hb.roster_version);
            let newer_upstream =
                beat.filter(|v| *v > state.roster_version && Some(*v) != triggered_by);
            if tokio::time::Instant::now() >= next || newer_upstream.is_some() {
                triggered_by = newer_upstream.or(triggered_by);
                if let Some(Err(e)) = sync_once(&layout).await {
                    tracing::debug!("certmesh standby sync failed: {e}");
                }
                next = tokio::time::Instant::now() + interval;
            }
        }
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koi_certmesh_core::{
        CaOptions, CaStore, CertAuthority, KdfParams, Passphrase, Scope, TotpSecret, TrustProfile,
    };

    #[test]
    fn only_a_newer_manifest_signed_by_the_held_root_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let ca = CertAuthority::create(
                &CaOptions::new("koi test", Scope::unrestricted()),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
            CaStore::new(tmp.path().join(name))
                .create(
                    ca,
                    TotpSecret::generate(),
                    &Passphrase::new("a passphrase"),
                    KdfParams::INSECURE_FOR_TESTS,
                )
                .unwrap()
        };
        let ours = make("ours");
        let other = make("other");
        let fp = ours.ca().fingerprint();
        let roster = Roster::new(
            TrustProfile::Personal,
            fp.clone(),
            Scope::unrestricted(),
            "stone-a".into(),
            None,
            time::OffsetDateTime::now_utc(),
        );
        let signed = |by: &koi_certmesh_core::UnlockedCa, version: u64| {
            let body = serde_json::json!({
                "kind": koi_certmesh_core::standby::MANIFEST_KIND,
                "ca_fingerprint": fp,
                "primary": "stone-a",
                "term": 1,
                "version": version,
                "issued_at": "2026-01-01T00:00:00Z",
                "roster": serde_json::to_value(&roster).unwrap(),
            });
            let sig = koi_certmesh_core::standby::sign_manifest(by.ca(), &body).unwrap();
            SignedManifest {
                manifest: body,
                sig,
            }
        };
        let pem = ours.ca().cert_pem();
        assert_eq!(check(pem, &fp, &signed(&ours, 5), 4), Ok(Verdict::Newer(5)));
        assert_eq!(check(pem, &fp, &signed(&ours, 5), 5), Ok(Verdict::Same(5)));
        assert_eq!(
            check(pem, &fp, &signed(&ours, 3), 5),
            Ok(Verdict::Rollback {
                offered: 3,
                held: 5
            })
        );
        // Another CA's signature, or a version raised after signing: not trusted at all.
        assert!(check(pem, &fp, &signed(&other, 9), 5).is_err());
        let mut raised = signed(&ours, 3);
        raised.manifest["version"] = serde_json::json!(9);
        assert!(check(pem, &fp, &raised, 5).is_err());
        assert!(check(pem, "another", &signed(&ours, 9), 5).is_err());
    }
}
