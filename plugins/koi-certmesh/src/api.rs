//! The CA's inter-node HTTPS API, served by koi-certmesh under `koi daemon` (rustls + hyper).
//!
//! | Route | Who | What |
//! |---|---|---|
//! | `POST /v1/certmesh/join` | anyone on the LAN with a code | enroll: code + CSR → certificate |
//! | `GET /v1/certmesh/health` | anyone on the LAN | locked?, enrollment open?, mesh facts |
//! | `GET /v1/certmesh/roster` | members (client certificate from this mesh) | the members |
//! | `POST /v1/certmesh/renew` | members (their current certificate) | CSR → renewed certificate ([`crate::renew_api`]) |
//! | `POST /v1/certmesh/names`, `/proxy-entries` | members (their current certificate) | names for their next certificate, their proxy entries ([`crate::names_api`]) |
//! | `POST /v1/certmesh/promote`, `GET /v1/certmesh/standby/roster`, `POST /v1/certmesh/standby/audit` | a member with a code; a standby | the standby CA's transfer, roster manifest and audit log ([`crate::standby_api`]) |
//! | `POST /v1/certmesh/standby/partition` | a standby (a demoted primary) | its partition audit entries, kept in one signed entry ([`crate::partition`]) |
//!
//! Hardening: only loopback, private (RFC 1918, ULA) and link-local peers are served; at most
//! [`MAX_CONNECTIONS`] at once and at most [`MAX_CONNECTIONS_PER_PEER`] from one source address
//! (so one machine holding idle sockets cannot starve the others); the TLS handshake, the request
//! head, the body and the whole connection each have a timeout; bodies are capped at
//! [`MAX_BODY_BYTES`]; every malformed request gets a 4xx JSON body `{reason, error}` and never a
//! panic. A dropped connection is logged at debug only; a flood shows up as at most one info
//! summary a minute ([`DropLog`]), so a LAN peer cannot fill the daemon's log.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use koi_certmesh_core::Roster;
use koi_sdk::Context;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::authority::Authority;
use crate::error::Refusal;
use crate::wire::{
    ErrorBody, HealthResponse, JoinRequest, MAX_BODY_BYTES, MeshInfo, RosterMember, RosterResponse,
};

/// Concurrent connections served.
pub const MAX_CONNECTIONS: usize = 64;
/// Concurrent connections served from one source address. A join is one connection, and `koi`
/// never opens more than two at once to the CA; 8 leaves room for NAT and retries while one
/// address can hold at most an eighth of [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// TLS handshake deadline: a real client finishes in milliseconds on a LAN, so an idle socket
/// holds its slot for at most this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head deadline.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Body deadline.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-connection deadline.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// True for addresses the API serves: loopback, private, unique-local and link-local.
pub fn is_lan_peer(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_lan_peer(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Connections open per source address, with the global limit. A [`Slot`] is one admitted
/// connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    global: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_peer_limit: usize,
}

/// One admitted connection (frees its place when dropped).
#[derive(Debug)]
pub struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The peer is not on the LAN.
    OutsideLan,
    /// This source address already has its share of connections.
    PeerLimit,
    /// All connections are in use.
    GlobalLimit,
}

impl Admission {
    /// At most `global` connections, `per_peer` from one address.
    pub fn new(global: usize, per_peer: usize) -> Self {
        Admission {
            global: Arc::new(Semaphore::new(global)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            per_peer_limit: per_peer,
        }
    }

    /// Admits a connection from `peer`, or says why not. The per-address check comes first, so
    /// one address over its share never takes a global place from others.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Dropped> {
        // `::ffff:10.0.0.3` and `10.0.0.3` are one machine.
        let peer = peer.to_canonical();
        if !is_lan_peer(peer) {
            return Err(Dropped::OutsideLan);
        }
        let mut counts = self
            .per_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.get(&peer).copied().unwrap_or(0);
        if count >= self.per_peer_limit {
            return Err(Dropped::PeerLimit);
        }
        let permit = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Dropped::GlobalLimit)?;
        counts.insert(peer, count + 1);
        Ok(Slot {
            _global: permit,
            per_peer: self.per_peer.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .per_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// How often [`DropLog`] may write its summary line.
pub const DROP_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Counts dropped connections: each one at debug, and at most one info line per
/// [`DROP_SUMMARY_INTERVAL`] with the counts since the last one.
#[derive(Debug)]
pub struct DropLog {
    since: Instant,
    counts: [u64; 3],
}

impl Default for DropLog {
    fn default() -> Self {
        DropLog {
            since: Instant::now(),
            counts: [0; 3],
        }
    }
}

impl DropLog {
    /// Records one dropped connection from `peer`.
    pub fn record(&mut self, peer: SocketAddr, why: Dropped) {
        let (index, what) = match why {
            Dropped::OutsideLan => (0, "a peer outside the LAN"),
            Dropped::PeerLimit => (1, "a source address at its connection limit"),
            Dropped::GlobalLimit => (2, "the API at its connection limit"),
        };
        tracing::debug!(%peer, "certmesh API dropped a connection from {what}");
        self.counts[index] = self.counts[index].saturating_add(1);
        if self.since.elapsed() >= DROP_SUMMARY_INTERVAL {
            let [outside, peer_limit, global] = self.counts;
            tracing::info!(
                outside_lan = outside,
                per_address_limit = peer_limit,
                global_limit = global,
                "certmesh API dropped connections in the last {} s (limits: {MAX_CONNECTIONS} in \
                 all, {MAX_CONNECTIONS_PER_PEER} per address)",
                self.since.elapsed().as_secs()
            );
            *self = DropLog::default();
        }
    }
}

/// Binds the API. The caller then runs [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "Failed to listen on {addr} for the certmesh API: {e}. Another program may use the \
             port; set KOI_CERTMESH_API_BIND=ADDR:PORT to choose another."
        )
    })
}

/// Serves until `ctx` is cancelled (the plugin is shutting down), then drains: it stops
/// accepting, lets every open connection finish the request it is serving (idle keep-alive
/// connections are closed at once) and returns when the last one has ended. The plugin's shutdown
/// grace (`Plugin::shutdown_grace`) bounds the drain. Enrollment (signing, file writes) runs
/// through `ctx.blocking`, off the protocol workers.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authority: Arc<Authority>,
    ctx: Context,
) {
    let acceptor = TlsAcceptor::from(tls);
    let admission = Admission::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER);
    let mut drops = DropLog::default();
    let mut open = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.cancelled() => break,
            // Finished connections are reaped as they end, so the set holds only open ones.
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: the peer's problem as often as ours.
                    tracing::debug!("certmesh API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                drops.record(peer, why);
                continue;
            }
        };
        // Without it the CA's small answers wait for the member's delayed ACK (~40 ms a request).
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let authority = authority.clone();
        let ctx = ctx.clone();
        open.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(
                CONNECTION_TIMEOUT,
                connection(stream, peer, acceptor, authority, ctx),
            )
            .await;
        });
    }
    drop(listener);
    if !open.is_empty() {
        tracing::info!(
            connections = open.len(),
            "certmesh API stopping: letting open connections finish"
        );
    }
    while open.join_next().await.is_some() {}
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    authority: Arc<Authority>,
    ctx: Context,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        // Shutting down: a connection that has sent no request yet is simply closed.
        _ = ctx.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "certmesh API TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "certmesh API TLS handshake timed out; closed the connection");
                return;
            }
        },
    };
    let client_cert: Option<Arc<CertificateDer<'static>>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.clone().into_owned()));
    let stop = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let authority = authority.clone();
        let client_cert = client_cert.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(req, peer.ip(), client_cert, authority, ctx).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            // Finish the request in flight (if any), then close; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "certmesh API connection ended: {e}");
    }
}

pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error_response(
    status: u16,
    reason: &str,
    error: impl Into<String>,
) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &ErrorBody {
            reason: reason.to_owned(),
            error: error.into(),
        },
    )
}

fn refusal_response(r: &Refusal) -> Response<Full<Bytes>> {
    let mut response = error_response(r.status(), r.reason(), r.to_string());
    if let Refusal::LockedOut { seconds } = r
        && let Ok(v) = hyper::header::HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    response
}

async fn route(
    req: Request<Incoming>,
    peer: IpAddr,
    client_cert: Option<Arc<CertificateDer<'static>>>,
    authority: Arc<Authority>,
    ctx: Context,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let allowed = match path.as_str() {
        "/v1/certmesh/join" | "/v1/certmesh/renew" => Method::POST,
        crate::names_api::NAMES_PATH | crate::names_api::PROXY_ENTRIES_PATH => Method::POST,
        "/v1/certmesh/health" | "/v1/certmesh/roster" => Method::GET,
        crate::standby_api::PROMOTE_PATH
        | crate::standby_audit::AUDIT_PATH
        | crate::partition::PATH => Method::POST,
        crate::standby_api::MANIFEST_PATH => Method::GET,
        _ => {
            return error_response(
                404,
                "not_found",
                format!(
                    "No route {path}. The certmesh API serves /v1/certmesh/join, /renew, /names, /proxy-entries, /promote, /standby/roster, /standby/audit, /standby/partition, /health and /roster."
                ),
            );
        }
    };
    if req.method() != allowed {
        let mut r = error_response(
            405,
            "method_not_allowed",
            format!("{path} takes {allowed}, not {}.", req.method()),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(allowed.as_str()) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return r;
    }
    let roster = match Roster::load(&authority.layout().roster()) {
        Ok(r) => r,
        Err(_) => return refusal_response(&Refusal::NotCa),
    };
    let member = || {
        client_cert.as_deref().is_some_and(|c| {
            std::fs::read_to_string(authority.layout().ca_dir().join("ca.pem"))
                .ok()
                .and_then(|pem| crate::x509::der(&pem))
                .is_some_and(|ca| crate::client_auth::is_current_member_cert(c.as_ref(), &ca))
        })
    };
    match path.as_str() {
        "/v1/certmesh/health" => json_response(
            StatusCode::OK,
            &HealthResponse {
                status: "ok".into(),
                api_version: crate::wire::API_VERSION,
                locked: !authority.is_unlocked(),
                enrollment_open: {
                    let now = time::OffsetDateTime::now_utc();
                    let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
                    roster.mesh.enrollment.is_open(now)
                        && crate::totp_state::lockout_until(authority.layout(), unix).is_none()
                },
                mesh: MeshInfo::of(&roster),
            },
        ),
        "/v1/certmesh/roster" if !member() => error_response(
            401,
            "member_certificate_required",
            "The roster is for members: present this mesh's certificate (key.pem/cert.pem from `koi certmesh join`).",
        ),
        "/v1/certmesh/roster" => json_response(
            StatusCode::OK,
            &RosterResponse {
                mesh: MeshInfo::of(&roster),
                members: RosterMember::all(&roster),
            },
        ),
        "/v1/certmesh/renew" => {
            let bytes = match read_json_body(req, "renewal").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (status, body) =
                crate::renew_api::handle(bytes, peer, client_cert, authority, &ctx).await;
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            )
        }
        crate::names_api::NAMES_PATH | crate::names_api::PROXY_ENTRIES_PATH => {
            let bytes = match read_json_body(req, "member").await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (status, body) =
                crate::names_api::handle(&path, bytes, peer, client_cert, authority, &ctx).await;
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            )
        }
        crate::standby_api::PROMOTE_PATH
        | crate::standby_api::MANIFEST_PATH
        | crate::standby_audit::AUDIT_PATH
        | crate::partition::PATH => {
            let bytes = if path != crate::standby_api::MANIFEST_PATH {
                match read_json_body(req, "standby").await {
                    Ok(b) => b,
                    Err(r) => return r,
                }
            } else {
                Bytes::new()
            };
            let (status, body) =
                crate::standby_api::handle(&path, bytes, peer, client_cert, authority, &ctx).await;
            json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            )
        }
        _ => join(req, peer, authority, &ctx).await,
    }
}

/// The body of a JSON POST (content type, size and time limits), or the 4xx answer.
pub(crate) async fn read_json_body(
    req: Request<Incoming>,
    what: &str,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(error_response(
            415,
            "unsupported_media_type",
            format!("Send the {what} request as JSON (Content-Type: application/json)."),
        ));
    }
    let mut body = req.into_body();
    let mut collected = Vec::new();
    let mut seen = 0usize;
    // Past the cap the rest is read and dropped, up to DRAIN_LIMIT, before the 413 goes out: a
    // connection closed while the client still sends is reset, and the client never reads the
    // answer (curl reports no status at all). Beyond DRAIN_LIMIT the connection is just closed.
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= MAX_BODY_BYTES {
                collected.extend_from_slice(&data);
            }
        }
        Ok::<(), hyper::Error>(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Err(_) => Err(error_response(
            408,
            "timeout",
            "The request body did not arrive in time.",
        )),
        Ok(_) if seen > MAX_BODY_BYTES => Err(error_response(
            413,
            "too_large",
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        )),
        Ok(Err(e)) => Err(error_response(
            400,
            "bad_body",
            format!("Could not read the body: {e}"),
        )),
        Ok(Ok(())) => Ok(Bytes::from(collected)),
    }
}

/// How much of an oversized body is read and dropped so the client gets its 413.
const DRAIN_LIMIT: usize = 1024 * 1024;

async fn join(
    req: Request<Incoming>,
    peer: IpAddr,
    authority: Arc<Authority>,
    ctx: &Context,
) -> Response<Full<Bytes>> {
    let bytes = match read_json_body(req, "join").await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let request: JoinRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let refusal = Refusal::BadRequest(format!(
                "The join request is not valid JSON of the expected shape: {e}."
            ));
            return refusal_response(&refusal);
        }
    };
    // Checking the code, signing and writing the roster and audit log: off the async workers.
    let outcome = ctx
        .blocking("join enrollment", move || {
            Ok(authority.enroll(&request, peer))
        })
        .await;
    match outcome {
        Ok(Ok(answer)) => json_response(StatusCode::OK, &answer),
        Ok(Err(refusal)) => refusal_response(&refusal),
        Err(e) => refusal_response(&Refusal::Internal(e.message().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let admission = Admission::new(4, 2);
        let a: IpAddr = "10.0.0.3".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Dropped::PeerLimit);
        let _b1 = admission.admit(b).unwrap();
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Dropped::PeerLimit);
        let c: IpAddr = "10.0.0.4".parse().unwrap();
        assert_eq!(admission.admit(c).unwrap_err(), Dropped::GlobalLimit);
        drop(first);
        let _again = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit("203.0.113.9".parse().unwrap()).unwrap_err(),
            Dropped::OutsideLan
        );
    }

    #[test]
    fn only_lan_peers_are_served() {
        for ok in [
            "127.0.0.1",
            "10.77.0.2",
            "192.168.1.9",
            "172.16.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_lan_peer(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "192.0.2.1",
            "198.51.100.7",
            "2001:db8::1",
            "::ffff:203.0.113.5",
        ] {
            assert!(!is_lan_peer(no.parse().unwrap()), "{no}");
        }
    }
}
