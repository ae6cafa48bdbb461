//! Enrollment codes: TOTP as authenticator apps implement it (RFC 6238, HMAC-SHA1, 6 digits,
//! 30-second steps), via totp-rs. [`TotpGuard::verify`] accepts the previous, current and next
//! step (±1), compares all three candidates in constant time with `subtle`, refuses a code whose
//! step is not newer than the last accepted one (replay), and locks for 5 minutes after 3
//! consecutive failures. Every call returns a [`TotpOutcome`] for the audit log. The clock is a
//! parameter (`now`, Unix seconds) so tests can drive it.

use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Code length.
pub const DIGITS: usize = 6;
/// Step length in seconds.
pub const STEP_SECONDS: u64 = 30;
/// Steps accepted either side of the current one.
pub const SKEW_STEPS: u64 = 1;
/// Consecutive failures that trigger a lockout.
pub const MAX_FAILURES: u32 = 3;
/// Lockout length in seconds (5 minutes).
pub const LOCKOUT_SECONDS: u64 = 300;
/// Secret length in bytes (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;

/// The shared TOTP secret. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret([secret elided])")
    }
}

impl TotpSecret {
    /// A fresh random 160-bit secret.
    pub fn generate() -> Self {
        let mut b = vec![0u8; SECRET_BYTES];
        rand::fill(&mut b[..]);
        TotpSecret(b)
    }

    /// Wraps existing secret bytes (at least 128 bits).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 16 {
            return Err(Error::Totp {
                reason: format!(
                    "the secret is {} bytes; at least 16 are needed",
                    bytes.len()
                ),
            });
        }
        Ok(TotpSecret(bytes.to_vec()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn totp(&self, issuer: Option<&str>, account: &str) -> Result<Totp> {
        let mut b = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_skew(SKEW_STEPS as u16)
            .with_step_duration(STEP_SECONDS)
            .with_secret(self.0.clone());
        if !account.is_empty() {
            b = b.with_account_name(account);
        }
        if let Some(i) = issuer {
            b = b.with_issuer(Some(i));
        }
        b.build().map_err(|e| Error::Totp {
            reason: e.to_string(),
        })
    }

    /// The `otpauth://totp/...` URI for authenticator apps (and the QR code). Contains the
    /// secret: show it once, never log it.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<Zeroizing<String>> {
        if account.is_empty() {
            return Err(Error::Totp {
                reason: "the account name is empty".into(),
            });
        }
        let t = self.totp(Some(issuer), account)?;
        t.to_url().map(Zeroizing::new).map_err(|e| Error::Totp {
            reason: e.to_string(),
        })
    }

    /// The code for the step containing `now` (for tests and for showing on the CA console).
    pub fn code_at(&self, now: u64) -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(
            self.totp(None, "")?.generate(now).to_string(),
        ))
    }
}

/// Replay and lockout state. Persist it (it is serde) so a restart neither re-opens a used code
/// nor lifts a lockout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpState {
    /// Highest time step ever accepted; codes for this step or earlier are refused.
    pub last_accepted_step: Option<u64>,
    /// Failures since the last success or lockout.
    pub consecutive_failures: u32,
    /// Unix time at which the current lockout ends.
    pub locked_until: Option<u64>,
}

/// Why a code was refused (not counting lockout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not six ASCII digits.
    Malformed,
    /// Six digits that match no step in the window.
    WrongCode,
    /// Matches a step that was already accepted (or an older one).
    Replayed,
}

/// The result of one verification attempt; all variants are meant to be audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TotpOutcome {
    /// The code is good; `step` is now the last accepted step.
    Accepted {
        /// Time step that matched.
        step: u64,
    },
    /// The code was refused and counted as a failure.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Failures so far (1 or 2).
        failures: u32,
        /// Attempts left before the lockout.
        remaining: u32,
    },
    /// This attempt was the last allowed failure; the guard is now locked.
    LockedOut {
        /// Why this last attempt failed.
        reason: RejectReason,
        /// Unix time the lockout ends.
        until: u64,
    },
    /// The guard was already locked; the code was not even looked at.
    Locked {
        /// Unix time the lockout ends.
        until: u64,
    },
}

impl TotpOutcome {
    /// True only for [`TotpOutcome::Accepted`].
    pub fn is_accepted(&self) -> bool {
        matches!(self, TotpOutcome::Accepted { .. })
    }
}

/// Verifies enrollment codes against one secret, with replay and lockout protection.
#[derive(Debug)]
pub struct TotpGuard {
    secret: TotpSecret,
    state: TotpState,
}

impl TotpGuard {
    /// A guard with fresh state.
    pub fn new(secret: TotpSecret) -> Self {
        Self::with_state(secret, TotpState::default())
    }

    /// A guard resuming persisted state.
    pub fn with_state(secret: TotpSecret, state: TotpState) -> Self {
        TotpGuard { secret, state }
    }

    /// The current state, to persist after every call.
    pub fn state(&self) -> &TotpState {
        &self.state
    }

    /// Checks `code` at Unix time `now`. Never panics; never reveals which part failed through
    /// timing (all candidates are computed and compared).
    pub fn verify(&mut self, code: &str, now: u64) -> TotpOutcome {
        if let Some(until) = self.state.locked_until {
            if now < until {
                return TotpOutcome::Locked { until };
            }
            self.state.locked_until = None;
            self.state.consecutive_failures = 0;
        }
        let reason = match self.match_step(code.trim(), now) {
            Ok(step) => {
                if self
                    .state
                    .last_accepted_step
                    .is_some_and(|last| step <= last)
                {
                    RejectReason::Replayed
                } else {
                    self.state.last_accepted_step = Some(step);
                    self.state.consecutive_failures = 0;
                    return TotpOutcome::Accepted { step };
                }
            }
            Err(r) => r,
        };
        self.state.consecutive_failures += 1;
        if self.state.consecutive_failures >= MAX_FAILURES {
            let until = now.saturating_add(LOCKOUT_SECONDS);
            self.state.locked_until = Some(until);
            self.state.consecutive_failures = 0;
            TotpOutcome::LockedOut { reason, until }
        } else {
            TotpOutcome::Rejected {
                reason,
                failures: self.state.consecutive_failures,
                remaining: MAX_FAILURES - self.state.consecutive_failures,
            }
        }
    }

    /// The step whose code equals `code`, comparing every window candidate in constant time.
    fn match_step(&self, code: &str, now: u64) -> std::result::Result<u64, RejectReason> {
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RejectReason::Malformed);
        }
        let totp = self
            .secret
            .totp(None, "")
            .map_err(|_| RejectReason::WrongCode)?;
        let current = now / STEP_SECONDS;
        let mut found = Choice::from(0);
        let mut step_found = 0u64;
        for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
            let expected = Zeroizing::new(totp.generate(step * STEP_SECONDS).to_string());
            let hit = expected.as_bytes().ct_eq(code.as_bytes());
            // Keep the first hit; constant-time select so the loop does the same work either way.
            let take = hit & !found;
            step_found = u64::conditional_select_ct(step_found, step, take);
            found |= hit;
        }
        if bool::from(found) {
            Ok(step_found)
        } else {
            Err(RejectReason::WrongCode)
        }
    }
}

trait SelectCt {
    fn conditional_select_ct(a: Self, b: Self, choice: Choice) -> Self;
}
impl SelectCt for u64 {
    fn conditional_select_ct(a: u64, b: u64, choice: Choice) -> u64 {
        use subtle::ConditionallySelectable;
        u64::conditional_select(&a, &b, choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000; // a step boundary (divisible by 30)

    fn guard() -> (TotpSecret, TotpGuard) {
        let s = TotpSecret::generate();
        (s.clone(), TotpGuard::new(s))
    }

    #[test]
    fn plus_minus_one_step_accepted_two_steps_refused() {
        let (s, _) = guard();
        for (offset, ok) in [
            (-30i64, true),
            (0, true),
            (30, true),
            (-60, false),
            (60, false),
        ] {
            let mut g = TotpGuard::new(s.clone());
            let code = s.code_at((T0 as i64 + offset) as u64).unwrap();
            assert_eq!(g.verify(&code, T0).is_accepted(), ok, "offset {offset}");
        }
    }

    #[test]
    fn accepted_code_is_refused_when_replayed_and_older_steps_too() {
        let (s, mut g) = guard();
        let code = s.code_at(T0).unwrap();
        assert_eq!(g.verify(&code, T0), TotpOutcome::Accepted { step: T0 / 30 });
        assert!(matches!(
            g.verify(&code, T0 + 5),
            TotpOutcome::Rejected {
                reason: RejectReason::Replayed,
                failures: 1,
                remaining: 2
            }
        ));
        // The previous step's code is also refused now (it is not newer than the last accepted).
        let prev = s.code_at(T0 - 30).unwrap();
        assert!(matches!(
            g.verify(&prev, T0 + 5),
            TotpOutcome::Rejected {
                reason: RejectReason::Replayed,
                ..
            }
        ));
        // The next step's code is fine.
        let next = s.code_at(T0 + 30).unwrap();
        assert!(g.verify(&next, T0 + 31).is_accepted());
    }

    #[test]
    fn third_failure_locks_for_five_minutes() {
        let (s, mut g) = guard();
        let good = s.code_at(T0).unwrap();
        let wrong = if good.as_str() == "000000" {
            "111111"
        } else {
            "000000"
        };
        assert!(matches!(
            g.verify(wrong, T0),
            TotpOutcome::Rejected { failures: 1, .. }
        ));
        assert!(matches!(
            g.verify("12a456", T0),
            TotpOutcome::Rejected {
                reason: RejectReason::Malformed,
                failures: 2,
                ..
            }
        ));
        assert_eq!(
            g.verify(wrong, T0 + 1),
            TotpOutcome::LockedOut {
                reason: RejectReason::WrongCode,
                until: T0 + 1 + 300
            }
        );
        // Even the right code is not looked at while locked.
        assert_eq!(
            g.verify(&good, T0 + 2),
            TotpOutcome::Locked { until: T0 + 301 }
        );
        let at = T0 + 300;
        assert_eq!(
            g.verify(&s.code_at(at).unwrap(), at),
            TotpOutcome::Locked { until: T0 + 301 }
        );
        let after = T0 + 301;
        assert!(g.verify(&s.code_at(after).unwrap(), after).is_accepted());
        assert_eq!(g.state().consecutive_failures, 0);
    }

    #[test]
    fn success_resets_the_failure_count_and_state_round_trips() {
        let (s, mut g) = guard();
        let good = s.code_at(T0).unwrap();
        let wrong = if good.as_str() == "000000" {
            "111111"
        } else {
            "000000"
        };
        g.verify(wrong, T0);
        g.verify(wrong, T0);
        assert!(g.verify(&good, T0).is_accepted());
        assert_eq!(g.state().consecutive_failures, 0);
        let json = serde_json::to_string(g.state()).unwrap();
        let mut g2 = TotpGuard::with_state(s.clone(), serde_json::from_str(&json).unwrap());
        assert!(matches!(
            g2.verify(&good, T0),
            TotpOutcome::Rejected {
                reason: RejectReason::Replayed,
                ..
            }
        ));
    }

    #[test]
    fn otpauth_uri_has_the_app_parameters() {
        let s = TotpSecret::generate();
        let uri = s.otpauth_uri("Koi certmesh", "stone-01").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{}", uri.as_str());
        assert!(uri.contains("secret="));
        assert!(uri.contains("issuer=Koi"));
        assert!(!format!("{s:?}").contains(&hex::encode(s.as_bytes())));
    }
}
