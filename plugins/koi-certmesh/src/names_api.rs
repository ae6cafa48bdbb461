//! The routes through which a member's plugins reach the CA's roster, over mutual TLS:
//!
//! | Route | Body | What |
//! |---|---|---|
//! | `POST /v1/certmesh/names` | [`NamesRequest`] | names for the member's next certificate ([`crate::request_names`]) |
//! | `POST /v1/certmesh/proxy-entries` | [`ProxyEntriesRequest`] | the member's proxy entries ([`crate::proxy_entries`]) |
//!
//! Identity comes from the TLS client certificate alone ([`identify`]): it must be signed by
//! this mesh's root, inside its validity, and be the current certificate of an active member
//! entry (or the one its last renewal replaced, which the member holds until it installs the
//! new one). The host acted on is that entry's; the bodies carry no host name, so a member can
//! never act for another. Every refusal goes through the bounded refusal records.
//!
//! [`forward`] is the member's side: it sends one of these bodies with its current certificate
//! and the pinned root, as renewal does.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::Method;
use hyper::body::Bytes;
use koi_certmesh_core::{MemberStatus, Role, Roster};
use koi_sdk::MethodError;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authority::Authority;
use crate::client::{self, Answer, CaEndpoint};
use crate::client_auth::MemberCert;
use crate::error::{self, Refusal};
use crate::files::{CertFiles, Membership};
use crate::refusals::Refused;
use crate::tls::CaPin;
use crate::wire::ErrorBody;

/// The names route.
pub const NAMES_PATH: &str = "/v1/certmesh/names";
/// The proxy entries route.
pub const PROXY_ENTRIES_PATH: &str = "/v1/certmesh/proxy-entries";

/// `POST /v1/certmesh/names`: names for the presenting member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesRequest {
    /// The DNS names.
    pub names: Vec<String>,
    /// Who asks on the member (`dns`, `proxy`, …).
    #[serde(default)]
    pub requester: Option<String>,
}

/// `POST /v1/certmesh/proxy-entries`: the presenting member's complete list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyEntriesRequest {
    /// The entries.
    pub entries: Vec<crate::proxy_entries::ProxyEntryParam>,
}

/// The roster entry (host name) whose current certificate `client_cert` is, or the refusal.
pub fn identify(authority: &Authority, client_cert: Option<&[u8]>) -> Result<String, Refusal> {
    let layout = authority.layout();
    if !layout.is_ca() {
        return Err(Refusal::NotCa);
    }
    let Some(der) = client_cert else {
        return Err(Refusal::NotMember(
            "This route needs the member's current certificate of this mesh as the TLS client \
             certificate; call certmesh/request-names or certmesh/set-proxy-entries on the \
             member, which presents it."
                .into(),
        ));
    };
    let ca_der = std::fs::read_to_string(layout.ca_dir().join("ca.pem"))
        .ok()
        .and_then(|pem| crate::x509::der(&pem))
        .ok_or_else(|| Refusal::Internal("cannot read the mesh root ca.pem".into()))?;
    let presented = MemberCert::verify(der, &ca_der).map_err(|e| {
        Refusal::NotMember(format!(
            "Refused: {e}. Only machines of this mesh may ask; join it with `koi certmesh join`."
        ))
    })?;
    if !presented.valid_at(time::OffsetDateTime::now_utc()) {
        return Err(Refusal::Expired(format!(
            "Refused: the client certificate (serial {}) is not valid now. Renew it with `koi \
             certmesh renew --now` on that machine (or join again if the mesh refuses).",
            presented.serial
        )));
    }
    let roster = Roster::load(&layout.roster()).map_err(|e| Refusal::Internal(e.to_string()))?;
    let entry = roster
        .members
        .iter()
        .find(|m| {
            m.fingerprint == presented.fingerprint
                || m.previous_fingerprint.as_deref() == Some(presented.fingerprint.as_str())
        })
        .ok_or_else(|| {
            Refusal::NotMember(format!(
                "Refused: the certificate with serial {} is not the current certificate of an \
                 entry of this mesh. Renew (`koi certmesh renew --now`) or join again on that \
                 machine.",
                presented.serial
            ))
        })?;
    if entry.status != MemberStatus::Active || entry.role == Role::Device {
        return Err(Refusal::NotPermitted(format!(
            "Refused: {} is a {} entry in status {}; only active machines may ask.",
            entry.hostname,
            crate::wire::serde_name(&entry.role),
            crate::wire::serde_name(&entry.status)
        )));
    }
    Ok(entry.hostname.clone())
}

fn refusal_answer(r: &Refusal) -> (u16, Value) {
    let body = ErrorBody {
        reason: r.reason().to_owned(),
        error: r.to_string(),
    };
    (r.status(), serde_json::to_value(body).unwrap_or_default())
}

/// Serves `POST /v1/certmesh/names` or `POST /v1/certmesh/proxy-entries`: `(status, body)`.
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
        .blocking("member request", move || {
            Ok(serve(
                &path,
                &bytes,
                peer,
                client_cert.as_deref().map(|c| c.as_ref()),
                &authority,
            ))
        })
        .await;
    match outcome {
        Ok(Ok(answer)) => (200, answer),
        Ok(Err(refusal)) => refusal_answer(&refusal),
        Err(e) => refusal_answer(&Refusal::Internal(e.message().to_owned())),
    }
}

/// The host of the presented certificate, or the refusal (recorded through the bounded
/// refusal records).
pub(crate) fn identified(
    authority: &Authority,
    client_cert: Option<&[u8]>,
    peer: IpAddr,
    path: &str,
) -> Result<String, Refusal> {
    identify(authority, client_cert).map_err(|refusal| {
        let detail = format!("{path}: {refusal}");
        let who = if client_cert.is_some() {
            "(unverified certificate)"
        } else {
            "(no certificate)"
        };
        let refused = Refused {
            peer,
            reason: refusal.reason(),
            detail: &detail,
            hostname: who,
            operator: None,
        };
        authority.record_refusal(authority.session().as_mut(), &refused);
        refusal
    })
}

fn serve(
    path: &str,
    bytes: &[u8],
    peer: IpAddr,
    client_cert: Option<&[u8]>,
    authority: &Authority,
) -> Result<Value, Refusal> {
    let host = identified(authority, client_cert, peer, path)?;
    let via = format!("member {host}");
    let bad = |e: serde_json::Error| {
        Refusal::BadRequest(format!(
            "The request to {path} is not valid JSON of the expected shape: {e}."
        ))
    };
    if path == NAMES_PATH {
        let req: NamesRequest = serde_json::from_slice(bytes).map_err(bad)?;
        let answer =
            authority.request_names(&host, &req.names, req.requester.as_deref(), &via, peer)?;
        Ok(serde_json::to_value(answer).unwrap_or_default())
    } else {
        let req: ProxyEntriesRequest = serde_json::from_slice(bytes).map_err(bad)?;
        let answer = authority.set_proxy_entries(&host, &req.entries, &via, peer)?;
        Ok(serde_json::to_value(answer).unwrap_or_default())
    }
}

/// On a member: sends `body` to `path` on its CA with its current certificate, and reads the
/// answer.
pub async fn forward<B: Serialize, T: DeserializeOwned>(
    authority: &Authority,
    membership: &Membership,
    path: &str,
    body: &B,
) -> Result<T, MethodError> {
    let layout = authority.layout();
    let files = CertFiles::at(layout, &membership.hostname);
    let (chain, key) = files.tls_identity().map_err(|e| {
        error::fail(
            format!("{e}."),
            "Join the mesh again with `koi certmesh join` to get new certificate files.",
        )
    })?;
    let endpoint_text = membership.ca_endpoint.clone().ok_or_else(|| {
        error::fail(
            "membership.json records no CA address to send the request to.",
            "Join the mesh again with `koi certmesh join --ca ADDR`.",
        )
    })?;
    let endpoint = CaEndpoint::parse(&endpoint_text)?;
    let pin = CaPin::new(Some(membership.ca_fingerprint.clone()));
    match client::request::<B, T>(
        &endpoint,
        &pin,
        Some((chain, key)),
        Method::POST,
        path,
        Some(body),
    )
    .await?
    {
        Answer::Ok(answer) => Ok(answer),
        Answer::Refused { status, body } => {
            let ca = membership.ca_name.as_deref().unwrap_or("the CA");
            Err(MethodError::new(format!(
                "The certmesh CA {ca} at {endpoint} refused ({status} {}): {}",
                body.reason, body.error
            )))
        }
    }
}
