//! `POST /v1/certmesh/renew` on the CA: a member renews its certificate. The identity comes from
//! the TLS client certificate alone — it must be signed by this mesh's root and be the current
//! certificate of a roster entry, or the one that entry's last renewal replaced (found by its
//! SHA-256) — so the body carries no host name and
//! cannot claim another identity. The body holds a CSR (a fresh key by default, the old one with
//! `--keep-key`), the names the member asks for now, and its reload hook (mirrored in the roster).
//!
//! A renewal whose answer was lost (the member killed between the CA's signature and its own
//! install, or a dropped connection) is retried with the same certificate: the entry remembers
//! the certificate it was renewed from (`previous_fingerprint`), which also renews.
//!
//! The new certificate goes through the same scope and ownership checks as enrollment
//! ([`crate::certify`]). An expired certificate is refused with the way back (`koi certmesh
//! join`) unless the mesh was created with `--allow-expired-renewal`; even then it must still be
//! the entry's current certificate, signed by the root, expired at most
//! [`MAX_EXPIRED_RENEWAL_DAYS`] days. Each renewal is audited as [`CERTIFICATE_RENEWED`]; each
//! refusal goes through the bounded refusal records ([`crate::refusals`]).

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Bytes;
use koi_certmesh_core::{Member, MemberStatus, Role, Roster};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::authority::{Authority, CaSession};
use crate::client_auth::MemberCert;
use crate::error::Refusal;
use crate::refusals::{Refused, bounded};
use crate::renew_batch::Job;
use crate::wire::{ErrorBody, JoinResponse};

/// Audit event: a member's certificate renewed.
pub const CERTIFICATE_RENEWED: &str = "certificate_renewed";
/// With `--allow-expired-renewal`, how long after expiry a certificate may still be renewed.
pub const MAX_EXPIRED_RENEWAL_DAYS: i64 = 30;
/// Longest reload hook command mirrored into the roster (characters, after escaping).
pub const MAX_HOOK_CHARS: usize = 1024;

/// `POST /v1/certmesh/renew`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 request (PEM) signed by the key the new certificate is for.
    pub csr_pem: String,
    /// DNS names asked for besides the automatic ones (refused if outside the scope or held by
    /// another entry).
    #[serde(default)]
    pub extra_names: Vec<String>,
    /// The member's private LAN addresses now.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    /// The member's reload hook, mirrored into its roster entry.
    #[serde(default)]
    pub reload_hook: Option<String>,
    /// The outcome of the member's last hook run (`exit 0`, `timed out`, …), for the audit entry.
    #[serde(default)]
    pub last_hook: Option<String>,
}

/// Serves one renewal: `(status, body)`.
pub async fn handle(
    bytes: Bytes,
    peer: IpAddr,
    client_cert: Option<Arc<CertificateDer<'static>>>,
    authority: Arc<Authority>,
    ctx: &koi_sdk::Context,
) -> (u16, Value) {
    let refusal_body = |r: &Refusal| {
        let body = ErrorBody {
            reason: r.reason().to_owned(),
            error: r.to_string(),
        };
        (r.status(), serde_json::to_value(body).unwrap_or_default())
    };
    let request: RenewRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refusal_body(&Refusal::BadRequest(format!(
                "The renewal request is not valid JSON of the expected shape: {e}."
            )));
        }
    };
    // Checking, signing and writing the roster and audit log: off the async workers, on the
    // renewal worker that commits concurrent renewals together (crate::renew_batch).
    let outcome = match crate::renew_batch::submit(&authority, request, peer, client_cert) {
        Ok(answer) => answer.await.unwrap_or_else(|_| {
            Err(Refusal::Internal(
                "the renewal worker stopped before answering (the plugin is shutting down); \
                 the member retries at its next check"
                    .into(),
            ))
        }),
        // No worker (its thread could not start): this renewal alone, on the blocking pool.
        Err(job) => {
            let Job {
                request,
                client_cert,
                ..
            } = *job;
            ctx.blocking("renewal", move || {
                Ok(authority.renew(&request, peer, client_cert.as_deref().map(|c| c.as_ref())))
            })
            .await
            .unwrap_or_else(|e| Err(Refusal::Internal(e.message().to_owned())))
        }
    };
    match outcome {
        Ok(answer) => (200, serde_json::to_value(answer).unwrap_or_default()),
        Err(refusal) => refusal_body(&refusal),
    }
}

impl Authority {
    /// Renews the certificate `client_cert` (DER) belongs to; every refusal is recorded.
    pub fn renew(
        &self,
        req: &RenewRequest,
        peer: IpAddr,
        client_cert: Option<&[u8]>,
    ) -> Result<JoinResponse, Refusal> {
        self.renew_batch(&[(req, peer, client_cert)])
            .pop()
            .unwrap_or_else(|| Err(Refusal::Internal("no renewal outcome".into())))
    }

    /// Renews several members under one session lock, in order, with ONE audit fsync and ONE
    /// roster save for all (group commit): each renewal is checked against the roster as the
    /// ones before it left it, and its audit entry is appended as it is signed; then the log is
    /// fsynced once and the roster saved once (written and fsynced), and only then are the
    /// answers returned — so no answer leaves before its audit entry and roster are durable. If
    /// the fsync or the save fails, every renewal of the batch is refused (entries that reached
    /// the log stay in it, as when a single save fails). Refusals are
    /// recorded after the batch. One outcome per request, in order.
    pub fn renew_batch(
        &self,
        jobs: &[(&RenewRequest, IpAddr, Option<&[u8]>)],
    ) -> Vec<Result<JoinResponse, Refusal>> {
        let mut guard = self.session();
        let mut who: Vec<String> = jobs
            .iter()
            .map(|(_, _, cert)| {
                String::from(if cert.is_some() {
                    "(unverified certificate)"
                } else {
                    "(no certificate)"
                })
            })
            .collect();
        let results = renew_batch_locked(self, guard.as_mut(), jobs, &mut who);
        for ((result, (_, peer, _)), who) in results.iter().zip(jobs).zip(&who) {
            if let Err(refusal) = result {
                let detail = format!("renewal: {refusal}");
                let refused = Refused {
                    peer: *peer,
                    reason: refusal.reason(),
                    detail: &detail,
                    hostname: who,
                    operator: None,
                };
                self.record_refusal(guard.as_mut(), &refused);
            }
        }
        results
    }
}

fn renew_batch_locked(
    authority: &Authority,
    session: Option<&mut CaSession>,
    jobs: &[(&RenewRequest, IpAddr, Option<&[u8]>)],
    who: &mut [String],
) -> Vec<Result<JoinResponse, Refusal>> {
    let all = |r: Refusal| jobs.iter().map(|_| Err(r.clone())).collect();
    let layout = authority.layout();
    if !layout.is_ca() {
        return all(Refusal::NotCa);
    }
    let Some(session) = session else {
        return all(Refusal::Locked);
    };
    let mut roster = match Roster::load(&layout.roster()) {
        Ok(r) => r,
        Err(e) => return all(Refusal::Internal(e.to_string())),
    };
    let signed: Vec<Result<Signed, Refusal>> = jobs
        .iter()
        .zip(who.iter_mut())
        .map(|((req, peer, cert), who)| renew_locked(session, &mut roster, req, *peer, *cert, who))
        .collect();
    // Group commit: every audit entry of the batch fsynced at once, then the roster saved once;
    // only then does any answer leave.
    if signed.iter().any(Result::is_ok)
        && let Err(e) = session
            .sync_audit()
            .and_then(|()| session.save_roster(layout, &mut roster))
    {
        let e = Refusal::Internal(e.message().to_owned());
        return signed.into_iter().map(|s| s.and(Err(e.clone()))).collect();
    }
    signed
        .into_iter()
        .map(|s| s.map(|s| JoinResponse::new(&s.hostname, s.issued, s.dropped, &roster)))
        .collect()
}

/// One renewal signed, audited and in the (unsaved) roster.
struct Signed {
    hostname: String,
    issued: koi_certmesh_core::IssuedCert,
    dropped: Vec<String>,
}

fn renew_locked(
    session: &mut CaSession,
    roster: &mut Roster,
    req: &RenewRequest,
    peer: IpAddr,
    client_cert: Option<&[u8]>,
    who: &mut String,
) -> Result<Signed, Refusal> {
    let Some(der) = client_cert else {
        return Err(Refusal::NotMember(
            "Renewal needs the member's current certificate of this mesh as the TLS client \
             certificate; run `koi certmesh renew` on the member, which presents it."
                .into(),
        ));
    };
    let presented = MemberCert::verify(der, session.unlocked().ca().cert_der()).map_err(|e| {
        Refusal::NotMember(format!(
            "Refused renewal: {e}. Only this mesh's certificates renew here; to move a machine \
             into this mesh, run `koi certmesh leave` and then `koi certmesh join` on it."
        ))
    })?;
    // The current certificate, or the one it was renewed from while the member may not have
    // installed the renewal yet (its answer lost to a crash or a dropped connection).
    let entry = roster
        .members
        .iter()
        .find(|m| {
            m.fingerprint == presented.fingerprint
                || m.previous_fingerprint.as_deref() == Some(presented.fingerprint.as_str())
        })
        .cloned()
        .ok_or_else(|| {
            Refusal::NotMember(format!(
                "Refused renewal: the certificate with serial {} is neither the current \
                 certificate of an entry of this mesh nor the one its last renewal replaced (a \
                 join or two renewals replaced it, or the entry was removed). Join again on that \
                 machine: `koi certmesh join` with a fresh code.",
                presented.serial
            ))
        })?;
    who.clone_from(&entry.hostname);
    // A standby (crate::standby) renews as a member and keeps its role.
    if !matches!(entry.role, Role::Member | Role::Standby) || entry.status != MemberStatus::Active {
        return Err(Refusal::NotPermitted(format!(
            "Refused renewal: {} is a {} entry in status {}; only active members renew over \
             the API (a device is re-issued with `koi certmesh issue` on the CA).",
            entry.hostname,
            crate::wire::serde_name(&entry.role),
            crate::wire::serde_name(&entry.status)
        )));
    }
    let now = crate::clock::now_utc();
    let expired = now > presented.not_after;
    if expired {
        let expired_at = crate::names::rfc3339(presented.not_after);
        let rejoin = format!(
            "On {}, run `koi certmesh join --ca ADDR --fingerprint {}` again with a fresh code \
             from the CA's operator (`koi certmesh open-enrollment` on the CA if enrollment is \
             closed).",
            entry.hostname, roster.mesh.ca_fingerprint
        );
        if !roster.mesh.allow_expired_renewal {
            return Err(Refusal::Expired(format!(
                "Refused renewal of {}: its certificate (serial {}) expired at {expired_at}, and \
                 this mesh does not renew expired certificates (it was not created with \
                 --allow-expired-renewal). {rejoin}",
                entry.hostname, presented.serial
            )));
        }
        if now - presented.not_after > time::Duration::days(MAX_EXPIRED_RENEWAL_DAYS) {
            return Err(Refusal::Expired(format!(
                "Refused renewal of {}: its certificate (serial {}) expired at {expired_at}, \
                 more than {MAX_EXPIRED_RENEWAL_DAYS} days ago, the limit even on a mesh that \
                 renews expired certificates. {rejoin}",
                entry.hostname, presented.serial
            )));
        }
    }
    let (mut leaf, mut dropped) = crate::certify::leaf(
        session.unlocked(),
        roster,
        &entry.hostname,
        &req.extra_names,
        &req.ip_addresses,
        &req.csr_pem,
    )?;
    // Names other plugins asked for (crate::request_names), checked again now.
    let pending = crate::pending_names::apply_pending(
        session.unlocked().ca().scope(),
        roster,
        &entry.hostname,
        &mut leaf,
    );
    let issued = crate::certify::sign(
        session.unlocked(),
        roster,
        leaf,
        &mut dropped,
        &entry.hostname,
        &req.csr_pem,
        time::OffsetDateTime::now_utc(),
    )?;
    let issued_names = issued.dns_names.clone();
    let old_key = crate::client_auth::public_key_of(der);
    let key_changed = old_key.as_deref() != crate::x509::public_key(&issued.cert_pem).as_deref();
    let hook = req
        .reload_hook
        .as_deref()
        .map(|h| bounded(h, MAX_HOOK_CHARS));
    // Fsynced with the rest of the batch, before the roster is saved ([`renew_batch_locked`]).
    session
        .audit_unsynced(
            CERTIFICATE_RENEWED,
            &entry.hostname,
            json!({
                "hostname": entry.hostname,
                "old_serial": presented.serial,
                "serial": issued.serial_hex,
                "fingerprint": issued.fingerprint,
                "dns_names": issued.dns_names,
                "ip_addresses": issued.ip_addresses,
                "expires_at": crate::names::rfc3339(issued.not_after),
                "key_changed": key_changed,
                "expired_renewal": expired,
                "dropped_addresses": dropped,
                "peer": peer.to_string(),
                "reload_hook": hook,
                "last_hook": req.last_hook.as_deref().map(|h| bounded(h, 200)),
                "pending_names_added": pending.added,
                "pending_names_dropped": pending.dropped,
            }),
        )
        .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
    let mut member =
        Member::from_issued(&entry.hostname, &issued, entry.role, entry.operator.clone());
    member.reload_hook = hook;
    member.proxy_entries = entry.proxy_entries.clone();
    member.pending_names =
        crate::pending_names::still_pending(Some(&entry), &issued_names, &pending);
    // The member holds the certificate it authenticated with until it installs this one.
    member.previous_fingerprint = Some(presented.fingerprint.clone());
    roster.upsert(member);
    Ok(Signed {
        hostname: entry.hostname,
        issued,
        dropped,
    })
}
