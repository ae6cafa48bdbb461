//! The CA renews its own API certificate (the leaf the API on port 5641 presents, in
//! `certs/<host>/`), the same way a member's renews, and the running API swaps it in
//! ([`crate::hot_cert`]) without a restart and without dropping connections.
//!
//! When: [`crate::schedule::due_at`] — 2/3 of the lifetime with the serial's jitter — compared
//! with the system's wall-clock time at least every [`CHECK_INTERVAL`] (so a CA waking from sleep
//! renews at its next look); a failure is retried after [`crate::schedule::RETRY_INITIAL`],
//! doubling to [`crate::schedule::RETRY_MAX`]. The debug-only clock offset
//! ([`crate::clock::OFFSET_ENV`]) does not move this schedule: the CA signs with the real time, so
//! under a moved clock every new certificate would already be due and it would renew without end
//! (short lifetimes for tests come from [`crate::clock::CA_LIFETIME_ENV`] instead).
//! How: a CSR for a fresh P-256 key, signed locally by the unlocked CA after the checks every
//! member certificate goes through ([`crate::certify`]); audited as
//! [`crate::renew_api::CERTIFICATE_RENEWED`] with `"api_certificate": true`; the roster entry
//! updated; the files installed with the journal of [`crate::renew_files`]; then the resolver
//! reloaded, the outcome recorded (`renewal.json`, shown by `status` under
//! `details.api_certificate`), `certmesh.cert.renewed` published and the reload hook run
//! ([`crate::renew::after_renewal`]).
//!
//! Locked: a CA that is locked when its certificate is due cannot sign. `status` says so
//! ([`status_details`]) and the loop looks again every [`LOCKED_POLL`], so the certificate renews
//! right after `koi certmesh unlock`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use koi_certmesh_core::{Member, Role, Roster};
use koi_sdk::{Context, MethodError};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::app::App;
use crate::authority::Authority;
use crate::error;
use crate::files::{CertFiles, Membership};
use crate::hot_cert::ApiCert;
use crate::layout::Layout;
use crate::renew::RenewResult;
use crate::schedule::{RETRY_INITIAL, RETRY_MAX, due_at, rfc3339};

/// Longest wait between two looks at the clock.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How often a due renewal looks again while the CA is locked.
pub const LOCKED_POLL: Duration = Duration::from_secs(1);
/// What `renewal.json` records as the trigger of the CA's own renewals.
pub const TRIGGER: &str = "api certificate schedule";

/// Renews the CA's API certificate when due and swaps it into `cert`, until `ctx` is cancelled.
pub async fn run(ctx: &Context, app: &Arc<App>, cert: Arc<ApiCert>) {
    let authority = app.authority();
    let layout = authority.layout().clone();
    let mut retry_at: Option<SystemTime> = None;
    let mut retry_delay = RETRY_INITIAL;
    loop {
        let now = SystemTime::now();
        let due = Membership::load(&layout)
            .ok()
            .flatten()
            .filter(|m| m.role != "member")
            .and_then(|m| due_at(&CertFiles::at(&layout, &m.hostname)));
        let blocked = retry_at.is_some_and(|r| now < r);
        let wait = match due {
            Some(d) if now >= d && !blocked => {
                if authority.is_unlocked() {
                    attempt(ctx, &authority, &cert, &mut retry_at, &mut retry_delay).await;
                    Duration::ZERO
                } else {
                    LOCKED_POLL
                }
            }
            _ => {
                let next = match (due, retry_at) {
                    (Some(d), Some(r)) => Some(d.max(r)),
                    (d, r) => d.or(r),
                };
                next.and_then(|n| n.duration_since(now).ok())
                    .unwrap_or(CHECK_INTERVAL)
                    .min(CHECK_INTERVAL)
            }
        };
        tokio::select! {
            _ = ctx.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
        }
    }
}

async fn attempt(
    ctx: &Context,
    authority: &Arc<Authority>,
    cert: &Arc<ApiCert>,
    retry_at: &mut Option<SystemTime>,
    retry_delay: &mut Duration,
) {
    let layout = authority.layout().clone();
    let outcome = {
        let (authority, cert) = (authority.clone(), cert.clone());
        ctx.blocking("renew the CA's API certificate", move || {
            let result = renew_blocking(&authority)?;
            cert.reload(result.files.fullchain.as_ref(), result.files.key.as_ref())
                .map_err(|e| {
                    error::fail(
                        format!(
                            "The CA's API certificate was renewed on disk, but the API could not \
                             load it: {e}."
                        ),
                        "Restart `koi daemon` to serve the files on disk.",
                    )
                })?;
            Ok(result)
        })
        .await
    };
    crate::schedule::record(&layout, TRIGGER, &outcome);
    match outcome {
        Ok(result) => {
            tracing::info!(
                old = %result.old_serial, new = %result.serial,
                "the CA's API certificate renewed and swapped in"
            );
            *retry_at = None;
            *retry_delay = RETRY_INITIAL;
            crate::renew::after_renewal(ctx, &layout, &result).await;
        }
        Err(e) => {
            tracing::warn!(
                retry_in_s = retry_delay.as_secs(),
                "the CA's API certificate did not renew: {}",
                e.message()
            );
            *retry_at = Some(SystemTime::now() + *retry_delay);
            *retry_delay = (*retry_delay * 2).min(RETRY_MAX);
        }
    }
}

fn ca_membership(layout: &Layout) -> Result<Membership, MethodError> {
    Membership::load(layout)?
        .filter(|m| m.role != "member")
        .ok_or_else(|| {
            error::fail(
                "This machine is not a certmesh CA, so it has no API certificate to renew.",
                "Run `koi certmesh status` to see its role.",
            )
        })
}

/// One renewal of the CA's API certificate, signed by the unlocked CA in this process.
/// Blocking (signs, writes).
pub fn renew_blocking(authority: &Authority) -> Result<RenewResult, MethodError> {
    let layout = authority.layout();
    let _writer = authority.writer_for_command()?;
    crate::renew_files::finish(layout, &ca_membership(layout)?.hostname)?;
    let membership = ca_membership(layout)?;
    let host = membership.hostname.clone();
    let files = CertFiles::at(layout, &host);
    let old_cert = std::fs::read_to_string(&files.cert).map_err(|e| {
        error::fail(
            format!("Cannot read the CA's API certificate {}: {e}.", files.cert),
            "Check the permissions of KOI_HOME; the renewal is retried by itself.",
        )
    })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| MethodError::new(format!("Failed to generate a new key: {e}")))?;
    let csr_pem = CertificateParams::new(vec![host.clone()])
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| MethodError::new(format!("Failed to build the certificate request: {e}")))?;
    let refused = |r: crate::error::Refusal| {
        error::fail(
            format!("The CA refused to renew its own API certificate: {r}"),
            "Fix what it names (`koi certmesh status` shows the scope); the renewal is retried \
             by itself.",
        )
    };
    let mut guard = authority.session();
    let session = guard
        .as_mut()
        .ok_or_else(|| MethodError::new(error::LOCKED_MESSAGE))?;
    let mut roster = Roster::load(&layout.roster()).map_err(error::core)?;
    let (mut leaf, mut dropped) = crate::certify::leaf(
        session.unlocked(),
        &roster,
        &host,
        &membership.dns_names,
        &crate::names::lan_addresses(),
        &csr_pem,
    )
    .map_err(refused)?;
    // Names other plugins asked for (crate::request_names), checked again now.
    let pending = crate::pending_names::apply_pending(
        session.unlocked().ca().scope(),
        &roster,
        &host,
        &mut leaf,
    );
    let issued = crate::certify::sign(
        session.unlocked(),
        &roster,
        leaf,
        &mut dropped,
        &host,
        &csr_pem,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(refused)?;
    let expires_at = crate::names::rfc3339(issued.not_after);
    session.audit(
        crate::renew_api::CERTIFICATE_RENEWED,
        &host,
        json!({
            "hostname": host,
            "api_certificate": true,
            "old_serial": membership.serial,
            "serial": issued.serial_hex,
            "fingerprint": issued.fingerprint,
            "dns_names": issued.dns_names,
            "ip_addresses": issued.ip_addresses,
            "expires_at": expires_at,
            "key_changed": true,
            "dropped_addresses": dropped,
            "pending_names_added": pending.added,
            "pending_names_dropped": pending.dropped,
        }),
    )?;
    let entry = roster.member(&host).cloned();
    let mut member = Member::from_issued(
        &host,
        &issued,
        entry.as_ref().map_or(Role::Primary, |e| e.role),
        entry.as_ref().and_then(|e| e.operator.clone()),
    );
    member.pending_names =
        crate::pending_names::still_pending(entry.as_ref(), &issued.dns_names, &pending);
    if let Some(e) = entry {
        member.reload_hook = e.reload_hook;
        member.proxy_entries = e.proxy_entries;
    }
    member.previous_fingerprint = crate::x509::fingerprint(&old_cert);
    roster.upsert(member);
    session.save_roster(layout, &mut roster)?;
    drop(guard);
    let mut updated = membership.clone();
    updated.serial.clone_from(&issued.serial_hex);
    updated.expires_at.clone_from(&expires_at);
    updated.dns_names.clone_from(&issued.dns_names);
    updated.ip_addresses = issued
        .ip_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    let key_pem = Zeroizing::new(key.serialize_pem());
    drop(key);
    crate::renew_files::install(layout, &updated, &issued.cert_pem, &key_pem, &issued.ca_pem)?;
    Ok(RenewResult {
        renewed: true,
        old_serial: membership.serial,
        serial: issued.serial_hex,
        old_not_after: membership.expires_at,
        not_after: expires_at,
        key_changed: true,
        names: updated
            .dns_names
            .iter()
            .chain(&updated.ip_addresses)
            .cloned()
            .collect(),
        next_renewal_at: due_at(&files).map(rfc3339),
        hook: None,
        files,
    })
}

/// The CA's `status` part about its API certificate (`details.api_certificate`) and the text for
/// the one-line summary: the renewal fields members show, and `waiting_for_unlock` when it is due
/// while the CA is locked.
pub fn status_details(layout: &Layout, membership: &Membership, locked: bool) -> (Value, String) {
    let mut details = crate::schedule::status_details(layout, membership);
    // Due by the system clock, as `run` decides (not the test offset).
    let due_now = due_at(&CertFiles::at(layout, &membership.hostname))
        .is_some_and(|d| SystemTime::now() >= d);
    details["due_now"] = Value::Bool(due_now);
    let waiting = locked && due_now;
    details["waiting_for_unlock"] = Value::Bool(waiting);
    let mut text = crate::schedule::status_text(&details)
        .replace("; renews at", "; API certificate renews at");
    if waiting {
        text.push_str(
            "; API CERTIFICATE RENEWAL DUE: it renews as soon as `koi certmesh unlock` opens the CA",
        );
    }
    (details, text)
}
