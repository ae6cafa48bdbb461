//! The member's renewal service (daemon mode, `Plugin::service("renewal")`) and the renewal
//! record `status` shows.
//!
//! When: at 2/3 of the certificate's lifetime (`notBefore` to `notAfter`, read from `cert.pem`),
//! moved by a jitter of ±2 % of the lifetime, at most ±2 h ([`MAX_JITTER`]), so members enrolled
//! together do not all renew in the same second. The jitter comes from the serial, so one
//! certificate's time is stable across restarts. The time is compared with wall-clock time
//! ([`crate::clock::now`]) at least every [`CHECK_INTERVAL`]: no long monotonic sleep, so a
//! machine that wakes from sleep, or whose clock jumps, renews at its next check when it is due.
//! A failed attempt is retried after [`RETRY_INITIAL`], doubling to [`RETRY_MAX`], until one
//! succeeds.
//!
//! The record (`certmesh/renewal.json`): the last attempt, its result, and the last success.

use std::time::{Duration, SystemTime};

use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::renew::RenewResult;

/// The service's name (in `status` under `details.services`).
pub const SERVICE: &str = "renewal";
/// Longest wait between two looks at the clock.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Largest jitter either way.
pub const MAX_JITTER: Duration = Duration::from_secs(2 * 3600);
/// First retry delay after a failed renewal.
pub const RETRY_INITIAL: Duration = Duration::from_secs(30);
/// Largest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(15 * 60);

/// When a certificate with this validity and serial is due: 2/3 of its lifetime plus jitter.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, serial: &[u8]) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let base = not_before + lifetime * 2 / 3;
    let span = (lifetime / 50).min(MAX_JITTER);
    let digest = sha2::Sha256::digest(serial);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let roll = u64::from_be_bytes(first);
    let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX / 4);
    let offset_ms = roll % (2 * span_ms + 1);
    let t = base + Duration::from_millis(offset_ms);
    t.checked_sub(span).unwrap_or(t)
}

/// When the certificate in `files` is due, or `None` if it cannot be read.
pub fn due_at(files: &CertFiles) -> Option<SystemTime> {
    let pem = std::fs::read_to_string(&files.cert).ok()?;
    let der = crate::x509::der(&pem)?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let to_system = |t: x509_parser::time::ASN1Time| SystemTime::from(t.to_datetime());
    Some(renew_at(
        to_system(cert.validity().not_before),
        to_system(cert.validity().not_after),
        cert.raw_serial(),
    ))
}

/// `t` as RFC 3339.
pub fn rfc3339(t: SystemTime) -> String {
    crate::names::rfc3339(time::OffsetDateTime::from(t))
}

/// What `status` shows about renewal (`certmesh/renewal.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RenewalRecord {
    /// When the last attempt ended (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// What started it: `schedule` or `command`.
    pub last_trigger: Option<String>,
    /// Whether it succeeded.
    pub last_ok: Option<bool>,
    /// One line: `renewed serial A → B (key rotated)` or the error.
    pub last_result: Option<String>,
    /// When the last success was (RFC 3339).
    pub last_renewed_at: Option<String>,
    /// Failed attempts since the last success.
    pub failures_in_a_row: u32,
}

fn store(layout: &Layout) -> JsonFile<RenewalRecord> {
    JsonFile::new(layout.dir().join("renewal.json"))
}

/// Records an attempt's outcome (a failure to record is logged, never fatal).
pub fn record(layout: &Layout, trigger: &str, outcome: &Result<RenewResult, MethodError>) {
    let store = store(layout);
    let mut r = store.load_or_default().unwrap_or_default();
    let now = rfc3339(SystemTime::now());
    r.last_attempt_at = Some(now.clone());
    r.last_trigger = Some(trigger.to_owned());
    match outcome {
        Ok(done) => {
            r.last_ok = Some(true);
            r.last_result = Some(format!(
                "renewed serial {} → {} ({}), expires {}",
                done.old_serial,
                done.serial,
                if done.key_changed {
                    "new key"
                } else {
                    "same key"
                },
                done.not_after
            ));
            r.last_renewed_at = Some(now);
            r.failures_in_a_row = 0;
        }
        Err(e) => {
            r.last_ok = Some(false);
            r.last_result = Some(e.message().to_owned());
            r.failures_in_a_row = r.failures_in_a_row.saturating_add(1);
        }
    }
    if let Err(e) = store.save(&r) {
        tracing::warn!("could not record the renewal result: {e}");
    }
}

/// The renewal part of a member's `status`: next renewal, last result, hook.
pub fn status_details(layout: &Layout, membership: &Membership) -> Value {
    let files = CertFiles::at(layout, &membership.hostname);
    let next = due_at(&files);
    let record = store(layout).load_or_default().unwrap_or_default();
    let hook = crate::hooks::load(layout).unwrap_or_default();
    json!({
        "next_renewal_at": next.map(rfc3339),
        "due_now": next.is_some_and(|n| crate::clock::now() >= n),
        "last": record,
        "hook": {
            "reload": hook.reload,
            "timeout_secs": hook.timeout_secs.unwrap_or(crate::hooks::DEFAULT_TIMEOUT_SECS),
            "last": hook.last.map(|l| json!({
                "outcome": l.outcome, "ok": l.ok, "trigger": l.trigger,
                "started_at": l.started_at, "duration_ms": l.duration_ms,
            })),
        },
    })
}

/// The renewal part of the one-line status summary.
pub fn status_text(details: &Value) -> String {
    let mut text = String::new();
    if let Some(next) = details["next_renewal_at"].as_str() {
        text.push_str(&format!("; renews at {next}"));
    }
    if details["last"]["last_ok"] == Value::Bool(false) {
        text.push_str(&format!(
            "; LAST RENEWAL FAILED: {}",
            details["last"]["last_result"].as_str().unwrap_or("?")
        ));
    }
    if details["hook"]["last"]["ok"] == Value::Bool(false) {
        text.push_str(&format!(
            "; reload hook FAILED ({})",
            details["hook"]["last"]["outcome"].as_str().unwrap_or("?")
        ));
    }
    text
}

/// The renewal service: runs on members under `koi daemon`; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let authority = crate::app::App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    if let Some(m) = Membership::load(&layout).ok().flatten() {
        let host = m.hostname.clone();
        // Under the writer lock, as a renewal would (a one-shot command may be running).
        match ctx
            .blocking("finish an interrupted renewal", move || {
                let _writer = authority.writer_for_command()?;
                crate::renew_files::finish(authority.layout(), &host)
            })
            .await
        {
            Ok(true) => tracing::info!("finished a renewal that was interrupted"),
            Ok(false) => {}
            Err(e) => tracing::warn!("{}", e.message()),
        }
    }
    let mut retry_at: Option<SystemTime> = None;
    let mut retry_delay = RETRY_INITIAL;
    loop {
        let wait = match Membership::load(&layout).ok().flatten() {
            Some(m) if m.role == "member" => {
                let now = crate::clock::now();
                let due = due_at(&CertFiles::at(&layout, &m.hostname));
                let blocked = retry_at.is_some_and(|r| now < r);
                // The debug-only test switch (crate::clock::NO_PULL_ENV): the CA's push renews.
                let pull_off = crate::clock::pull_renewal_disabled();
                if due.is_some_and(|d| now >= d) && !blocked && !pull_off {
                    match crate::renew::renew_once(&ctx, false, "schedule").await {
                        Ok(result) => {
                            retry_delay = RETRY_INITIAL;
                            crate::renew::after_renewal(&ctx, &layout, &result).await;
                            retry_at = skew_pause(&CertFiles::at(&layout, &m.hostname));
                        }
                        Err(e) => {
                            tracing::warn!(
                                retry_in_s = retry_delay.as_secs(),
                                "certificate renewal failed: {}",
                                e.message()
                            );
                            retry_at = Some(crate::clock::now() + retry_delay);
                            retry_delay = (retry_delay * 2).min(RETRY_MAX);
                        }
                    }
                    Duration::ZERO
                } else {
                    let next = match (due, retry_at) {
                        (Some(d), Some(r)) => Some(d.max(r)),
                        (d, r) => d.or(r),
                    };
                    next.and_then(|n| n.duration_since(now).ok())
                        .unwrap_or(CHECK_INTERVAL)
                        .min(CHECK_INTERVAL)
                }
            }
            _ => CHECK_INTERVAL,
        };
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
        }
    }
}

/// After a renewal: if the certificate just signed is already due by this machine's clock, the
/// clock is ahead of the CA's by more than a third of the lifetime, and renewing "when due" would
/// ask the CA again at once, in a loop. Renewals then pause for [`RETRY_MAX`] (so such a member
/// costs the CA one renewal per 15 minutes) and the log says why. `None` when the clock agrees.
fn skew_pause(files: &CertFiles) -> Option<SystemTime> {
    let now = crate::clock::now();
    if due_at(files).is_none_or(|due| now < due) {
        return None;
    }
    tracing::warn!(
        "the certificate renewed just now is already due by this machine's clock, which is \
         probably ahead of the CA's (check it: `timedatectl`); the next renewal waits {} minutes",
        RETRY_MAX.as_secs() / 60
    );
    Some(now + RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_at_two_thirds_within_the_bounded_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let end = start + 30 * day;
        let two_thirds = start + 20 * day;
        for serial in [b"a".as_slice(), b"b", b"serial-3", &[0x40, 1, 2, 3]] {
            let t = renew_at(start, end, serial);
            let off = t
                .duration_since(two_thirds)
                .unwrap_or_else(|e| e.duration());
            assert!(off <= MAX_JITTER, "{off:?}");
            assert_eq!(t, renew_at(start, end, serial), "stable for one serial");
        }
        // Short lifetimes: ±2 % of it.
        let short_end = start + Duration::from_secs(90);
        let t = renew_at(start, short_end, b"x");
        let base = start + Duration::from_secs(60);
        let off = t.duration_since(base).unwrap_or_else(|e| e.duration());
        assert!(off <= Duration::from_millis(1800), "{off:?}");
        assert!(
            renew_at(end, start, b"x") >= end - MAX_JITTER,
            "no panic on a reversed validity"
        );
    }
}
