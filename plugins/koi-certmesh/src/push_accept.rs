//! The member's side of a renewal pushed by the CA (issue 11 item 2): what it checks before it
//! installs a certificate it did not ask for, and the record `status` shows.
//!
//! A push (`POST /v1/certmesh/push`, served by [`crate::push_listen`]) carries a certificate and
//! the fingerprint of the certificate it replaces. It is installed only if, in this order:
//! 1. the sender presented a client certificate issued by this mesh's pinned root, valid now
//!    (`not_from_this_mesh`, 401);
//! 2. the pushed certificate is signed by the pinned root and valid now (`foreign_certificate`,
//!    `not_valid`, 403);
//! 3. it replaces the certificate this machine holds now and expires later than it (`stale`,
//!    409) — a push signed before a pull renewal, or an old certificate replayed, is refused;
//! 4. its public key is this machine's own key (`other_key`, 403);
//! 5. every DNS name and address in it is one this machine's current certificate holds
//!    (`names_not_held`, 403).
//!
//! The authority is the CA's signature on the certificate, not the connection: any sender can
//! only hand over a certificate the CA signed for this machine's key and names, newer than the
//! one it holds. Accepted, the certificate is installed exactly as a pulled renewal is — with the
//! key already on disk, through the journal of [`crate::renew_files`], under the renewal lock and
//! the writer lock — then recorded ([`crate::schedule::record`], trigger `push`), published as
//! `certmesh.cert.renewed` and the reload hook run ([`crate::renew::after_renewal`]). A refusal
//! is answered with its reason, logged, and kept in `certmesh/push.json` (the last
//! [`MAX_REFUSALS_KEPT`]), which `status` shows under `details.push`.

use std::net::IpAddr;

use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use rcgen::KeyPair;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::app::App;
use crate::client_auth::MemberCert;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::refusals::bounded;
use crate::renew::RenewResult;

/// What `renewal.json` records as the trigger of a pushed renewal.
pub const TRIGGER: &str = "push";
/// Refused pushes kept in `push.json`.
pub const MAX_REFUSALS_KEPT: usize = 16;
/// Largest certificate accepted in a push (PEM characters).
pub const MAX_CERT_PEM: usize = 16 * 1024;

/// `POST /v1/certmesh/push`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The renewed certificate (PEM), for this machine's current key.
    pub cert_pem: String,
    /// SHA-256 (hex) of the certificate it replaces: the one this machine presented to the CA on
    /// the same connection.
    pub replaces: String,
}

/// The answer to an accepted push.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushAnswer {
    /// The serial now installed.
    pub serial: String,
    /// Its expiry (RFC 3339).
    pub not_after: String,
}

/// Why a push was refused: HTTP status, reason code, explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRefusal {
    /// HTTP status.
    pub status: u16,
    /// Short machine-readable reason.
    pub reason: &'static str,
    /// The explanation (names the thing, the cause, what to do).
    pub error: String,
}

fn refuse(status: u16, reason: &'static str, error: impl Into<String>) -> PushRefusal {
    PushRefusal {
        status,
        reason,
        error: error.into(),
    }
}

/// One refused push, as kept in `push.json`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RefusedPush {
    /// When (RFC 3339).
    pub at: String,
    /// Who sent it.
    pub peer: String,
    /// The reason code.
    pub reason: String,
    /// The explanation (bounded).
    pub error: String,
}

/// The member's push record (`certmesh/push.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct PushRecord {
    /// Pushes accepted since the record was made.
    pub accepted: u64,
    /// When the last one was accepted (RFC 3339).
    pub last_accepted_at: Option<String>,
    /// Pushes refused since the record was made.
    pub refused: u64,
    /// The last refusals, newest last.
    pub last_refused: Vec<RefusedPush>,
}

fn store(layout: &Layout) -> JsonFile<PushRecord> {
    JsonFile::new(layout.dir().join("push.json"))
}

/// Changes the push record (a failure to write it is logged, never fatal). Tried twice: a
/// writer taking the writer lock sweeps temporary files in the directory, ours included.
pub fn update(layout: &Layout, f: impl FnOnce(&mut PushRecord)) {
    let store = store(layout);
    let mut record = store.load_or_default().unwrap_or_default();
    f(&mut record);
    if let Err(e) = store.save(&record).or_else(|_| store.save(&record)) {
        tracing::warn!("could not record the push state: {e}");
    }
}

/// The push part of a member's `status`: the endpoint (in this process, [`crate::push_listen`])
/// and the record.
pub fn status_details(layout: &Layout) -> Value {
    let (listening, listen_error) = crate::push_listen::listen_state();
    let mut details = json!(store(layout).load_or_default().unwrap_or_default());
    details["listening"] = json!(listening);
    details["listen_error"] = json!(listen_error);
    details
}

fn now_text() -> String {
    crate::names::rfc3339(OffsetDateTime::now_utc())
}

/// Serves one push: checks it, installs it, and runs what a pulled renewal runs afterwards.
pub async fn accept(
    ctx: &Context,
    peer: IpAddr,
    client_cert: Option<Vec<u8>>,
    request: PushRequest,
) -> Result<PushAnswer, PushRefusal> {
    let internal = |e: MethodError| refuse(500, "internal", e.message().to_owned());
    let layout = App::of(ctx).map_err(internal)?.authority().layout().clone();
    let outcome = async {
        let _one = crate::renew::RENEWING.lock().await;
        let authority = App::of(ctx).map_err(internal)?.authority();
        // Checking, installing and recording write files (fsync): off the async workers.
        ctx.blocking("check and install a pushed certificate", move || {
            let _writer = authority.writer_for_command()?;
            let layout = authority.layout();
            let outcome = check_and_install(layout, client_cert.as_deref(), &request);
            record(layout, peer, &outcome);
            Ok(outcome)
        })
        .await
        .map_err(internal)?
    }
    .await;
    match outcome {
        Ok(result) => {
            tracing::info!(%peer, old = %result.old_serial, new = %result.serial, "certificate renewed by a push from the CA");
            crate::renew::after_renewal(ctx, &layout, &result).await;
            Ok(PushAnswer {
                serial: result.serial,
                not_after: result.not_after,
            })
        }
        Err(refusal) => {
            tracing::warn!(%peer, reason = refusal.reason, "refused a pushed certificate: {}", refusal.error);
            Err(refusal)
        }
    }
}

/// Records an outcome: `renewal.json` (as a pulled renewal is) and `push.json`. Blocking.
fn record(layout: &Layout, peer: IpAddr, outcome: &Result<RenewResult, PushRefusal>) {
    match outcome {
        Ok(result) => {
            crate::schedule::record(layout, TRIGGER, &Ok(result.clone()));
            update(layout, |r| {
                r.accepted = r.accepted.saturating_add(1);
                r.last_accepted_at = Some(now_text());
            });
        }
        Err(refusal) => update(layout, |r| {
            r.refused = r.refused.saturating_add(1);
            r.last_refused.push(RefusedPush {
                at: now_text(),
                peer: peer.to_string(),
                reason: refusal.reason.to_owned(),
                error: bounded(&refusal.error, 300),
            });
            let excess = r.last_refused.len().saturating_sub(MAX_REFUSALS_KEPT);
            r.last_refused.drain(..excess);
        }),
    }
}

/// The checks of the module docs, then the journalled install. Blocking.
pub fn check_and_install(
    layout: &Layout,
    client_cert: Option<&[u8]>,
    req: &PushRequest,
) -> Result<RenewResult, PushRefusal> {
    let internal = |e: MethodError| refuse(500, "internal", e.message().to_owned());
    let membership = Membership::load(layout)
        .map_err(internal)?
        .filter(|m| m.role == "member")
        .ok_or_else(|| {
            refuse(
                404,
                "not_a_member",
                "This machine is not a member of a certmesh mesh, so it takes no pushed \
                 certificate. Join one with `koi certmesh join`.",
            )
        })?;
    crate::renew_files::finish(layout, &membership.hostname).map_err(internal)?;
    let files = CertFiles::at(layout, &membership.hostname);
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| {
            refuse(
                500,
                "internal",
                format!(
                    "Cannot read {path}: {e}. Run `koi certmesh renew --now` on this machine, or \
                     join again with `koi certmesh join`."
                ),
            )
        })
    };
    let ca_pem = read(&files.ca)?;
    let root = crate::x509::der(&ca_pem)
        .filter(|d| koi_certmesh_core::fingerprint_sha256(d) == membership.ca_fingerprint)
        .ok_or_else(|| {
            refuse(
                500,
                "internal",
                format!(
                    "{} is not the mesh root pinned at join ({}). Join again with `koi certmesh \
                     join --fingerprint {}`.",
                    files.ca, membership.ca_fingerprint, membership.ca_fingerprint
                ),
            )
        })?;
    let now = OffsetDateTime::now_utc();
    let sender = client_cert
        .ok_or_else(|| "no client certificate was presented".to_owned())
        .and_then(|der| MemberCert::verify(der, &root))
        .and_then(|c| {
            c.valid_at(now)
                .then_some(c)
                .ok_or_else(|| "the client certificate is expired or not yet valid".to_owned())
        });
    if let Err(why) = sender {
        return Err(refuse(
            401,
            "not_from_this_mesh",
            format!(
                "Refused push: {why}. Only this mesh's CA pushes renewed certificates here (mesh \
                 root {}).",
                membership.ca_fingerprint
            ),
        ));
    }
    if req.cert_pem.len() > MAX_CERT_PEM {
        return Err(refuse(
            400,
            "bad_request",
            format!("Refused push: the certificate is larger than {MAX_CERT_PEM} characters."),
        ));
    }
    let pushed_der = crate::x509::der(&req.cert_pem).ok_or_else(|| {
        refuse(
            400,
            "bad_request",
            "Refused push: cert_pem holds no PEM certificate.",
        )
    })?;
    let pushed = MemberCert::verify(&pushed_der, &root).map_err(|why| {
        refuse(
            403,
            "foreign_certificate",
            format!(
                "Refused push: {why} (this machine's pinned root is {}). Nothing was changed; \
                 the certificate in place stays.",
                membership.ca_fingerprint
            ),
        )
    })?;
    if !pushed.valid_at(now) {
        return Err(refuse(
            403,
            "not_valid",
            "Refused push: the certificate is not valid now (expired or not yet valid). Check \
             the clocks of the CA and this machine (`timedatectl`).",
        ));
    }
    let current_pem = read(&files.cert)?;
    let current_der = crate::x509::der(&current_pem).unwrap_or_default();
    let current_fp = koi_certmesh_core::fingerprint_sha256(&current_der);
    if req.replaces != current_fp {
        return Err(refuse(
            409,
            "stale",
            format!(
                "Refused push: it replaces certificate {}, but this machine now holds {} (it \
                 renewed meanwhile). The CA pushes again from the certificate in place if it is \
                 still due.",
                bounded(&req.replaces, 64),
                current_fp
            ),
        ));
    }
    let current = MemberCert::verify(&current_der, &root).map_err(|e| {
        refuse(
            500,
            "internal",
            format!(
                "This machine's own certificate {} does not verify ({e}). Run `koi certmesh \
                 renew --now`.",
                files.cert
            ),
        )
    })?;
    if pushed.not_after <= current.not_after {
        return Err(refuse(
            409,
            "stale",
            format!(
                "Refused push: the certificate (serial {}) does not expire later than the one in \
                 place (serial {}); an older certificate is never put back.",
                pushed.serial, current.serial
            ),
        ));
    }
    let key_pem = Zeroizing::new(read(&files.key)?);
    let own_key = KeyPair::from_pem(&key_pem)
        .map(|k| k.public_key_raw().to_vec())
        .map_err(|e| {
            refuse(
                500,
                "internal",
                format!(
                    "Cannot load this machine's key {}: {e}. Run `koi certmesh renew --now`.",
                    files.key
                ),
            )
        })?;
    if crate::client_auth::public_key_of(&pushed_der).as_deref() != Some(own_key.as_slice()) {
        return Err(refuse(
            403,
            "other_key",
            "Refused push: the certificate is for another public key than this machine's own \
             key; installing it would break the pair. Nothing was changed.",
        ));
    }
    let (dns, ips) = sans(&pushed_der);
    let held_dns: Vec<String> = membership
        .dns_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let held_ips: Vec<IpAddr> = membership
        .ip_addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let foreign: Vec<String> = dns
        .iter()
        .filter(|n| !held_dns.contains(&n.to_ascii_lowercase()))
        .cloned()
        .chain(
            ips.iter()
                .filter(|ip| !held_ips.contains(ip))
                .map(IpAddr::to_string),
        )
        .take(5)
        .map(|n| bounded(&n, 80))
        .collect();
    if !foreign.is_empty() || dns.is_empty() {
        return Err(refuse(
            403,
            "names_not_held",
            format!(
                "Refused push: it names {} that this machine's certificate does not hold (it \
                 holds {}). New names come with a renewal this machine asks for: `koi certmesh \
                 renew --now`.",
                if foreign.is_empty() {
                    "no DNS name, which".to_owned()
                } else {
                    foreign.join(", ")
                },
                membership
                    .dns_names
                    .iter()
                    .chain(&membership.ip_addresses)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let not_after = crate::names::rfc3339(pushed.not_after);
    let mut updated = membership.clone();
    updated.serial.clone_from(&pushed.serial);
    updated.expires_at.clone_from(&not_after);
    updated.dns_names.clone_from(&dns);
    updated.ip_addresses = ips.iter().map(IpAddr::to_string).collect();
    crate::renew_files::install(layout, &updated, &req.cert_pem, &key_pem, &ca_pem)
        .map_err(internal)?;
    Ok(RenewResult {
        renewed: true,
        old_serial: membership.serial,
        serial: pushed.serial,
        old_not_after: membership.expires_at,
        not_after,
        key_changed: false,
        names: updated
            .dns_names
            .iter()
            .chain(&updated.ip_addresses)
            .cloned()
            .collect(),
        next_renewal_at: crate::schedule::due_at(&files).map(crate::schedule::rfc3339),
        hook: None,
        files,
    })
}

/// The DNS names and addresses of a DER certificate's subjectAltName.
fn sans(der: &[u8]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return (dns, ips);
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*bytes) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*bytes) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}
