//! Takeover (issue 11 item 7, second step of failover): a standby whose primary has been
//! unreachable by BOTH signals of [`crate::presence`] (mDNS presence and the heartbeat) for the
//! grace period, and which wins the tiebreak (the lowest host name among the live standbys it
//! sees over mDNS, itself included), becomes the primary:
//!
//! 1. under the writer lock, the standby's sealed vault (`standby/ca/`) becomes `certmesh/ca/`
//!    (still sealed under the standby's own passphrase), its verified audit log copy becomes
//!    `certmesh/audit.log`, and a `ca_failover` entry (old primary, old and new term, why) is
//!    queued in `audit-pending.jsonl`, signed into the log by the next unlock;
//! 2. `membership.json` says `primary`;
//! 3. `roster.json` — the roster of the last verified manifest with `mesh.term` bumped past every
//!    term seen, `mesh.primary` this machine and this machine out of `mesh.standbys` — is written
//!    LAST: its existence is what makes a machine a CA ([`Layout::is_ca`]), so a crash before it
//!    leaves a standby that takes over again from the start; the term only grows. Run again,
//!    the takeover queues its `ca_failover` entry only if the first run did not.
//!
//! The `api` service ([`crate::background`]) then sees a CA, serves the API and advertises
//! `role=primary` with the new term. The CA is LOCKED: it holds the role but every signing path
//! refuses with the locked message until `koi certmesh unlock` (with the standby's passphrase);
//! `status` says so.
//!
//! The grace period runs from the last POSITIVE evidence that the primary was alive (its
//! advertisement appearing or koi-mdns's re-check hearing its host, or a good beat:
//! [`crate::presence::Watch::unreachable_since`]), not from the moment its death is noticed, so
//! failover takes about the grace, not re-check + grace; the takeover still requires both
//! signals to have failed (mDNS says it left AND a beat sent after that failed). While mDNS says
//! the primary left, its API is probed every [`PROBE_EVERY`], so a return stops it.
//!
//! Grace: [`DEFAULT_GRACE`] (60 s); `KOI_CERTMESH_FAILOVER_GRACE_SECS` sets it in any build with
//! a floor of [`MIN_GRACE`] (10 s, below which a busy LAN's lost multicast looks like a death);
//! a debug build also honours `KOI_TEST_FAILOVER_GRACE_SECS` (at least 1 s, tests only).

use std::time::Duration;

use koi_certmesh_core::Roster;
use serde_json::json;

use crate::app::App;
use crate::files::Membership;
use crate::layout::Layout;
use crate::presence::parse_rfc3339;
use crate::standby_api::SignedManifest;
use crate::standby_state::{self, StandbyState};
use koi_sdk::{Context, MethodError};

/// The audit event of a takeover.
pub const FAILOVER: &str = "ca_failover";
/// Default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// Lowest grace `KOI_CERTMESH_FAILOVER_GRACE_SECS` accepts.
pub const MIN_GRACE: Duration = Duration::from_secs(10);
/// The grace period setting (any build).
pub const GRACE_ENV: &str = "KOI_CERTMESH_FAILOVER_GRACE_SECS";
/// The debug-only test knob (ignored by release builds).
pub const TEST_GRACE_ENV: &str = "KOI_TEST_FAILOVER_GRACE_SECS";
/// How often a standby probes its primary's API while mDNS says the primary left.
pub const PROBE_EVERY: Duration = Duration::from_secs(3);

/// The grace period in force.
pub fn grace() -> Duration {
    if cfg!(debug_assertions)
        && let Some(secs) = std::env::var(TEST_GRACE_ENV)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(secs.max(1));
    }
    match std::env::var(GRACE_ENV)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        Some(secs) => Duration::from_secs(secs).max(MIN_GRACE),
        None => DEFAULT_GRACE,
    }
}

/// Whether `me` wins the tiebreak among the live standbys `others` (lowest host name, compared
/// case-insensitively).
pub fn wins_tiebreak(me: &str, others: &[String]) -> bool {
    let me = me.to_ascii_lowercase();
    others
        .iter()
        .all(|o| o.to_ascii_lowercase() >= me || o.eq_ignore_ascii_case(&me))
}

/// Keeps in `mesh.standbys` only the hosts whose roster entry is active with role `standby` (a
/// machine promoted once, then joined again as a plain member, or whose entry is gone, is no
/// standby any more: it must not stay trusted to claim a term), without duplicates.
pub fn prune_standbys(roster: &mut Roster) {
    use koi_certmesh_core::roster::{MemberStatus, Role};
    let members = &roster.members;
    let mut kept: Vec<String> = Vec::new();
    for host in &roster.mesh.standbys {
        let is_standby = members.iter().any(|m| {
            &m.hostname == host && m.role == Role::Standby && m.status == MemberStatus::Active
        });
        if is_standby && !kept.contains(host) {
            kept.push(host.clone());
        }
    }
    roster.mesh.standbys = kept;
}

/// Makes this standby the primary with a term above `seen_term` (the highest term seen over
/// mDNS). Blocking; returns the new term.
pub fn take_over(layout: &Layout, seen_term: u64, why: &str) -> Result<u64, String> {
    let _writer = layout.lock_writer().map_err(|e| e.message().to_owned())?;
    if layout.is_ca() {
        return Err("this machine is already a CA".into());
    }
    let state = standby_state::load(layout).ok_or("this machine is not a standby CA")?;
    let membership = Membership::load(layout)
        .map_err(|e| e.message().to_owned())?
        .ok_or("no membership.json")?;
    let signed: SignedManifest = serde_json::from_slice(
        &std::fs::read(standby_state::manifest_path(layout))
            .map_err(|e| format!("cannot read the standby's roster manifest: {e}"))?,
    )
    .map_err(|e| format!("the standby's roster manifest does not parse: {e}"))?;
    let mut roster: Roster = serde_json::from_value(signed.manifest["roster"].clone())
        .map_err(|e| format!("the roster in the standby's manifest does not parse: {e}"))?;
    let old_term = roster.mesh.term.max(state.term);
    let term = old_term.max(seen_term).saturating_add(1);
    let old_primary = roster.mesh.primary.clone();

    // 1. The sealed vault and the audit log copy.
    let ca_dir = layout.ca_dir();
    koi_certmesh_core::atomic::ensure_private_dir(&ca_dir).map_err(|e| e.to_string())?;
    for name in ["ca.pem", "vault.sealed"] {
        let bytes = std::fs::read(standby_state::ca_dir(layout).join(name))
            .map_err(|e| format!("cannot read the standby's {name}: {e}"))?;
        koi_certmesh_core::atomic::write_atomic(&ca_dir.join(name), &bytes)
            .map_err(|e| e.to_string())?;
    }
    let log = std::fs::read(standby_state::audit_path(layout))
        .map_err(|e| format!("cannot read the standby's audit log copy: {e}"))?;
    koi_certmesh_core::atomic::write_atomic(&layout.audit(), &log).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(layout.dir().join("audit.log.checkpoint"));
    // A takeover killed before its roster was written runs again: its entry is queued once.
    if !failover_queued(layout, term) {
        crate::pending::append_pending_event(
            layout,
            FAILOVER,
            "system",
            json!({
                "new_primary": membership.hostname,
                "old_primary": old_primary,
                "old_term": old_term,
                "term": term,
                "reason": why,
            }),
        )
        .map_err(|e| e.message().to_owned())?;
    }

    // 2. This machine's record.
    let mut own = membership.clone();
    own.role = "primary".into();
    own.ca_endpoint = None;
    own.save_in(&layout.dir())
        .map_err(|e| e.message().to_owned())?;

    // 3. The roster, last.
    roster.mesh.term = term;
    roster.mesh.primary = membership.hostname.clone();
    roster.mesh.standbys.retain(|s| s != &membership.hostname);
    // The old primary comes back as a standby of this one (crate::demote), and syncs from here.
    if !old_primary.is_empty() && !roster.mesh.standbys.contains(&old_primary) {
        roster.mesh.standbys.push(old_primary.clone());
    }
    for m in &mut roster.members {
        if m.hostname == membership.hostname {
            m.role = koi_certmesh_core::roster::Role::Primary;
        } else if m.hostname == old_primary {
            m.role = koi_certmesh_core::roster::Role::Standby;
        }
    }
    prune_standbys(&mut roster);
    roster.save(&layout.roster()).map_err(|e| e.to_string())?;
    Ok(term)
}

/// Whether `audit-pending.jsonl` already queues the `ca_failover` entry of `term` (the file is
/// bounded by [`crate::refusals::PENDING_MAX_BYTES`]).
fn failover_queued(layout: &Layout, term: u64) -> bool {
    std::fs::read(layout.audit_pending())
        .ok()
        .is_some_and(|bytes| {
            bytes.split(|b| *b == b'\n').any(|line| {
                serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .is_some_and(|v| v["event"] == FAILOVER && v["details"]["term"] == term)
            })
        })
}

/// Takes over when the primary has been unreachable by both signals for the grace period and
/// this standby wins the tiebreak ([`crate::takeover`]).
pub async fn consider(
    ctx: &Context,
    app: &std::sync::Arc<App>,
    layout: &Layout,
    state: &StandbyState,
) {
    let Some(gone) = app.presence.gone_since() else {
        return;
    };
    // mDNS says the primary left: its API is probed every PROBE_EVERY from then on (not at the
    // next 5-minute beat), so the heartbeat's verdict is current and a return is seen at once.
    // The probe runs beside this loop (a dead host costs a 5 s connect deadline), one at a time.
    let now = crate::clock::now();
    // Beat times are whole seconds: a beat in the second of the removal counts as after it.
    let after_gone =
        |at: &str| parse_rfc3339(at).is_some_and(|at| at + Duration::from_secs(1) > gone);
    let hb = crate::heartbeat::last(layout);
    let probe_due = hb.as_ref().is_none_or(|h| {
        !after_gone(&h.at)
            || parse_rfc3339(&h.at)
                .is_none_or(|at| now.duration_since(at).unwrap_or_default() >= PROBE_EVERY)
    });
    if probe_due
        && !app
            .presence
            .probing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        let (ctx, app, layout) = (ctx.clone(), app.clone(), layout.clone());
        tokio::spawn(async move {
            let _ = crate::heartbeat::probe(&ctx, &layout).await;
            app.presence
                .probing
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }
    // Only a beat that failed AFTER mDNS said the primary left counts as the second signal.
    if hb.as_ref().is_none_or(|h| h.ok || !after_gone(&h.at)) {
        return;
    }
    let Some(since) = app.presence.unreachable_since(hb.as_ref()) else {
        return;
    };
    let grace = crate::takeover::grace();
    if crate::clock::now()
        .duration_since(since)
        .unwrap_or_default()
        < grace
    {
        return;
    }
    let Some(me) = Membership::load(layout).ok().flatten().map(|m| m.hostname) else {
        return;
    };
    let others = app.presence.live_standbys();
    if !crate::takeover::wins_tiebreak(&me, &others) {
        tracing::info!(
            ?others,
            "certmesh failover: the primary is unreachable; a standby with a lower host name takes over"
        );
        return;
    }
    // The term held from the primary's signed manifests (an advertised term is anyone's to
    // send, so it does not raise this one).
    let seen = state.term;
    let watch = app.presence.details(hb.as_ref());
    let why = format!(
        "primary {} unreachable since {} (mDNS: {}; heartbeat: {}) for the grace period ({} s)",
        state.primary,
        crate::schedule::rfc3339(since),
        watch["mdns_reason"].as_str().unwrap_or("absent"),
        hb.as_ref()
            .and_then(|h| h.reason.clone())
            .unwrap_or_else(|| "failed".into()),
        grace.as_secs()
    );
    let l = layout.clone();
    let outcome = ctx
        .blocking("failover", move || {
            crate::takeover::take_over(&l, seen, &why).map_err(MethodError::new)
        })
        .await;
    match outcome {
        Ok(term) => {
            // Demoted earlier by a lower term in this same process: that fence is over.
            app.authority().lift_fence_below(term);
            tracing::warn!(
                term,
                "certmesh failover: this standby is now the PRIMARY (term {term}), LOCKED until `koi certmesh unlock`"
            );
            app.mesh_created.notify_waiters();
        }
        Err(e) => tracing::warn!("certmesh failover: takeover failed: {}", e.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        host: &str,
        role: koi_certmesh_core::roster::Role,
    ) -> koi_certmesh_core::roster::Member {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        koi_certmesh_core::roster::Member {
            hostname: host.into(),
            dns_names: vec![format!("{host}.local")],
            ip_addresses: Vec::new(),
            serial: format!("{host}-serial"),
            fingerprint: "00".into(),
            issued_at: now,
            expires_at: now,
            role,
            status: koi_certmesh_core::roster::MemberStatus::Active,
            operator: None,
            reload_hook: None,
            proxy_entries: Vec::new(),
            revoked_at: None,
            previous_fingerprint: None,
            device: None,
            pending_names: Vec::new(),
        }
    }

    #[test]
    fn only_active_standby_entries_stay_listed_as_standbys_and_trusted_for_a_term() {
        use koi_certmesh_core::roster::Role;
        let scope = koi_certmesh_core::Scope::unrestricted();
        let mut roster = Roster::new(
            koi_certmesh_core::TrustProfile::Personal,
            "ff".into(),
            scope,
            "a".into(),
            None,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        roster.upsert(member("a", Role::Primary));
        roster.upsert(member("b", Role::Standby));
        // d was promoted once, then joined again as a plain member; gone never had an entry.
        roster.upsert(member("d", Role::Member));
        roster.mesh.standbys = vec!["b".into(), "d".into(), "gone".into(), "b".into()];
        prune_standbys(&mut roster);
        assert_eq!(roster.mesh.standbys, vec!["b".to_owned()]);
        assert_eq!(
            crate::follow::standbys_of_roster(&roster),
            vec!["b".to_owned()]
        );
    }

    #[test]
    fn lowest_live_standby_wins() {
        assert!(wins_tiebreak("b", &[]));
        assert!(wins_tiebreak("b", &["c".into(), "B".into()]));
        assert!(!wins_tiebreak("c", &["b".into()]));
        assert!(!wins_tiebreak("B", &["a".into()]));
    }
}
