//! `koi certmesh status` (the plugin's `status` answer): mesh, profile, role, CA fingerprint,
//! locked state, this machine's certificate expiry, and on the CA the members and the API.

use koi_certmesh_core::Roster;
use koi_sdk::Context;
use koi_sdk::protocol::calls::{HealthState, StatusReport};
use koi_sdk::protocol::handshake::RunMode;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::app::App;
use crate::files::{CertFiles, Membership};
use crate::wire::{MeshInfo, RosterMember, ScopeView};

/// Days before expiry at which status turns `degraded`.
pub const EXPIRY_WARNING_DAYS: i64 = 10;

fn days_left(expires_at: &str) -> Option<i64> {
    let t =
        OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t - OffsetDateTime::now_utc()).whole_days())
}

fn failed(e: &koi_sdk::MethodError) -> StatusReport {
    StatusReport {
        state: HealthState::Failed,
        summary: e.message().to_owned(),
        details: Map::new(),
    }
}

/// The status report. It reads membership, certificate, roster and audit files, so it is built on
/// the blocking pool: the host's pings go on being answered however large the roster.
pub async fn report(ctx: Context) -> StatusReport {
    let app = match App::of(&ctx) {
        Ok(app) => app,
        Err(e) => return failed(&e),
    };
    let daemon = ctx.mode() == RunMode::Daemon;
    match ctx
        .blocking("status", move || Ok(build(&app, daemon)))
        .await
    {
        Ok(report) => report,
        Err(e) => failed(&e),
    }
}

fn build(app: &App, daemon: bool) -> StatusReport {
    let authority = app.authority();
    let layout = authority.layout();
    let mut details = Map::new();
    let membership = match Membership::load(layout) {
        Ok(m) => m,
        Err(e) => {
            return StatusReport {
                state: HealthState::Failed,
                summary: e.message().to_owned(),
                details,
            };
        }
    };
    let Some(membership) = membership else {
        return StatusReport {
            state: HealthState::Inactive,
            summary:
                "not in a mesh: `koi certmesh create` starts one, `koi certmesh join` joins one"
                    .into(),
            details,
        };
    };
    let files = CertFiles::at(layout, &membership.hostname);
    let expires_at = files.expiry();
    let days = expires_at.as_deref().and_then(days_left);
    details.insert("role".into(), Value::from(membership.role.clone()));
    details.insert("hostname".into(), Value::from(membership.hostname.clone()));
    details.insert(
        "ca_fingerprint".into(),
        Value::from(membership.ca_fingerprint.clone()),
    );
    details.insert("profile".into(), Value::from(membership.profile.clone()));
    details.insert("zone".into(), Value::from(membership.zone.clone()));
    details.insert(
        "certificate".into(),
        json!({"files": files, "expires_at": expires_at, "days_left": days}),
    );
    let mut state = match days {
        Some(d) if d > EXPIRY_WARNING_DAYS => HealthState::Ok,
        Some(d) if d >= 0 => HealthState::Degraded,
        _ => HealthState::Failed,
    };
    let cert_text = match days {
        Some(d) if d >= 0 => format!("certificate expires in {d} day(s)"),
        Some(_) => "certificate EXPIRED".into(),
        None => format!("certificate missing at {}", files.cert),
    };
    let short_fp: String = membership.ca_fingerprint.chars().take(16).collect();
    let mut unconstrained = false;
    let mut lockout_text = String::new();
    let mut devices_text = String::new();
    let summary = if layout.is_ca() {
        let locked = !authority.is_unlocked();
        match Roster::load(&layout.roster()) {
            Ok(roster) => {
                details.insert(
                    "mesh".into(),
                    serde_json::to_value(MeshInfo::of(&roster)).unwrap_or_default(),
                );
                details.insert(
                    "scope".into(),
                    serde_json::to_value(ScopeView::of(&roster.mesh.scope)).unwrap_or_default(),
                );
                unconstrained = roster.mesh.scope.dns_unconstrained();
                details.insert("unconstrained".into(), Value::from(unconstrained));
                let now = OffsetDateTime::now_utc();
                let now_unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
                let lockout = crate::totp_state::lockout_until(layout, now_unix);
                // Locked out, the window may be open but no code is looked at.
                details.insert(
                    "enrollment_open".into(),
                    Value::from(roster.mesh.enrollment.is_open(now) && lockout.is_none()),
                );
                if let Some(until) = lockout {
                    let ends = i64::try_from(until)
                        .ok()
                        .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
                        .map(crate::names::rfc3339)
                        .unwrap_or_default();
                    let seconds = until - now_unix;
                    details.insert(
                        "enrollment_locked_out".into(),
                        json!({
                            "until": ends,
                            "seconds_left": seconds,
                            "reason": format!("{} wrong codes in a row", koi_certmesh_core::totp::MAX_FAILURES),
                        }),
                    );
                    lockout_text = format!(
                        "; enrollment LOCKED OUT after {} wrong codes until {ends} ({seconds} s)",
                        koi_certmesh_core::totp::MAX_FAILURES
                    );
                }
                details.insert(
                    "members".into(),
                    serde_json::to_value(RosterMember::all(&roster)).unwrap_or_default(),
                );
                // Names other plugins requested, waiting for each machine's next renewal.
                details.insert(
                    "pending_names".into(),
                    crate::pending_names::pending_by_host(&roster),
                );
                // Device certificates expiring soon (crate::devices, issue 11 item 8).
                let soon = crate::devices::expiring(&roster, now);
                devices_text = crate::devices::status_text(&soon);
                details.insert(
                    "devices_expiring".into(),
                    serde_json::to_value(&soon).unwrap_or_default(),
                );
            }
            Err(e) => {
                state = HealthState::Failed;
                details.insert("roster_error".into(), Value::from(e.to_string()));
            }
        }
        details.insert("locked".into(), Value::from(locked));
        if daemon {
            details.insert(
                "api".into(),
                serde_json::to_value(app.api()).unwrap_or_default(),
            );
        }
        // The CA's own API certificate (crate::ca_renew).
        let (api_cert, api_cert_text) =
            crate::ca_renew::status_details(layout, &membership, locked);
        details.insert("api_certificate".into(), api_cert);
        // Renewals pushed to members (crate::push).
        let (push, push_text) = crate::push::status_details(layout);
        details.insert("push".into(), push);
        devices_text.push_str(&push_text);
        let pending = crate::pending::pending_count(layout);
        details.insert("audit_pending_unsigned".into(), Value::from(pending));
        let lock_text = if !daemon {
            "no daemon: start `koi daemon` and unlock to accept joins".to_owned()
        } else if locked {
            if state == HealthState::Ok {
                state = HealthState::Degraded;
            }
            "LOCKED — run `koi certmesh unlock` to resume signing".to_owned()
        } else {
            let api = app.api();
            match (api.listening, api.error) {
                (Some(addr), _) => format!("unlocked, answering joins on {addr}"),
                (None, Some(e)) => {
                    state = HealthState::Degraded;
                    format!("unlocked, but the API is down: {e}")
                }
                (None, None) => "unlocked".to_owned(),
            }
        };
        let scope_text = if unconstrained {
            "; UNCONSTRAINED root: a leaked CA key could sign for any name (no name constraints)"
        } else {
            ""
        };
        format!(
            "CA of mesh {short_fp}… ({}), {lock_text}{lockout_text}; {cert_text}{api_cert_text}{scope_text}{devices_text}",
            membership.profile
        )
    } else {
        details.insert(
            "ca_endpoint".into(),
            Value::from(membership.ca_endpoint.clone()),
        );
        let renewal = crate::schedule::status_details(layout, &membership);
        let renewal_text = crate::schedule::status_text(&renewal);
        details.insert("renewal".into(), renewal);
        // The heartbeat (crate::heartbeat): a failing one degrades the member.
        let heartbeat = crate::heartbeat::status_details(layout);
        let heartbeat_text = crate::heartbeat::status_text(&heartbeat);
        if heartbeat["ok"] == Value::Bool(false) && state == HealthState::Ok {
            state = HealthState::Degraded;
        }
        details.insert("heartbeat".into(), heartbeat);
        // The push endpoint and the pushes it took or refused (crate::push_accept).
        details.insert("push".into(), crate::push_accept::status_details(layout));
        format!(
            "member of mesh {short_fp}… ({}) via {}; {cert_text}{renewal_text}{heartbeat_text}",
            membership.profile,
            membership.ca_endpoint.as_deref().unwrap_or("?")
        )
    };
    // The standby CA (crate::standby_state): role, term, the standbys, the last sync.
    let roster = layout
        .is_ca()
        .then(|| Roster::load(&layout.roster()).ok())
        .flatten();
    let summary =
        crate::standby_state::status(layout, &app.standby, roster.as_ref(), &mut details, summary);
    if details.contains_key("standby") {
        let hb = crate::heartbeat::last(layout);
        details.insert("primary_watch".into(), app.presence.details(hb.as_ref()));
    }
    StatusReport {
        state,
        summary,
        details,
    }
}
