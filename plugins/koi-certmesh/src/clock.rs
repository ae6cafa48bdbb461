//! Time for renewal, and the test clock. Renewal decisions read wall-clock time
//! ([`now`], `SystemTime`), never a monotonic timer, so a machine that slept or whose clock jumped
//! acts on the real date at its next check.
//!
//! These variables let tests move time without waiting for it (docs/certmesh.md, "Testing time"):
//! - [`LIFETIME_ENV`] (`KOI_TEST_CERT_LIFETIME_SECS`): on the CA, the lifetime of the member
//!   certificates it signs (at least [`MIN_TEST_LIFETIME_SECS`]);
//! - [`CA_LIFETIME_ENV`] (`KOI_TEST_CA_CERT_LIFETIME_SECS`): the lifetime of the CA's own API
//!   certificate made by `create` (at least [`MIN_TEST_LIFETIME_SECS`]; its renewals then get
//!   [`LIFETIME_ENV`]'s);
//! - [`OFFSET_ENV`] (`KOI_TEST_CLOCK_OFFSET_SECS`): seconds added to "now" for renewal decisions
//!   (the member's schedule and the CA's expiry check);
//! - [`HEARTBEAT_ENV`] (`KOI_TEST_HEARTBEAT_SECS`): the member's heartbeat interval
//!   ([`crate::heartbeat`]) instead of 5 minutes (at least [`MIN_TEST_HEARTBEAT_SECS`]);
//! - [`NO_PULL_ENV`] (`KOI_TEST_NO_PULL_RENEWAL=1`): the member's renewal service does not renew
//!   by itself, so the CA's push ([`crate::push`]) is what renews it (`koi certmesh renew` still
//!   works).
//!
//! All five are honoured only in debug builds (`cfg(debug_assertions)`). A release build ignores them
//! and logs a warning once, so a production mesh cannot be given short certificates or a moved
//! clock through the environment.

use std::sync::Once;
use std::time::{Duration, SystemTime};

/// The debug-only leaf lifetime override (seconds).
pub const LIFETIME_ENV: &str = "KOI_TEST_CERT_LIFETIME_SECS";
/// The debug-only lifetime of the CA's own API certificate at `create` (seconds).
pub const CA_LIFETIME_ENV: &str = "KOI_TEST_CA_CERT_LIFETIME_SECS";
/// The debug-only clock offset (seconds, may be negative).
pub const OFFSET_ENV: &str = "KOI_TEST_CLOCK_OFFSET_SECS";
/// The debug-only heartbeat interval override (seconds).
pub const HEARTBEAT_ENV: &str = "KOI_TEST_HEARTBEAT_SECS";
/// The debug-only switch that turns the member's own (pull) renewal off: `1`.
pub const NO_PULL_ENV: &str = "KOI_TEST_NO_PULL_RENEWAL";
/// The shortest interval [`HEARTBEAT_ENV`] may set.
pub const MIN_TEST_HEARTBEAT_SECS: u64 = 1;
/// The shortest lifetime [`LIFETIME_ENV`] may set.
pub const MIN_TEST_LIFETIME_SECS: u64 = 10;

fn read_env(name: &str) -> Option<i64> {
    let text = std::env::var(name).ok()?;
    if !cfg!(debug_assertions) {
        static WARN: Once = Once::new();
        WARN.call_once(|| {
            tracing::warn!(
                "{name} is set but ignored: the certmesh test clock works only in debug builds"
            );
        });
        return None;
    }
    match text.trim().parse::<i64>() {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!("{name}={text:?} is not a whole number of seconds; ignored");
            None
        }
    }
}

/// The clock offset in effect (zero in release builds).
pub fn offset_secs() -> i64 {
    read_env(OFFSET_ENV).unwrap_or(0)
}

/// Wall-clock "now" for renewal decisions: the system time plus the debug-only offset.
pub fn now() -> SystemTime {
    shift(SystemTime::now(), offset_secs())
}

/// [`now`] as an `OffsetDateTime`.
pub fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::from(now())
}

fn shift(t: SystemTime, secs: i64) -> SystemTime {
    let d = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

/// The lifetime the CA gives member certificates: `None` (the default, 30 days) unless a debug
/// build sets [`LIFETIME_ENV`].
pub fn leaf_lifetime() -> Option<time::Duration> {
    let secs = read_env(LIFETIME_ENV)?;
    let secs = u64::try_from(secs).unwrap_or(0).max(MIN_TEST_LIFETIME_SECS);
    Some(time::Duration::seconds(
        i64::try_from(secs).unwrap_or(i64::MAX),
    ))
}

/// Whether a debug build was told not to renew by pull ([`NO_PULL_ENV`] = 1); always false in
/// release builds.
pub fn pull_renewal_disabled() -> bool {
    read_env(NO_PULL_ENV).is_some_and(|v| v == 1)
}

/// The heartbeat interval: `default` unless a debug build sets [`HEARTBEAT_ENV`].
pub fn heartbeat_interval(default: Duration) -> Duration {
    match read_env(HEARTBEAT_ENV) {
        Some(secs) => Duration::from_secs(
            u64::try_from(secs)
                .unwrap_or(0)
                .max(MIN_TEST_HEARTBEAT_SECS),
        ),
        None => default,
    }
}

/// `KOI_TEST_STANDBY_SYNC_SECS`: the standby's periodic roster sync interval ([`crate::standby_sync`]).
pub const STANDBY_SYNC_ENV: &str = "KOI_TEST_STANDBY_SYNC_SECS";

/// The standby's roster sync interval: `default` unless a debug build sets [`STANDBY_SYNC_ENV`]
/// (at least 1 s).
pub fn standby_sync_interval(default: Duration) -> Duration {
    match read_env(STANDBY_SYNC_ENV) {
        Some(secs) => Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1)),
        None => default,
    }
}

/// The lifetime `create` gives the CA's own API certificate: `None` (the default) unless a debug
/// build sets [`CA_LIFETIME_ENV`].
pub fn ca_cert_lifetime() -> Option<time::Duration> {
    let secs = read_env(CA_LIFETIME_ENV)?;
    let secs = u64::try_from(secs).unwrap_or(0).max(MIN_TEST_LIFETIME_SECS);
    Some(time::Duration::seconds(
        i64::try_from(secs).unwrap_or(i64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_moves_both_ways_and_never_panics() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(shift(t, 10), t + Duration::from_secs(10));
        assert_eq!(shift(t, -10), t - Duration::from_secs(10));
        let _ = shift(SystemTime::UNIX_EPOCH, i64::MIN);
        let _ = shift(SystemTime::UNIX_EPOCH, i64::MAX);
    }
}
