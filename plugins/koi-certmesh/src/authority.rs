//! The CA at run time: the unlocked key (only ever in this process, in zeroizing types), the
//! enrollment-code guard, the open audit log, and the operations that need them — enrolling a
//! member from a CSR, certifying a device, and recording every refusal.
//!
//! Locking. Under `koi daemon` the CA starts locked; [`Authority::unlock`] opens the vault.
//! While locked, every signing path refuses with [`LOCKED_MESSAGE`](crate::error::LOCKED_MESSAGE),
//! and refusals (which cannot be signed without the key) are kept in `audit-pending.jsonl`
//! ([`crate::pending`]) and signed into the log at the next unlock. One-shot commands that sign
//! (`issue`) open a session for that one command ([`crate::signing`]).
//!
//! Ordering. An audit entry is appended (and fsynced) before the roster that records it is saved;
//! the roster then records the new head. A crash in between leaves a roster whose head is still
//! in the log, which verifies.

use std::fs::File;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use koi_certmesh_core::audit;
use koi_certmesh_core::{
    AuditLog, CaStore, Member, Passphrase, RejectReason, Role, Roster, TotpGuard, TotpOutcome,
    UnlockedCa,
};
use koi_sdk::MethodError;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::{self, Refusal};
use crate::layout::Layout;
use crate::refusals::{Coalescer, Record, Refused};
use crate::wire::{JoinRequest, JoinResponse};

/// Audit event: a join or issuance the CA refused (reason in `details.reason`).
pub const ENROLLMENT_REFUSED: &str = "enrollment_refused";

/// An unlocked CA: key, code guard, audit log.
pub struct CaSession {
    unlocked: UnlockedCa,
    guard: TotpGuard,
    audit: AuditLog,
}

impl std::fmt::Debug for CaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaSession([keys elided])")
    }
}

/// What an unlock did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct UnlockReport {
    /// The CA's fingerprint.
    pub ca_fingerprint: String,
    /// Refusals recorded while locked and now signed into the audit log.
    pub pending_entries_signed: usize,
    /// Bytes of a torn last audit line removed (a crash mid-append), 0 normally.
    pub torn_bytes_repaired: u64,
}

impl CaSession {
    /// Opens the vault with `pass`, repairs a torn audit tail, signs pending entries in and
    /// records the unlock. Blocking (Argon2id takes a few hundred milliseconds).
    pub fn open(
        layout: &Layout,
        pass: &Passphrase,
        actor: &str,
        purpose: &str,
    ) -> Result<(Self, UnlockReport), MethodError> {
        let store = CaStore::new(layout.ca_dir());
        if !store.exists() {
            if layout.is_ca() {
                return Err(error::missing_vault(&store.vault_path()));
            }
            return Err(error::fail(
                format!(
                    "No CA on this machine (nothing at {}).",
                    store.vault_path().display()
                ),
                "Create one with `koi certmesh create`, or join an existing mesh with `koi certmesh join`.",
            ));
        }
        let unlocked = store.unlock(pass).map_err(error::core)?;
        let ca = unlocked.ca();
        // Verifies from the signed checkpoint (koi_certmesh_core::checkpoint), not the whole log.
        let (mut audit, torn) =
            AuditLog::open_repairing(&layout.audit(), ca).map_err(error::core)?;
        let now = OffsetDateTime::now_utc();
        if torn > 0 {
            audit
                .append(
                    ca,
                    audit::events::LOG_REPAIRED,
                    "system",
                    json!({"torn_bytes_removed": torn}),
                    now,
                )
                .map_err(error::core)?;
        }
        let (pending, over) = crate::pending::take_pending(layout)?;
        for p in &pending {
            // Entries written before refusals were bounded can hold raw client text.
            let mut details = crate::refusals::bounded_value(&p.details);
            if let Value::Object(m) = &mut details {
                m.insert(
                    "recorded_while_locked_at".into(),
                    Value::from(crate::refusals::bounded(&p.ts, 64)),
                );
            }
            let event = crate::refusals::bounded(&p.event, crate::refusals::MAX_NAME_CHARS);
            let actor = crate::refusals::bounded(&p.actor, crate::refusals::MAX_NAME_CHARS);
            audit
                .append(ca, &event, &actor, details, now)
                .map_err(error::core)?;
        }
        if over > 0 {
            audit
                .append(
                    ca,
                    ENROLLMENT_REFUSED,
                    "system",
                    json!({
                        "reason": "other",
                        "peer": "any",
                        "count": over,
                        "coalesced": "pending refusals beyond the limit signed in at one unlock",
                    }),
                    now,
                )
                .map_err(error::core)?;
        }
        audit
            .append(
                ca,
                audit::events::CA_UNLOCKED,
                actor,
                json!({"purpose": purpose}),
                now,
            )
            .map_err(error::core)?;
        if let Err(e) = audit.write_checkpoint(ca) {
            tracing::warn!(
                "could not write the audit checkpoint (the next unlock verifies more): {e}"
            );
        }
        let guard = TotpGuard::with_state(
            unlocked.totp_secret().clone(),
            crate::totp_state::load(layout),
        );
        let report = UnlockReport {
            ca_fingerprint: ca.fingerprint(),
            pending_entries_signed: pending.len() + usize::try_from(over).unwrap_or(usize::MAX),
            torn_bytes_repaired: torn,
        };
        let session = CaSession {
            unlocked,
            guard,
            audit,
        };
        session.record_head(layout)?;
        let _ = std::fs::remove_file(layout.audit_pending_signing());
        Ok((session, report))
    }

    /// The enrollment-code guard (standby promotion checks its code with the same guard:
    /// [`crate::standby_api`]).
    pub(crate) fn guard_mut(&mut self) -> &mut TotpGuard {
        &mut self.guard
    }

    /// The unlocked CA.
    pub fn unlocked(&self) -> &UnlockedCa {
        &self.unlocked
    }

    /// `rotate-secret`: a new TOTP secret in the vault (rewritten atomically), and the code guard
    /// restarted on it with no replay or lockout state (see `rotate.rs`).
    pub fn rotate_enrollment_secret(
        &mut self,
        layout: &Layout,
    ) -> Result<&koi_certmesh_core::TotpSecret, MethodError> {
        let secret = self.unlocked.rotate_totp_secret().map_err(error::core)?;
        self.guard = TotpGuard::new(secret.clone());
        crate::totp_state::save(layout, self.guard.state()).map_err(MethodError::from)?;
        Ok(self.unlocked.totp_secret())
    }

    /// Appends an audit entry signed by the CA and fsyncs it.
    pub fn audit(&mut self, event: &str, actor: &str, details: Value) -> Result<(), MethodError> {
        self.audit_unsynced(event, actor, details)?;
        self.sync_audit()
    }

    /// Appends an audit entry signed by the CA WITHOUT fsyncing it: the renewal batch
    /// ([`crate::renew_batch`]) appends one per renewal and then calls [`Self::sync_audit`] once,
    /// before it saves the roster or answers.
    pub fn audit_unsynced(
        &mut self,
        event: &str,
        actor: &str,
        details: Value,
    ) -> Result<(), MethodError> {
        self.audit
            .append_unsynced(
                self.unlocked.ca(),
                event,
                actor,
                details,
                OffsetDateTime::now_utc(),
            )
            .map(|_| ())
            .map_err(error::core)
    }

    /// Fsyncs the entries [`Self::audit_unsynced`] appended.
    pub fn sync_audit(&mut self) -> Result<(), MethodError> {
        self.audit.sync(self.unlocked.ca()).map_err(error::core)
    }

    /// Saves the roster with the audit head set to the log's last entry.
    pub fn save_roster(&self, layout: &Layout, roster: &mut Roster) -> Result<(), MethodError> {
        self.save_roster_at(&layout.roster(), roster)
    }

    /// [`Self::save_roster`] to an explicit path.
    pub fn save_roster_at(
        &self,
        path: &std::path::Path,
        roster: &mut Roster,
    ) -> Result<(), MethodError> {
        roster.mesh.audit_head = self.audit.head();
        roster.save(path).map_err(error::core)
    }

    fn record_head(&self, layout: &Layout) -> Result<(), MethodError> {
        let mut roster = Roster::load(&layout.roster()).map_err(error::core)?;
        self.save_roster(layout, &mut roster)
    }
}

/// The CA of this process: locked or unlocked.
#[derive(Debug)]
pub struct Authority {
    layout: Layout,
    session: Mutex<Option<CaSession>>,
    /// Whether `session` holds a session, readable without waiting for a signer that holds the
    /// mutex (`status` and the API's health answer ask while joins are being signed).
    unlocked: AtomicBool,
    writer: Mutex<Option<File>>,
    refusals: Mutex<Coalescer>,
    /// The term of a primary seen above this CA's own (0: none): once set, this CA signs
    /// nothing more ([`Self::fence`], [`crate::demote`]).
    superseded: AtomicU64,
    /// The renewal worker's queue ([`crate::renew_batch`]).
    renewals: crate::renew_batch::RenewQueue,
}

impl Authority {
    /// A locked authority over `layout`.
    pub fn new(layout: Layout) -> Arc<Self> {
        Arc::new(Authority {
            layout,
            session: Mutex::new(None),
            unlocked: AtomicBool::new(false),
            writer: Mutex::new(None),
            superseded: AtomicU64::new(0),
            refusals: Mutex::new(Coalescer::default()),
            renewals: crate::renew_batch::RenewQueue::default(),
        })
    }

    /// The renewal worker's queue ([`crate::renew_batch`]).
    pub(crate) fn renewals(&self) -> &crate::renew_batch::RenewQueue {
        &self.renewals
    }

    /// The file layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn session(&self) -> MutexGuard<'_, Option<CaSession>> {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the key is open in this process.
    pub fn is_unlocked(&self) -> bool {
        self.unlocked.load(Ordering::Acquire)
    }

    /// Holds the writer lock for this process's life (daemon mode, as CA).
    pub fn hold_writer_lock(&self) -> Result<(), MethodError> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writer.is_none() {
            *writer = Some(self.layout.lock_writer()?);
        }
        Ok(())
    }

    /// The writer lock for one command: `None` when this process already holds it for life.
    pub fn writer_for_command(&self) -> Result<Option<File>, MethodError> {
        let held = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if held {
            Ok(None)
        } else {
            self.layout.lock_writer().map(Some)
        }
    }

    /// Installs an opened session (after `unlock`, or after `create` under the daemon).
    /// Counted refusals recorded while locked are signed in at once. Blocking (signs).
    pub fn install(&self, session: CaSession) {
        if self.superseded_by().is_some() {
            // Fenced while the vault was opening: the key is dropped, nothing is signed.
            return;
        }
        let mut guard = self.session();
        *guard = Some(session);
        self.unlocked.store(true, Ordering::Release);
        let records = self.coalescer().flush();
        self.write_refusals(guard.as_mut(), records);
    }

    /// Drops the opened session, key included (after `koi certmesh leave` destroyed the CA).
    pub fn forget_session(&self) {
        let mut guard = self.session();
        *guard = None;
        self.unlocked.store(false, Ordering::Release);
    }

    /// Fences this CA: a primary with a higher `term` exists, so the key is dropped and every
    /// signing path refuses from now on (failover, [`crate::demote`]).
    pub fn fence(&self, term: u64) {
        self.superseded.fetch_max(term, Ordering::AcqRel);
        self.forget_session();
    }

    /// Lifts a fence below `term`: this machine, demoted by an older term, took over again with
    /// `term` ([`crate::takeover`]), so the older term no longer supersedes it.
    pub fn lift_fence_below(&self, term: u64) {
        let _ = self
            .superseded
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t > 0 && t < term).then_some(0)
            });
    }

    /// The higher term this CA was fenced by, if any.
    pub fn superseded_by(&self) -> Option<u64> {
        Some(self.superseded.load(Ordering::Acquire)).filter(|t| *t > 0)
    }

    /// Refuses when fenced (checked before every signature).
    pub fn check_term(&self) -> Result<(), MethodError> {
        match self.superseded_by() {
            Some(term) => Err(error::fail(
                format!(
                    "This CA was superseded: a standby took over as primary with term {term}, so \
                     this machine signs nothing and becomes a standby."
                ),
                "Run `koi certmesh status` here to see the new primary; members already follow it.",
            )),
            None => Ok(()),
        }
    }

    /// Lets go of the writer lock held for the process's life (a demoted CA).
    pub fn release_writer(&self) {
        *self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Runs `f` with the unlocked session, or refuses with the locked message (or the
    /// superseded one, [`Self::check_term`]).
    pub fn with_session<T>(
        &self,
        f: impl FnOnce(&mut CaSession) -> Result<T, MethodError>,
    ) -> Result<T, MethodError> {
        self.check_term()?;
        match self.session().as_mut() {
            Some(s) => f(s),
            None => Err(MethodError::new(error::LOCKED_MESSAGE)),
        }
    }

    fn coalescer(&self) -> MutexGuard<'_, Coalescer> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a refusal through the coalescer ([`crate::refusals`]): what it lets through is
    /// signed into the log when unlocked, pending when locked.
    pub(crate) fn record_refusal(&self, session: Option<&mut CaSession>, refused: &Refused<'_>) {
        let now = OffsetDateTime::now_utc();
        let records = self.coalescer().admit(refused, now);
        self.write_refusals(session, records);
    }

    /// Writes the counted refusals not yet in the log (before `log` reads it, at unlock, at
    /// shutdown, and periodically from the background task). Blocking when there are any.
    pub fn flush_refusals(&self) {
        if !self.coalescer().has_counts() {
            return;
        }
        let mut guard = self.session();
        let records = self.coalescer().flush();
        self.write_refusals(guard.as_mut(), records);
    }

    fn write_refusals(&self, session: Option<&mut CaSession>, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let outcome = match session {
            Some(s) => records
                .into_iter()
                .try_for_each(|r| s.audit(ENROLLMENT_REFUSED, &r.actor, r.details))
                .and_then(|()| {
                    let mut roster = Roster::load(&self.layout.roster()).map_err(error::core)?;
                    s.save_roster(&self.layout, &mut roster)
                }),
            None => records.into_iter().try_for_each(|r| {
                let reason = r.details["reason"].as_str().unwrap_or("").to_owned();
                match crate::pending::append_pending(&self.layout, &r.actor, r.details) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        let reason = crate::refusals::static_reason(&reason);
                        self.coalescer().unstored(reason, OffsetDateTime::now_utc());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }),
        };
        if let Err(e) = outcome {
            tracing::error!(
                "could not record a refusal in the audit log: {}",
                e.message()
            );
        }
    }

    /// Handles `POST /v1/certmesh/join`. Checks run cheapest and least secret first: lockout,
    /// enrollment window, host name, scope of the names, CSR signature — all before the code is
    /// evaluated, so a malformed request never burns a valid code. Every refusal is audited.
    pub fn enroll(&self, req: &JoinRequest, peer: IpAddr) -> Result<JoinResponse, Refusal> {
        let mut guard = self.session();
        let result = self.enroll_locked(guard.as_mut(), req, peer);
        if let Err(refusal) = &result {
            let detail = refusal.to_string();
            let refused = Refused {
                peer,
                reason: refusal.reason(),
                detail: &detail,
                hostname: &req.hostname,
                operator: req.operator.as_deref(),
            };
            self.record_refusal(guard.as_mut(), &refused);
        }
        result
    }

    fn enroll_locked(
        &self,
        session: Option<&mut CaSession>,
        req: &JoinRequest,
        peer: IpAddr,
    ) -> Result<JoinResponse, Refusal> {
        if !self.layout.is_ca() {
            return Err(Refusal::NotCa);
        }
        let Some(session) = session else {
            return Err(Refusal::Locked);
        };
        let now = OffsetDateTime::now_utc();
        let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        if let Some(until) = session.guard.state().locked_until.filter(|u| *u > unix) {
            return Err(Refusal::LockedOut {
                seconds: until - unix,
            });
        }
        let mut roster =
            Roster::load(&self.layout.roster()).map_err(|e| Refusal::Internal(e.to_string()))?;
        if !roster.mesh.enrollment.is_open(now) {
            return Err(Refusal::EnrollmentClosed);
        }
        crate::names::check_hostname(&req.hostname).map_err(Refusal::BadRequest)?;
        if let Some(existing) = roster.member(&req.hostname)
            && existing.role != Role::Member
        {
            return Err(Refusal::NotPermitted(format!(
                "The name {} already belongs to this mesh's {} certificate; a joining machine cannot take it over. Give the machine another host name.",
                req.hostname,
                crate::wire::serde_name(&existing.role)
            )));
        }
        let (leaf, mut dropped) = crate::certify::leaf(
            &session.unlocked,
            &roster,
            &req.hostname,
            &req.extra_names,
            &req.ip_addresses,
            &req.csr_pem,
        )?;

        let outcome = session.guard.verify(&req.code, unix);
        crate::totp_state::save(&self.layout, session.guard.state())?;
        match outcome {
            TotpOutcome::Accepted { .. } => {}
            TotpOutcome::Rejected {
                reason, remaining, ..
            } => {
                return Err(Refusal::BadCode(format!(
                    "{}; {remaining} attempt(s) left before enrollment locks for 5 minutes",
                    describe(reason)
                )));
            }
            TotpOutcome::LockedOut { reason, .. } => {
                return Err(Refusal::BadCode(format!(
                    "{}; that was the third failure in a row, so enrollment is now locked for 5 minutes",
                    describe(reason)
                )));
            }
            TotpOutcome::Locked { until } => {
                return Err(Refusal::LockedOut {
                    seconds: until.saturating_sub(unix),
                });
            }
        }
        // Ownership is checked only for a caller holding a valid code, so the refusal (which
        // names the holder) tells nothing about the roster to a client without one.
        let issued = crate::certify::sign(
            &session.unlocked,
            &roster,
            leaf,
            &mut dropped,
            &req.hostname,
            &req.csr_pem,
            now,
        )?;
        let replaced = roster.member(&req.hostname).map(|m| m.serial.clone());
        let member =
            Member::from_issued(&req.hostname, &issued, Role::Member, req.operator.clone());
        session
            .audit(
                koi_certmesh_core::audit::events::MEMBER_ENROLLED,
                req.operator.as_deref().unwrap_or(&req.hostname),
                json!({
                    "hostname": req.hostname,
                    "serial": issued.serial_hex,
                    "fingerprint": issued.fingerprint,
                    "dns_names": issued.dns_names,
                    "ip_addresses": issued.ip_addresses,
                    "expires_at": crate::names::rfc3339(issued.not_after),
                    "peer": peer.to_string(),
                    "operator": req.operator,
                    "replaced_serial": replaced,
                }),
            )
            .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
        roster.upsert(member);
        session
            .save_roster(&self.layout, &mut roster)
            .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
        Ok(JoinResponse::new(&req.hostname, issued, dropped, &roster))
    }
}

fn describe(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Malformed => "it is not six digits",
        RejectReason::WrongCode => "it does not match the current code",
        RejectReason::Replayed => "it was already used (each code works once)",
    }
}
