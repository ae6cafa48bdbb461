//! Renewal pushed by the CA (issue 11 item 2): the CA's daemon service ([`service`],
//! `Plugin::service("push")`), the per-member push state, and what `status` shows about it.
//!
//! When: a member normally renews by itself at 2/3 of its certificate's lifetime, ±2 %
//! ([`crate::schedule`]). The CA pushes only after a grace on top of that, [`GRACE_DIVISOR`]:
//! a tenth of the lifetime (3 days for the 30-day default), so the member's own pull, and its
//! retries, normally win; [`push_at`] is 2/3 + 1/10 of the lifetime from `notBefore`, as the
//! roster records it (`issued_at`, `expires_at`). The CA looks at its roster with wall-clock
//! time at least every [`CHECK_INTERVAL`] (every 1/12 of a member's lifetime if shorter). An
//! entry past its push time and not yet expired is pushed ([`crate::push_send::push_one`]); a
//! failed push (member offline, refused) is retried with a backoff of [`retry_bounds`] — 1/60 of
//! the lifetime doubling to 1/12, within 1 s to 30 s and 15 min (30 s to 15 min for 30-day
//! certificates) — until the certificate expires; an expired certificate is no longer pushed (the
//! member must renew or join again, as seed 000 says). After an accepted push the next one to
//! the same member waits at least the largest backoff. At most [`PARALLEL`] pushes run at once.
//! Only active members are pushed to, never devices or the CA itself.
//!
//! Locked: a locked CA cannot sign, so it pushes nothing; `status` says how many members wait
//! for `koi certmesh unlock`.
//!
//! Audit: an accepted push is audited as [`CERT_PUSHED`], a refused one as [`PUSH_REFUSED`] with
//! the member's reason; an unreachable member is not audited (it would fill the log while a
//! machine is off) but shows in `status` with its last error, attempts and next attempt.
//!
//! The state (`certmesh/push-state.json`, bounded by the roster: one record per member entry) is
//! written on changes only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use koi_certmesh_core::{Member, MemberStatus, Role, Roster};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::authority::Authority;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::push_send::{Delivered, push_one};

/// The service's name (in `status` under `details.daemon_services`).
pub const SERVICE: &str = "push";
/// Audit event: a renewal the CA pushed was installed by the member.
pub const CERT_PUSHED: &str = "cert_pushed";
/// Audit event: a member refused a renewal the CA pushed.
pub const PUSH_REFUSED: &str = "push_refused";
/// Longest wait between two looks at the roster (shorter for short lifetimes: 1/12 of the
/// shortest one).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// The grace after the member's own renewal time: lifetime / this.
pub const GRACE_DIVISOR: i32 = 10;
/// Pushes running at once.
pub const PARALLEL: usize = 8;

/// When the CA pushes a renewal for a certificate valid from `issued_at` to `expires_at`.
pub fn push_at(issued_at: OffsetDateTime, expires_at: OffsetDateTime) -> OffsetDateTime {
    let life = expires_at - issued_at;
    issued_at + life * 2 / 3 + life / GRACE_DIVISOR
}

/// The first and the largest retry delay for a certificate of lifetime `life`.
pub fn retry_bounds(life: time::Duration) -> (Duration, Duration) {
    let life = Duration::try_from(life).unwrap_or(Duration::ZERO);
    let first = (life / 60).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let max = (life / 12).clamp(first, Duration::from_secs(15 * 60));
    (first, max)
}

/// What the CA knows about pushing to one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MemberPush {
    /// The serial the push renews (the entry's when it fell due).
    pub serial: String,
    /// `pending` (due, not yet tried or waiting for unlock), `failed` (last try did not reach
    /// the member), `refused` (the member refused), `pushed` (installed), `expired` (gave up).
    pub state: String,
    /// Attempts for this serial.
    pub attempts: u32,
    /// When the last attempt ended (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// Why the last attempt failed or was refused.
    pub last_error: Option<String>,
    /// When the next attempt is due (RFC 3339).
    pub next_attempt_at: Option<String>,
    /// The serial pushed and installed, once `pushed`.
    pub pushed_serial: Option<String>,
    /// The current retry delay (seconds).
    #[serde(default)]
    pub retry_secs: u64,
    /// A certificate signed for the last push that the member did not install (the roster
    /// records it; the member still holds `serial`).
    #[serde(default)]
    pub signed_serial: Option<String>,
    /// When the certificate the member holds (`serial`) expires, once a push was signed.
    #[serde(default)]
    pub held_expires_at: Option<String>,
    /// No push before this time (RFC 3339): after an accepted push, the largest backoff, so a
    /// certificate that is due at once (test lifetimes shorter than the back-dating of
    /// `notBefore`) is not pushed in a loop.
    #[serde(default)]
    pub hold_until: Option<String>,
}

/// The CA's push state (`certmesh/push-state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushState {
    /// Members due while the CA is locked (their pushes wait for unlock).
    pub waiting_for_unlock: usize,
    /// Per member host name.
    pub members: BTreeMap<String, MemberPush>,
}

fn store(layout: &Layout) -> JsonFile<PushState> {
    JsonFile::new(layout.dir().join("push-state.json"))
}

fn text(t: OffsetDateTime) -> String {
    crate::names::rfc3339(t)
}

fn parse(t: Option<&String>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t?, &time::format_description::well_known::Rfc3339).ok()
}

/// The push part of the CA's `status`, and its text for the summary.
pub fn status_details(layout: &Layout) -> (Value, String) {
    let state = store(layout).load_or_default().unwrap_or_default();
    let count = |s: &str| state.members.values().filter(|m| m.state == s).count();
    let (pending, failed, refused) = (count("pending"), count("failed"), count("refused"));
    let mut summary = String::new();
    if state.waiting_for_unlock > 0 {
        summary.push_str(&format!(
            "; {} member renewal push(es) wait for `koi certmesh unlock`",
            state.waiting_for_unlock
        ));
    }
    if pending + failed + refused > 0 {
        summary.push_str(&format!(
            "; pushes: {pending} pending, {failed} failed, {refused} refused"
        ));
    }
    (json!(state), summary)
}

/// Members and standbys (a standby is a member machine too; the renewal keeps its role).
pub(crate) fn pushable(m: &Member, own: &str) -> bool {
    matches!(m.role, Role::Member | Role::Standby)
        && m.status == MemberStatus::Active
        && m.device.is_none()
        && m.hostname != own
}

/// The push service: on the CA under `koi daemon`; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let authority = crate::app::App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    loop {
        let wait = if layout.is_ca() {
            sweep(&ctx, &authority).await
        } else {
            CHECK_INTERVAL
        };
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
        }
    }
}

/// One look at the roster: pushes what is due, records the state, returns how long to sleep.
async fn sweep(ctx: &Context, authority: &Arc<Authority>) -> Duration {
    let layout = authority.layout().clone();
    let (roster, own) = {
        let layout = layout.clone();
        match ctx
            .blocking("read the roster for pushes", move || {
                let roster = Roster::load(&layout.roster()).map_err(crate::error::core)?;
                let own = Membership::load(&layout)?;
                Ok((roster, own))
            })
            .await
        {
            Ok((roster, Some(own))) => (roster, own),
            Ok((_, None)) => return CHECK_INTERVAL,
            Err(e) => {
                tracing::debug!("push: {}", e.message());
                return CHECK_INTERVAL;
            }
        }
    };
    let before = {
        let layout = layout.clone();
        ctx.blocking("read the push state", move || {
            Ok(store(&layout).load_or_default().unwrap_or_default())
        })
        .await
        .unwrap_or_default()
    };
    let mut state = PushState::default();
    let now = OffsetDateTime::now_utc();
    // With the debug-only test lifetime, a member that joins between two looks is seen in time.
    let first_look = crate::clock::leaf_lifetime()
        .and_then(|l| Duration::try_from(l / 12).ok())
        .map_or(CHECK_INTERVAL, |l| {
            l.clamp(Duration::from_secs(1), CHECK_INTERVAL)
        });
    let mut next_wake = now + first_look;
    let mut due = Vec::new();
    for m in roster.members.iter().filter(|m| pushable(m, &own.hostname)) {
        // Short lifetimes are looked at more often: every 1/12 of the lifetime, 1 s at least.
        let look = Duration::try_from((m.expires_at - m.issued_at) / 12).unwrap_or(CHECK_INTERVAL);
        next_wake = next_wake.min(now + look.max(Duration::from_secs(1)));
        let mut rec = before.members.get(&m.hostname).cloned().unwrap_or_default();
        // A push signed but not installed: the roster records the new certificate, the member
        // still holds `rec.serial`, which stays due (it authenticates as previous_fingerprint).
        let unsent = (rec.state == "failed" || rec.state == "refused")
            && rec.signed_serial.as_deref() == Some(m.serial.as_str());
        let (at, expires) = if unsent {
            let held = parse(rec.held_expires_at.as_ref()).unwrap_or(m.expires_at);
            (now, held)
        } else {
            if rec.serial != m.serial {
                // A new certificate (renewed by pull, or by the push just made): start over.
                let pushed = rec.state == "pushed"
                    && rec.pushed_serial.as_deref() == Some(m.serial.as_str());
                let hold = pushed.then(|| text(now + retry_bounds(m.expires_at - m.issued_at).1));
                rec = MemberPush {
                    serial: m.serial.clone(),
                    state: if pushed {
                        "pushed".into()
                    } else {
                        String::new()
                    },
                    pushed_serial: rec.pushed_serial.filter(|_| pushed),
                    last_attempt_at: rec.last_attempt_at.filter(|_| pushed),
                    hold_until: hold,
                    ..MemberPush::default()
                };
            }
            (push_at(m.issued_at, m.expires_at), m.expires_at)
        };
        if now < at {
            next_wake = next_wake.min(at);
            if rec.state != "pushed" {
                rec.state = "scheduled".into();
            }
            rec.next_attempt_at = Some(text(at));
        } else if now > expires {
            rec.state = "expired".into();
            rec.next_attempt_at = None;
        } else {
            let next = parse(rec.next_attempt_at.as_ref())
                .filter(|_| rec.attempts > 0)
                .or_else(|| parse(rec.hold_until.as_ref()));
            if rec.state != "failed" && rec.state != "refused" {
                rec.state = "pending".into();
            }
            match next {
                Some(n) if now < n => next_wake = next_wake.min(n),
                _ => {
                    if authority.is_unlocked() {
                        due.push((m.hostname.clone(), m.ip_addresses.clone()));
                    } else {
                        state.waiting_for_unlock += 1;
                        next_wake = next_wake.min(now + Duration::from_secs(1));
                    }
                }
            }
        }
        state.members.insert(m.hostname.clone(), rec);
    }
    if !due.is_empty() {
        let files = CertFiles::at(&layout, &own.hostname);
        let results = push_all(ctx, authority, due, &files, &roster.mesh.ca_fingerprint).await;
        for (host, outcome, took) in results {
            let Some(rec) = state.members.get_mut(&host) else {
                continue;
            };
            let entry = roster.member(&host);
            let life = entry.map_or(time::Duration::days(30), |e| e.expires_at - e.issued_at);
            let (first, max) = retry_bounds(life);
            rec.attempts = rec.attempts.saturating_add(1);
            rec.last_attempt_at = Some(text(OffsetDateTime::now_utc()));
            let ok = apply(ctx, authority, &host, rec, outcome, took).await;
            if ok {
                rec.retry_secs = 0;
                rec.next_attempt_at = None;
            } else {
                let delay = if rec.retry_secs == 0 {
                    first
                } else {
                    (Duration::from_secs(rec.retry_secs) * 2).min(max)
                };
                rec.retry_secs = delay.as_secs().max(1);
                let n = OffsetDateTime::now_utc() + delay;
                rec.next_attempt_at = Some(text(n));
                next_wake = next_wake.min(n);
            }
        }
    }
    if state != before {
        // A durable write (fsync): off the async workers. Tried twice: a writer taking the
        // writer lock sweeps temporary files, ours included.
        let layout = layout.clone();
        let saved = ctx
            .blocking("record the push state", move || {
                let store = store(&layout);
                store
                    .save(&state)
                    .or_else(|_| store.save(&state))
                    .map_err(|e| MethodError::new(e.to_string()))
            })
            .await;
        if let Err(e) = saved {
            tracing::warn!("could not record the push state: {}", e.message());
        }
    }
    let wait = next_wake - OffsetDateTime::now_utc();
    Duration::try_from(wait)
        .unwrap_or(Duration::ZERO)
        .min(CHECK_INTERVAL)
}

type Outcome = Result<(Delivered, std::net::SocketAddr), crate::push_send::NotDelivered>;

/// Pushes to every due member, [`PARALLEL`] at a time.
async fn push_all(
    ctx: &Context,
    authority: &Arc<Authority>,
    due: Vec<(String, Vec<std::net::IpAddr>)>,
    files: &CertFiles,
    fingerprint: &str,
) -> Vec<(String, Outcome, Duration)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut set = JoinSet::new();
    for (host, addresses) in due {
        let (ctx, authority, files, fingerprint, limit) = (
            ctx.clone(),
            authority.clone(),
            files.clone(),
            fingerprint.to_owned(),
            limit.clone(),
        );
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let started = std::time::Instant::now();
            let outcome = push_one(&ctx, &authority, &host, &addresses, &files, &fingerprint).await;
            (host, outcome, started.elapsed())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(pair) = done {
            out.push(pair);
        }
    }
    out
}

/// Records one outcome in `rec`, audits it, logs it; returns whether the push was installed.
async fn apply(
    ctx: &Context,
    authority: &Arc<Authority>,
    host: &str,
    rec: &mut MemberPush,
    outcome: Outcome,
    took: Duration,
) -> bool {
    let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    let (event, details, ok) = match outcome {
        Err((e, signed)) => {
            tracing::info!(host, "renewal push not delivered: {e}");
            rec.state = "failed".into();
            rec.last_error = Some(crate::refusals::bounded(&e, 300));
            if let Some(signed) = signed {
                rec.signed_serial = Some(signed.serial);
                rec.held_expires_at = Some(signed.old_not_after);
            }
            return false;
        }
        Ok((Delivered::Accepted(signed, answer), addr)) => {
            tracing::info!(host, serial = %answer.serial, "renewal pushed and installed");
            rec.state = "pushed".into();
            rec.last_error = None;
            rec.pushed_serial = Some(signed.serial.clone());
            rec.signed_serial = None;
            rec.held_expires_at = None;
            (
                CERT_PUSHED,
                json!({
                    "hostname": host, "old_serial": signed.old_serial, "serial": signed.serial,
                    "expires_at": signed.not_after, "peer": addr.to_string(),
                    "duration_ms": duration_ms,
                }),
                true,
            )
        }
        Ok((Delivered::Refused(signed, status, body), addr)) => {
            let error = crate::refusals::bounded(&body.error, 300);
            tracing::warn!(host, status, reason = %body.reason, "the member refused the renewal push: {error}");
            rec.state = "refused".into();
            rec.last_error = Some(format!("{} ({status}): {error}", body.reason));
            rec.signed_serial = Some(signed.serial.clone());
            rec.held_expires_at = Some(signed.old_not_after.clone());
            (
                PUSH_REFUSED,
                json!({
                    "hostname": host, "old_serial": signed.old_serial, "serial": signed.serial,
                    "status": status, "reason": crate::refusals::bounded(&body.reason, 60),
                    "error": error, "peer": addr.to_string(), "duration_ms": duration_ms,
                }),
                false,
            )
        }
    };
    let (authority, host) = (authority.clone(), host.to_owned());
    let audited = ctx
        .blocking("audit a renewal push", move || {
            authority.with_session(|s| s.audit(event, &host, details))
        })
        .await;
    if let Err(e) = audited {
        tracing::warn!("could not audit {event}: {}", e.message());
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_comes_after_the_members_own_renewal_window_and_before_expiry() {
        let start = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let end = start + time::Duration::days(30);
        let at = push_at(start, end);
        // The member's latest own renewal time: 2/3 + 2 % jitter.
        assert!(at > start + time::Duration::days(20) + time::Duration::hours(15));
        assert!(at < end);
        assert_eq!(at, start + time::Duration::days(23));
        let (first, max) = retry_bounds(end - start);
        assert_eq!(
            (first, max),
            (Duration::from_secs(30), Duration::from_secs(900))
        );
        let (first, max) = retry_bounds(time::Duration::seconds(150));
        assert_eq!(first, Duration::from_millis(2500));
        assert_eq!(max, Duration::from_millis(12_500));
        let (first, max) = retry_bounds(time::Duration::seconds(-5));
        assert_eq!(
            (first, max),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
    }
}
