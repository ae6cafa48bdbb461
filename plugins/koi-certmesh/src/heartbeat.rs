//! The member's heartbeat (daemon mode, `Plugin::service("heartbeat")`), its record for
//! `status`, and the [`HEARTBEAT`] event.
//!
//! Every [`INTERVAL`] (5 minutes; a debug build may shorten it with
//! `KOI_TEST_HEARTBEAT_SECS`, see [`crate::clock`]) a member connects to the CA recorded at join
//! over mutual TLS with its current certificate and key, checks the CA's chain and pinned root
//! fingerprint ([`crate::tls::CaPin`]), and reads the roster version from `GET
//! /v1/certmesh/roster` (which the CA answers only to a current member certificate of its mesh).
//! A beat that fails is tried once more after [`CONFIRM_DELAY`] before it counts as a failure, so
//! a renewal replacing the files mid-read, or a one-packet blip, is not reported.
//!
//! Each beat is recorded in `certmesh/heartbeat.json` (what `status` shows) and published as
//! [`HEARTBEAT`] — on every beat, not only on changes: health must be able to tell "still
//! failing" from "no news", and a subscriber that starts after the change (or missed an event)
//! learns the state at the next beat. One small event per member every 5 minutes costs nothing.
//!
//! The log is rate-limited: a warning when the heartbeat starts failing or its reason changes, a
//! reminder every [`REMINDER_EVERY`] failures in a row (hourly at the default interval), and one
//! info line when it recovers.

use std::time::{Duration, SystemTime};

use hyper::Method;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::{self, Answer, CaEndpoint};
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::tls::CaPin;
use crate::wire::RosterResponse;

/// The service's name (in `status` under `details.services`).
pub const SERVICE: &str = "heartbeat";
/// The event published after each beat.
pub const HEARTBEAT: &str = "certmesh.heartbeat";
/// Time between two beats (production).
pub const INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Wait before the second try of a failed beat.
pub const CONFIRM_DELAY: Duration = Duration::from_secs(2);
/// A reminder warning every this many failures in a row.
pub const REMINDER_EVERY: u32 = 12;

/// Payload of [`HEARTBEAT`], and the record `status` shows (`certmesh/heartbeat.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// Whether the CA answered over mutual TLS with the pinned root.
    pub ok: bool,
    /// Why it failed (absent when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// This machine's host name as certified.
    pub host: String,
    /// The CA address the member beats against (`HOST:PORT`).
    pub ca_endpoint: String,
    /// The roster version the CA reported (absent when the beat failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster_version: Option<u64>,
    /// The primary's term the CA reported (absent when the beat failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// When the beat ended (RFC 3339).
    pub at: String,
    /// Failed beats in a row (0 when `ok`).
    pub consecutive_failures: u32,
    /// When the last successful beat was (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_at: Option<String>,
    /// The standby CAs (host names, at most [`MAX_STANDBYS_KEPT`]) of the roster the CA last
    /// served this member over pinned mutual TLS; kept across failed beats. Only these may claim
    /// a higher term to this member ([`crate::follow`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<String>,
}

/// Bound on [`Heartbeat::standbys`].
pub const MAX_STANDBYS_KEPT: usize = 64;

/// The active standbys of a fetched roster (role `standby`), at most [`MAX_STANDBYS_KEPT`].
fn standbys_of(roster: &RosterResponse) -> Vec<String> {
    roster
        .members
        .iter()
        .filter(|m| m.role == "standby" && m.status == "active")
        .map(|m| m.hostname.clone())
        .filter(|h| !h.is_empty() && h.len() <= 253)
        .take(MAX_STANDBYS_KEPT)
        .collect()
}

fn store(layout: &Layout) -> JsonFile<Heartbeat> {
    JsonFile::new(layout.dir().join("heartbeat.json"))
}

/// The last recorded beat, if any.
pub fn last(layout: &Layout) -> Option<Heartbeat> {
    store(layout).load().ok().flatten()
}

/// One beat against `endpoint`: the roster version, or why it failed.
async fn beat_once(
    layout: &Layout,
    membership: &Membership,
    files: &CertFiles,
) -> Result<(u64, u64, Vec<String>), String> {
    let endpoint_text = membership.ca_endpoint.clone().ok_or_else(|| {
        "membership.json records no CA address; join the mesh again with \
         `koi certmesh join --ca ADDR`"
            .to_owned()
    })?;
    let endpoint = CaEndpoint::parse(&endpoint_text).map_err(|e| e.message().to_owned())?;
    let pin = CaPin::new(Some(membership.ca_fingerprint.clone()));
    let answer = client::request::<(), RosterResponse>(
        &endpoint,
        &pin,
        Some(files.tls_identity()?),
        Method::GET,
        "/v1/certmesh/roster",
        None,
    )
    .await
    .map_err(|e| e.message().to_owned())?;
    match answer {
        Answer::Ok(roster) if roster.mesh.ca_fingerprint == membership.ca_fingerprint => {
            // Kept for `certmesh/members` on this member (crate::members).
            crate::members::remember(layout, &roster);
            Ok((
                roster.mesh.roster_version,
                roster.mesh.term,
                standbys_of(&roster),
            ))
        }
        Answer::Ok(roster) => Err(format!(
            "the CA at {endpoint} reports mesh {}, not the pinned {}",
            roster.mesh.ca_fingerprint, membership.ca_fingerprint
        )),
        Answer::Refused { status, body } => Err(format!(
            "the CA at {endpoint} refused this member's certificate ({status} {}): {}",
            body.reason, body.error
        )),
    }
}

/// Beats (with one confirming retry), records the result, and returns it with the previous
/// record. `None` when this machine is not a member.
pub async fn beat(ctx: &Context, layout: &Layout) -> Option<(Heartbeat, Option<Heartbeat>)> {
    beat_with(ctx, layout, true).await
}

/// One beat now, without the confirming retry, recorded like any other: a standby's check of
/// its primary when mDNS says the primary left ([`crate::presence`]), so the failover does not
/// wait for the next scheduled beat.
pub async fn probe(ctx: &Context, layout: &Layout) -> Option<Heartbeat> {
    beat_with(ctx, layout, false).await.map(|(hb, _)| hb)
}

async fn beat_with(
    ctx: &Context,
    layout: &Layout,
    confirm: bool,
) -> Option<(Heartbeat, Option<Heartbeat>)> {
    let membership = Membership::load(layout).ok().flatten()?;
    if membership.role != "member" {
        return None;
    }
    let files = CertFiles::at(layout, &membership.hostname);
    let mut outcome = beat_once(layout, &membership, &files).await;
    if outcome.is_err() && confirm {
        tokio::select! {
            _ = ctx.cancelled() => return None,
            _ = tokio::time::sleep(CONFIRM_DELAY) => {}
        }
        outcome = beat_once(layout, &membership, &files).await;
    }
    let previous = last(layout);
    let now = crate::schedule::rfc3339(SystemTime::now());
    let mut hb = Heartbeat {
        ok: outcome.is_ok(),
        reason: outcome.as_ref().err().cloned(),
        host: membership.hostname.clone(),
        ca_endpoint: membership.ca_endpoint.clone().unwrap_or_default(),
        roster_version: outcome.as_ref().ok().map(|o| o.0),
        term: outcome.as_ref().ok().map(|o| o.1),
        at: now.clone(),
        consecutive_failures: 0,
        last_ok_at: previous.as_ref().and_then(|p| p.last_ok_at.clone()),
        standbys: match &outcome {
            Ok(o) => o.2.clone(),
            Err(_) => previous
                .as_ref()
                .map(|p| p.standbys.clone())
                .unwrap_or_default(),
        },
    };
    if hb.ok {
        hb.last_ok_at = Some(now);
    } else {
        hb.consecutive_failures = previous
            .as_ref()
            .map_or(0, |p| p.consecutive_failures)
            .saturating_add(1);
    }
    if let Err(e) = store(layout).save(&hb) {
        tracing::warn!("could not record the heartbeat: {e}");
    }
    Some((hb, previous))
}

/// The log line a beat deserves, given the one before: `(warning?, text)` or nothing.
pub fn log_line(hb: &Heartbeat, previous: Option<&Heartbeat>) -> Option<(bool, String)> {
    let was_ok = previous.is_none_or(|p| p.ok);
    let reason = hb.reason.as_deref().unwrap_or("?");
    if hb.ok {
        return (!was_ok).then(|| {
            (
                false,
                format!(
                    "certmesh heartbeat to the CA at {} recovered after {} failure(s); roster version {}",
                    hb.ca_endpoint,
                    previous.map_or(0, |p| p.consecutive_failures),
                    hb.roster_version.unwrap_or(0)
                ),
            )
        });
    }
    let changed = was_ok || previous.and_then(|p| p.reason.as_deref()) != Some(reason);
    let reminder = hb.consecutive_failures > 0 && hb.consecutive_failures % REMINDER_EVERY == 0;
    (changed || reminder).then(|| {
        (
            true,
            format!(
                "certmesh heartbeat to the CA at {} failed ({} in a row{}): {reason}",
                hb.ca_endpoint,
                hb.consecutive_failures,
                hb.last_ok_at
                    .as_deref()
                    .map(|t| format!(", last success {t}"))
                    .unwrap_or_default()
            ),
        )
    })
}

/// The heartbeat service: beats on members under `koi daemon`; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let layout = crate::app::App::of(&ctx)?.authority().layout().clone();
    let interval = crate::clock::heartbeat_interval(INTERVAL);
    loop {
        if let Some((hb, previous)) = beat(&ctx, &layout).await {
            match log_line(&hb, previous.as_ref()) {
                Some((true, text)) => tracing::warn!("{text}"),
                Some((false, text)) => tracing::info!("{text}"),
                None => {}
            }
            if let Err(e) = ctx.publish(HEARTBEAT, &hb).await {
                tracing::info!("could not publish {HEARTBEAT}: {}", e.message());
            }
        }
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The heartbeat part of a member's `status` (`null` before the first beat).
pub fn status_details(layout: &Layout) -> Value {
    last(layout).map_or(Value::Null, |hb| json!(hb))
}

/// The heartbeat part of the one-line status summary.
pub fn status_text(details: &Value) -> String {
    if details["ok"] == Value::Bool(false) {
        format!(
            "; HEARTBEAT FAILING ({} in a row, last at {}): {}",
            details["consecutive_failures"],
            details["at"].as_str().unwrap_or("?"),
            details["reason"].as_str().unwrap_or("?")
        )
    } else if let Some(at) = details["at"].as_str() {
        format!(
            "; heartbeat ok at {at} (roster version {})",
            details["roster_version"]
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(ok: bool, reason: Option<&str>, failures: u32) -> Heartbeat {
        Heartbeat {
            ok,
            reason: reason.map(str::to_owned),
            host: "b".into(),
            ca_endpoint: "10.0.0.1:5641".into(),
            roster_version: ok.then_some(7),
            term: ok.then_some(1),
            at: "2026-01-01T00:00:00Z".into(),
            consecutive_failures: failures,
            last_ok_at: None,
            standbys: Vec::new(),
        }
    }

    #[test]
    fn the_log_speaks_on_changes_and_reminds_periodically() {
        let ok = hb(true, None, 0);
        assert_eq!(log_line(&ok, None), None, "first success: silent");
        assert_eq!(log_line(&ok, Some(&ok)), None, "still ok: silent");
        let down = hb(false, Some("refused"), 1);
        assert!(
            log_line(&down, Some(&ok)).is_some_and(|(w, _)| w),
            "ok → failing warns"
        );
        let still = hb(false, Some("refused"), 2);
        assert_eq!(log_line(&still, Some(&down)), None, "same failure: silent");
        let other = hb(false, Some("pin"), 3);
        assert!(log_line(&other, Some(&still)).is_some(), "new reason warns");
        let reminder = hb(false, Some("pin"), REMINDER_EVERY);
        assert!(log_line(&reminder, Some(&other)).is_some(), "reminder");
        let back = hb(true, None, 0);
        assert!(
            log_line(&back, Some(&reminder)).is_some_and(|(w, _)| !w),
            "recovery: info"
        );
    }
}
