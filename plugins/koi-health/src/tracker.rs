//! The state model, pure and unit-tested: the four states, a service check's counting of
//! successes and failures against its `--fail-after` / `--recover-after` thresholds, and the rule
//! that combines a machine's signals (mDNS last heard and goodbyes, certificate expiry, certmesh
//! heartbeats) into one state. docs/health.md writes both rules down; time is passed in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// A machine's or service's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Working.
    Up,
    /// Not working.
    Down,
    /// Not known yet (a new check, or a mesh member not heard yet).
    Pending,
    /// Working, with something to look at (a certificate expiring soon, failing heartbeats).
    Degraded,
}

impl State {
    /// The lowercase word.
    pub fn word(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Pending => "pending",
            Self::Degraded => "degraded",
        }
    }
}

/// What a check's run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether it passed.
    pub ok: bool,
    /// What happened (`HTTP 200`, `connection refused`, `no answer within 2s`).
    pub detail: String,
}

/// A service check's tracked state.
#[derive(Debug, Clone)]
pub struct CheckTrack {
    /// The state.
    pub state: State,
    /// Since when.
    pub since: SystemTime,
    /// Why.
    pub reason: String,
    /// Successes in a row.
    pub oks: u32,
    /// Failures in a row.
    pub fails: u32,
    /// The last run: when, and what it found.
    pub last: Option<(SystemTime, Outcome)>,
}

impl CheckTrack {
    /// A new check: pending.
    pub fn new(now: SystemTime) -> Self {
        Self {
            state: State::Pending,
            since: now,
            reason: "not checked yet".into(),
            oks: 0,
            fails: 0,
            last: None,
        }
    }

    /// Counts one run; returns `(old, new)` when the state changed.
    ///
    /// Pending becomes up at the first success and down after `fail_after` failures in a row; up
    /// becomes down after `fail_after` failures in a row; down becomes up after `recover_after`
    /// successes in a row. Anything else changes no state.
    pub fn observe(
        &mut self,
        outcome: Outcome,
        fail_after: u32,
        recover_after: u32,
        now: SystemTime,
    ) -> Option<(State, State)> {
        let old = self.state;
        let new = if outcome.ok {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
            match old {
                State::Pending => Some((State::Up, outcome.detail.clone())),
                State::Down if self.oks >= recover_after => Some((
                    State::Up,
                    format!("{} ({} successes in a row)", outcome.detail, self.oks),
                )),
                _ => None,
            }
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
            match old {
                State::Pending | State::Up | State::Degraded if self.fails >= fail_after => Some((
                    State::Down,
                    format!("{} ({} failures in a row)", outcome.detail, self.fails),
                )),
                _ => None,
            }
        };
        self.last = Some((now, outcome));
        let (state, reason) = new?;
        self.state = state;
        self.since = now;
        self.reason = reason;
        Some((old, state))
    }
}

/// Certificates expiring within this are `degraded`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// What health knows about one machine.
#[derive(Debug, Clone, Default)]
pub struct MachineSignals {
    /// mDNS: when it was last heard (announcement, answer, or koi-mdns's re-check).
    pub last_heard: Option<SystemTime>,
    /// mDNS: its services now (full names), at most a bounded number.
    pub services: std::collections::BTreeSet<String>,
    /// mDNS: when its last service said goodbye, if nothing was heard since.
    pub goodbye: Option<SystemTime>,
    /// Its addresses, as mDNS last gave them.
    pub addresses: Vec<String>,
    /// certmesh: it is in the roster.
    pub in_mesh: bool,
    /// certmesh: its certificate's expiry.
    pub cert_not_after: Option<SystemTime>,
    /// certmesh: this machine's last heartbeat to its CA failed (the reason), if it did.
    pub heartbeat_failing: Option<String>,
    /// This is the machine health runs on (its own heartbeats name it): the mDNS rules do not
    /// apply to it, since it cannot go unheard by itself.
    pub is_self: bool,
}

fn ago(now: SystemTime, t: SystemTime) -> String {
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The combination rule (docs/health.md, "Machines"): the first that holds wins.
///
/// 1. A goodbye with nothing heard since → down.
/// 2. Heard on mDNS, but not for `threshold` → down.
/// 3. An expired certificate → down.
/// 4. Never heard on mDNS (known from the mesh roster only) → pending.
/// 5. A certificate expiring within 7 days, or failing heartbeats → degraded.
/// 6. Otherwise → up.
pub fn machine_state(s: &MachineSignals, threshold: Duration, now: SystemTime) -> (State, String) {
    if s.is_self {
        return own_state(s, now);
    }
    if let Some(bye) = s.goodbye {
        return (
            State::Down,
            format!("said goodbye on mDNS at {}", stamp(bye)),
        );
    }
    if let Some(heard) = s.last_heard
        && now.duration_since(heard).unwrap_or_default() >= threshold
    {
        return (
            State::Down,
            format!(
                "not heard on mDNS for {} (threshold {})",
                ago(now, heard),
                humantime::format_duration(threshold)
            ),
        );
    }
    let cert = cert_state(s.cert_not_after, now);
    if let Some(down @ (State::Down, _)) = cert {
        return down;
    }
    let Some(heard) = s.last_heard else {
        return (
            State::Pending,
            "in the mesh roster, not heard on mDNS yet".into(),
        );
    };
    if let Some(expiring) = cert {
        return expiring;
    }
    if let Some(why) = &s.heartbeat_failing {
        return (
            State::Degraded,
            format!("heartbeat to the CA failing: {why}"),
        );
    }
    (State::Up, format!("heard on mDNS {} ago", ago(now, heard)))
}

/// Rules 3 and 5 for a certificate ending at `end`: down once expired, degraded within
/// [`EXPIRY_WARNING`] of its end, else nothing to say.
fn cert_state(end: Option<SystemTime>, now: SystemTime) -> Option<(State, String)> {
    let end = end?;
    if end <= now {
        return Some((
            State::Down,
            format!("its certificate expired at {}", stamp(end)),
        ));
    }
    (end.duration_since(now).unwrap_or_default() < EXPIRY_WARNING).then(|| {
        (
            State::Degraded,
            format!(
                "its certificate expires in {} ({})",
                ago(end, now),
                stamp(end)
            ),
        )
    })
}

/// The rule for the machine health runs on: rules 3 and 5 (certificate, heartbeat), else up.
fn own_state(s: &MachineSignals, now: SystemTime) -> (State, String) {
    if let Some(cert) = cert_state(s.cert_not_after, now) {
        return cert;
    }
    match &s.heartbeat_failing {
        Some(why) => (
            State::Degraded,
            format!("heartbeat to the CA failing: {why}"),
        ),
        None => (State::Up, "this machine; heartbeat to the CA ok".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut CheckTrack, ok: bool) -> Option<(State, State)> {
        let detail = if ok { "HTTP 200" } else { "HTTP 502" };
        t.observe(
            Outcome {
                ok,
                detail: detail.into(),
            },
            3,
            2,
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn thresholds_bound_transitions() {
        let mut t = CheckTrack::new(SystemTime::UNIX_EPOCH);
        assert_eq!(run(&mut t, true), Some((State::Pending, State::Up)));
        assert_eq!(run(&mut t, false), None);
        assert_eq!(run(&mut t, false), None);
        assert_eq!(run(&mut t, false), Some((State::Up, State::Down)));
        assert_eq!(run(&mut t, true), None);
        assert_eq!(run(&mut t, true), Some((State::Down, State::Up)));
        // Alternating never moves it.
        for i in 0..100 {
            assert_eq!(run(&mut t, i % 2 == 0), None);
        }
    }

    #[test]
    fn machine_rule() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let th = Duration::from_secs(60);
        let mut s = MachineSignals {
            last_heard: Some(now - Duration::from_secs(10)),
            ..MachineSignals::default()
        };
        assert_eq!(machine_state(&s, th, now).0, State::Up);
        s.cert_not_after = Some(now + Duration::from_secs(3 * 86400));
        assert_eq!(machine_state(&s, th, now).0, State::Degraded);
        s.cert_not_after = Some(now - Duration::from_secs(1));
        assert_eq!(machine_state(&s, th, now).0, State::Down);
        s.cert_not_after = None;
        s.last_heard = Some(now - Duration::from_secs(61));
        assert_eq!(machine_state(&s, th, now).0, State::Down);
        s.last_heard = Some(now);
        s.goodbye = Some(now);
        assert_eq!(machine_state(&s, th, now).0, State::Down);
        let roster_only = MachineSignals {
            in_mesh: true,
            ..MachineSignals::default()
        };
        assert_eq!(machine_state(&roster_only, th, now).0, State::Pending);
        let mut me = MachineSignals {
            is_self: true,
            ..MachineSignals::default()
        };
        assert_eq!(machine_state(&me, th, now).0, State::Up);
        me.heartbeat_failing = Some("connection refused".into());
        assert_eq!(machine_state(&me, th, now).0, State::Degraded);
    }
}
