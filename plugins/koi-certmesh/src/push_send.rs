//! One renewal pushed by the CA to one member ([`push_one`]); the schedule that decides when is
//! [`crate::push`], the member's side [`crate::push_accept`].
//!
//! 1. Connect to the member's push endpoint: each IP address its roster entry records, at
//!    [`crate::push_listen::DEFAULT_PUSH_PORT`], first that answers. TLS with the mesh's pinned
//!    root ([`crate::tls::CaPin`]: the member presents its certificate and the root), the CA's own
//!    API certificate as client certificate.
//! 2. The public key to re-sign is read from the certificate the member presents there, after
//!    checking that it is the one the roster records for that entry (its current certificate, or
//!    the one a renewal not yet installed replaced — `previous_fingerprint`). So the roster needs
//!    no copy of members' keys, and a machine that took over the member's address cannot obtain
//!    a certificate: its certificate is not that entry's.
//! 3. Sign, with the unlocked CA, for that key and the entry's names and addresses — after the
//!    scope and ownership checks every member certificate passes ([`crate::ownership`]) — and
//!    update the entry **before** sending: the certificate the member holds becomes
//!    `previous_fingerprint`, which still authenticates its pull renewals and the next push, so
//!    a crash or a lost answer never leaves the member with a certificate the roster forgot.
//! 4. `POST /v1/certmesh/push` on the same connection; the answer is accepted or refused (with
//!    the member's reason). [`crate::push`] audits either.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use koi_certmesh_core::{LeafRequest, Member, Roster};
use koi_sdk::{Context, MethodError};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::Authority;
use crate::error;
use crate::files::CertFiles;
use crate::push_accept::{PushAnswer, PushRequest};
use crate::tls::CaPin;
use crate::wire::ErrorBody;

/// Connect deadline per address.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Deadline for the whole push after the connection.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Largest answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the certificate signed for the push was.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The serial the member held.
    pub old_serial: String,
    /// When the certificate the member held expires (RFC 3339).
    pub old_not_after: String,
    /// The new serial.
    pub serial: String,
    /// The new expiry (RFC 3339).
    pub not_after: String,
}

/// How a push that reached the member ended.
#[derive(Debug, Clone)]
pub enum Delivered {
    /// Installed by the member.
    Accepted(Signed, PushAnswer),
    /// Refused by the member: HTTP status and its reason.
    Refused(Signed, u16, ErrorBody),
}

/// Why a push was not delivered, and what was signed for it if it got that far (the roster then
/// records that certificate, while the member still holds the one it had).
pub type NotDelivered = (String, Option<Signed>);

/// Pushes a renewal to the roster entry `hostname`. `Err` when it could not be delivered
/// (unreachable, locked, not that entry's certificate, signing refused), with the reason.
pub async fn push_one(
    ctx: &Context,
    authority: &Arc<Authority>,
    hostname: &str,
    addresses: &[IpAddr],
    own: &CertFiles,
    mesh_fingerprint: &str,
) -> Result<(Delivered, SocketAddr), NotDelivered> {
    let unsigned = |e: String| (e, None);
    if addresses.is_empty() {
        return Err(unsigned(format!(
            "its roster entry records no IP address to push to; {hostname} renews by pull only"
        )));
    }
    let (chain, key) = own.tls_identity().map_err(unsigned)?;
    let pin = CaPin::new(Some(mesh_fingerprint.to_owned()));
    let config = Arc::new(pin.client_config(Some((chain, key))).map_err(unsigned)?);
    let mut last_error = String::new();
    let mut stream = None;
    for ip in addresses {
        let addr = SocketAddr::new(*ip, crate::push_listen::DEFAULT_PUSH_PORT);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some((s, addr));
                break;
            }
            Ok(Err(e)) => last_error = format!("{addr}: {e}"),
            Err(_) => last_error = format!("{addr}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }
    let Some((stream, addr)) = stream else {
        return Err(unsigned(format!("unreachable ({last_error})")));
    };
    let _ = stream.set_nodelay(true);
    let mut signed_for: Option<Signed> = None;
    let work = async {
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), stream)
            .await
            .map_err(|e| format!("TLS with {addr} failed: {e}"))?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| format!("{addr} presented no certificate"))?;
        let (signed, cert_pem) = {
            let (authority, hostname, presented) =
                (authority.clone(), hostname.to_owned(), presented.clone());
            ctx.blocking("sign a pushed renewal", move || {
                sign(&authority, &hostname, &presented)
            })
            .await
            .map_err(|e| e.message().to_owned())?
        };
        signed_for = Some(signed.clone());
        let body = PushRequest {
            cert_pem,
            replaces: koi_certmesh_core::fingerprint_sha256(&presented),
        };
        deliver(tls, addr, &body, signed).await
    };
    let result = tokio::time::timeout(REQUEST_TIMEOUT, work).await;
    match result {
        Ok(Ok(d)) => Ok((d, addr)),
        Ok(Err(e)) => Err((e, signed_for)),
        Err(_) => Err((
            format!("{addr} did not finish the push within {REQUEST_TIMEOUT:?}"),
            signed_for,
        )),
    }
}

/// Sends the push on the open connection and reads the member's answer.
async fn deliver(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    addr: SocketAddr,
    body: &PushRequest,
    signed: Signed,
) -> Result<Delivered, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {addr} failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/certmesh/push")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the push to {addr} broke off: {e}"))?;
    let status = response.status().as_u16();
    let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the answer from {addr} broke off: {e}"))?
        .to_bytes();
    if status == 200 {
        let answer: PushAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{addr} accepted with an answer this CA cannot read: {e}"))?;
        Ok(Delivered::Accepted(signed, answer))
    } else {
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            reason: "unknown".into(),
            error: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        });
        Ok(Delivered::Refused(signed, status, body))
    }
}

/// Signs the renewal for the key in `presented` (DER) and records it in the roster entry
/// `hostname` (see the module docs). Returns what was signed and the certificate (PEM).
fn sign(
    authority: &Authority,
    hostname: &str,
    presented: &[u8],
) -> Result<(Signed, String), MethodError> {
    let layout = authority.layout();
    authority.with_session(|session| {
        let mut roster = Roster::load(&layout.roster()).map_err(error::core)?;
        let fingerprint = koi_certmesh_core::fingerprint_sha256(presented);
        let entry = roster
            .member(hostname)
            .filter(|m| crate::push::pushable(m, ""))
            .cloned()
            .ok_or_else(|| {
                MethodError::new(format!(
                    "{hostname} is no longer an active member in the roster; nothing was pushed"
                ))
            })?;
        if entry.fingerprint != fingerprint
            && entry.previous_fingerprint.as_deref() != Some(fingerprint.as_str())
        {
            return Err(MethodError::new(format!(
                "the machine at its address presents certificate {fingerprint}, which is not the \
                 certificate the roster records for {hostname}; nothing was signed"
            )));
        }
        let (_, cert) = X509Certificate::from_der(presented).map_err(|e| {
            MethodError::new(format!("the member's certificate does not parse: {e}"))
        })?;
        let held =
            crate::client_auth::MemberCert::verify(presented, session.unlocked().ca().cert_der())
                .map_err(|e| MethodError::new(format!("the member's certificate: {e}")))?;
        // The entry's names as issued: the first is the subject (as in crate::leaf).
        let (first, rest) = entry.dns_names.split_first().ok_or_else(|| {
            MethodError::new(format!(
                "the roster entry {hostname} records no DNS name to renew"
            ))
        })?;
        let mut leaf = LeafRequest::new(first.clone());
        leaf.dns_names = rest.to_vec();
        leaf.ip_addresses = entry.ip_addresses.clone();
        leaf.validity = crate::clock::leaf_lifetime();
        let _dropped = crate::ownership::drop_held_addresses(&roster, &mut leaf, hostname);
        crate::ownership::check(&roster, &leaf, hostname).map_err(MethodError::new)?;
        let issued = session
            .unlocked()
            .ca()
            .issue_for_public_key(
                cert.public_key().raw,
                &leaf,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(error::core)?;
        let mut updated: Member = entry.clone();
        updated.serial.clone_from(&issued.serial_hex);
        updated.fingerprint.clone_from(&issued.fingerprint);
        updated.issued_at = issued.not_before;
        updated.expires_at = issued.not_after;
        updated.dns_names.clone_from(&issued.dns_names);
        updated.ip_addresses.clone_from(&issued.ip_addresses);
        // The member holds `presented` until it installs this one (a lost answer, a refusal).
        updated.previous_fingerprint = Some(fingerprint);
        roster.upsert(updated);
        session.save_roster(layout, &mut roster)?;
        Ok((
            Signed {
                old_serial: held.serial,
                old_not_after: crate::names::rfc3339(held.not_after),
                serial: issued.serial_hex.clone(),
                not_after: crate::names::rfc3339(issued.not_after),
            },
            issued.cert_pem,
        ))
    })
}
