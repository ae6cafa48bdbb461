//! The primary's side of the standby CA (issue 11 item 6), two routes over mutual TLS:
//!
//! | Route | Who | What |
//! |---|---|---|
//! | `POST /v1/certmesh/promote` | a member (its current certificate) with a TOTP code | the CA key, TOTP secret, signed roster manifest and audit log, sealed to the member's one-transfer key ([`crate::transfer`]) |
//! | `GET /v1/certmesh/standby/roster` | a standby (its current certificate) | the roster manifest, signed by the CA now |
//! | `POST /v1/certmesh/standby/audit` | a standby | the audit log's lines from an offset ([`crate::standby_audit`]) |
//!
//! The caller is identified by its client certificate alone ([`crate::names_api::identify`]).
//! The code goes through the same guard as enrollment (replay, 3 failures → 5 min lockout,
//! `totp-state.json`); a wrong code is audited as `standby_refused`. On success the primary
//! audits `standby_promoted` (before copying the log, so the standby's copy carries it signed
//! by the CA), records the member as role `standby` and in `mesh.standbys`, then seals the
//! transfer. Nothing secret is logged: the log line names the host, the term and a short hash
//! of the transfer key.
//!
//! A manifest is `{kind, ca_fingerprint, primary, term, version, issued_at, roster}` signed by
//! the CA ([`koi_certmesh_core::standby::sign_manifest`]); `version` is the roster version
//! (the audit head's sequence number), which only grows. Signing needs the key: a locked
//! primary answers the locked message and the standby keeps its last manifest.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::body::Bytes;
use koi_certmesh_core::{Role, Roster, TotpOutcome};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::authority::{Authority, CaSession};
use crate::error::Refusal;
use crate::transfer::{self, Sealed};
use crate::wire::ErrorBody;

/// The promotion route.
pub const PROMOTE_PATH: &str = "/v1/certmesh/promote";
/// The standby's roster sync route.
pub const MANIFEST_PATH: &str = "/v1/certmesh/standby/roster";
/// Audit event: a member was promoted to standby (on the primary; carried in the standby's copy).
pub const STANDBY_PROMOTED: &str = "standby_promoted";
/// Audit event: a promotion refused after the caller was identified (wrong code, not allowed).
pub const STANDBY_REFUSED: &str = "standby_refused";

/// `POST /v1/certmesh/promote`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The current TOTP code (six digits).
    pub code: zeroize::Zeroizing<String>,
    /// The standby's one-transfer X25519 public key, base64.
    pub standby_key: String,
}

/// The answer to a promotion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteResponse {
    /// The primary's host name.
    pub primary: String,
    /// The term the standby is promoted in (bound into the transfer).
    pub term: u64,
    /// `pack([CA secrets, signed manifest JSON, audit log])`, sealed.
    pub sealed: Sealed,
}

/// A roster manifest and the CA's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// `{kind, ca_fingerprint, primary, term, version, issued_at, roster}`.
    pub manifest: Value,
    /// The CA's signature (DER, base64) over its canonical JSON.
    pub sig: String,
}

/// The roster version a roster reports (its audit head's sequence number).
pub fn version_of(roster: &Roster) -> u64 {
    roster.mesh.audit_head.as_ref().map_or(0, |h| h.seq)
}

/// Signs a manifest of `roster` now.
pub fn manifest_of(session: &CaSession, roster: &Roster) -> Result<SignedManifest, Refusal> {
    let body = json!({
        "kind": koi_certmesh_core::standby::MANIFEST_KIND,
        "ca_fingerprint": roster.mesh.ca_fingerprint,
        "primary": roster.mesh.primary,
        "term": roster.mesh.term,
        "version": version_of(roster),
        "issued_at": crate::names::rfc3339(time::OffsetDateTime::now_utc()),
        "roster": serde_json::to_value(roster).map_err(|e| Refusal::Internal(e.to_string()))?,
    });
    let sig = koi_certmesh_core::standby::sign_manifest(session.unlocked().ca(), &body)
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    Ok(SignedManifest {
        manifest: body,
        sig,
    })
}

/// Serves both routes: `(status, body)`. Signing and file work run on the blocking pool.
pub async fn handle(
    path: &str,
    bytes: Bytes,
    peer: IpAddr,
    client_cert: Option<Arc<CertificateDer<'static>>>,
    authority: Arc<Authority>,
    ctx: &koi_sdk::Context,
) -> (u16, Value) {
    let path = path.to_owned();
    let outcome = ctx
        .blocking("standby request", move || {
            let cert = client_cert.as_deref().map(|c| c.as_ref());
            Ok(if path == PROMOTE_PATH {
                promote(&bytes, peer, cert, &authority)
            } else if path == crate::partition::PATH {
                standby_host(&authority, cert, peer, &path)
                    .and_then(|host| crate::partition::receive(&authority, &host, &bytes))
            } else if path == crate::standby_audit::AUDIT_PATH {
                standby_host(&authority, cert, peer, &path).and_then(|_| {
                    let chunk = crate::standby_audit::serve(authority.layout(), &bytes)?;
                    serde_json::to_value(chunk).map_err(|e| Refusal::Internal(e.to_string()))
                })
            } else {
                manifest(peer, cert, &authority)
            })
        })
        .await;
    let refusal_answer = |r: &Refusal| {
        let body = ErrorBody {
            reason: r.reason().to_owned(),
            error: r.to_string(),
        };
        (r.status(), serde_json::to_value(body).unwrap_or_default())
    };
    match outcome {
        Ok(Ok(answer)) => (200, answer),
        Ok(Err(refusal)) => refusal_answer(&refusal),
        Err(e) => refusal_answer(&Refusal::Internal(e.message().to_owned())),
    }
}

/// The host of a presented certificate whose roster entry is a standby, or the refusal.
fn standby_host(
    authority: &Authority,
    client_cert: Option<&[u8]>,
    peer: IpAddr,
    path: &str,
) -> Result<String, Refusal> {
    let host = crate::names_api::identified(authority, client_cert, peer, path)?;
    let roster =
        Roster::load(&authority.layout().roster()).map_err(|e| Refusal::Internal(e.to_string()))?;
    let is_standby = roster
        .members
        .iter()
        .any(|m| m.hostname == host && m.role == Role::Standby);
    if !is_standby {
        return Err(Refusal::NotPermitted(format!(
            "{host} is not a standby of this mesh, so it gets no roster manifest or audit log. \
             Promote it with `koi certmesh promote` on {host}."
        )));
    }
    Ok(host)
}

fn audit_refused(
    authority: &Authority,
    session: &mut CaSession,
    host: &str,
    peer: IpAddr,
    why: &str,
) {
    let logged = session
        .audit(
            STANDBY_REFUSED,
            host,
            json!({"standby": host, "peer": peer.to_string(), "reason": why}),
        )
        .and_then(|()| {
            let layout = authority.layout();
            let mut roster = Roster::load(&layout.roster()).map_err(crate::error::core)?;
            session.save_roster(layout, &mut roster)
        });
    if let Err(e) = logged {
        tracing::error!("could not audit a refused promotion: {}", e.message());
    }
}

fn promote(
    bytes: &[u8],
    peer: IpAddr,
    client_cert: Option<&[u8]>,
    authority: &Authority,
) -> Result<Value, Refusal> {
    let host = crate::names_api::identified(authority, client_cert, peer, PROMOTE_PATH)?;
    let req: PromoteRequest = serde_json::from_slice(bytes).map_err(|e| {
        Refusal::BadRequest(format!(
            "The promotion request is not valid JSON of the expected shape: {e}."
        ))
    })?;
    let standby_key = B64
        .decode(req.standby_key.as_bytes())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            Refusal::BadRequest("standby_key must be a base64 X25519 public key (32 bytes).".into())
        })?;
    let layout = authority.layout();
    let log_len = std::fs::metadata(layout.audit()).map_or(0, |m| m.len());
    if log_len > (transfer::MAX_TRANSFER_BYTES - 4 * 1024 * 1024) as u64 {
        return Err(Refusal::Internal(format!(
            "the audit log is {log_len} bytes, too large to transfer in one promotion"
        )));
    }
    let mut guard = authority.session();
    let Some(session) = guard.as_mut() else {
        return Err(Refusal::Locked);
    };
    let now = time::OffsetDateTime::now_utc();
    let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    if let Some(until) = session
        .guard_mut()
        .state()
        .locked_until
        .filter(|u| *u > unix)
    {
        return Err(Refusal::LockedOut {
            seconds: until - unix,
        });
    }
    let mut roster =
        Roster::load(&layout.roster()).map_err(|e| Refusal::Internal(e.to_string()))?;
    let Some(entry) = roster.members.iter().find(|m| m.hostname == host).cloned() else {
        return Err(Refusal::Internal(format!("{host} left the roster")));
    };
    if entry.role == Role::Primary {
        return Err(Refusal::NotPermitted(format!(
            "{host} is this mesh's primary CA; run `koi certmesh promote` on a member."
        )));
    }
    let outcome = session.guard_mut().verify(&req.code, unix);
    crate::totp_state::save(layout, session.guard_mut().state())?;
    let refused = match outcome {
        TotpOutcome::Accepted { .. } => None,
        TotpOutcome::Rejected { remaining, .. } => Some(format!(
            "it is not the current code, or was already used; {remaining} attempt(s) left before \
             codes lock for 5 minutes"
        )),
        TotpOutcome::LockedOut { .. } => Some(
            "it is not the current code; that was the third failure in a row, so codes are now \
             locked for 5 minutes"
                .to_owned(),
        ),
        TotpOutcome::Locked { until } => {
            return Err(Refusal::LockedOut {
                seconds: until.saturating_sub(unix),
            });
        }
    };
    if let Some(why) = refused {
        audit_refused(authority, session, &host, peer, "bad_code");
        return Err(Refusal::BadCode(why));
    }
    let term = roster.mesh.term;
    let key_hash: String = Sha256::digest(&standby_key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    session
        .audit(
            STANDBY_PROMOTED,
            &host,
            json!({
                "standby": host,
                "serial": entry.serial,
                "term": term,
                "peer": peer.to_string(),
                "transfer_key_sha256": key_hash,
            }),
        )
        .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
    if let Some(m) = roster.members.iter_mut().find(|m| m.hostname == host) {
        m.role = Role::Standby;
    }
    if !roster.mesh.standbys.contains(&host) {
        roster.mesh.standbys.push(host.clone());
    }
    // Standbys that are no longer (joined again as members, entry gone) leave the list.
    crate::takeover::prune_standbys(&mut roster);
    session
        .save_roster(layout, &mut roster)
        .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
    let signed = manifest_of(session, &roster)?;
    let manifest_bytes =
        serde_json::to_vec(&signed).map_err(|e| Refusal::Internal(e.to_string()))?;
    let log = std::fs::read(layout.audit()).map_err(|e| Refusal::Internal(e.to_string()))?;
    let secrets = koi_certmesh_core::standby::export_secrets(session.unlocked())
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    let plain = transfer::pack(&[&secrets, &manifest_bytes, &log]).map_err(Refusal::Internal)?;
    let sealed = transfer::seal_to(
        &standby_key,
        &roster.mesh.ca_fingerprint,
        &host,
        term,
        &plain,
    )
    .map_err(Refusal::Internal)?;
    tracing::info!(
        "certmesh: {host} promoted to standby in term {term}; the CA key travelled sealed to its \
         transfer key {key_hash}…"
    );
    let answer = PromoteResponse {
        primary: roster.mesh.primary.clone(),
        term,
        sealed,
    };
    serde_json::to_value(answer).map_err(|e| Refusal::Internal(e.to_string()))
}

fn manifest(
    peer: IpAddr,
    client_cert: Option<&[u8]>,
    authority: &Authority,
) -> Result<Value, Refusal> {
    standby_host(authority, client_cert, peer, MANIFEST_PATH)?;
    let roster =
        Roster::load(&authority.layout().roster()).map_err(|e| Refusal::Internal(e.to_string()))?;
    let guard = authority.session();
    let Some(session) = guard.as_ref() else {
        return Err(Refusal::Locked);
    };
    let signed = manifest_of(session, &roster)?;
    serde_json::to_value(signed).map_err(|e| Refusal::Internal(e.to_string()))
}
