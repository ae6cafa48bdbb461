//! The CA's inter-node HTTPS API, served by koi-certmesh under `koi daemon` (rustls + hyper).
//!
//! | Route | Who | What |
//! |---|---|---|
//! | `POST /v1/certmesh/join` | anyone on the LAN with a code | enroll: code + CSR → certificate |
//! | `GET /v1/certmesh/health` | anyone on the LAN | locked?, enrollment open?, mesh facts |
//! | `GET /v1/certmesh/roster` | members (client certificate from this mesh) | the members |
//!
//! Hardening: only loopback, private (RFC 1918, ULA) and link-local peers are served; at most
//! [`MAX_CONNECTIONS`] at once; the TLS handshake, the request head, the body and the whole
//! connection each have a timeout; bodies are capped at [`MAX_BODY_BYTES`]; every malformed
//! request gets a 4xx JSON body `{reason, error}` and never a panic.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use koi_certmesh_core::Roster;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::authority::Authority;
use crate::error::Refusal;
use crate::wire::{
    ErrorBody, HealthResponse, JoinRequest, MAX_BODY_BYTES, MeshInfo, RosterMember, RosterResponse,
};

/// Concurrent connections served.
pub const MAX_CONNECTIONS: usize = 64;
/// TLS handshake deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Binds the API. The caller then runs [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "Failed to listen on {addr} for the certmesh API: {e}. Another program may use the \
             port; set KOI_CERTMESH_API_BIND=ADDR:PORT to choose another."
        )
    })
}

/// Serves until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authority: Arc<Authority>,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("certmesh API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it the CA's small answers wait for the member's delayed ACK (~40 ms a request).
        let _ = stream.set_nodelay(true);
        if !is_lan_peer(peer.ip()) {
            tracing::warn!(%peer, "refused a certmesh API connection from outside the LAN");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "certmesh API at its connection limit; dropped a connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(
                CONNECTION_TIMEOUT,
                connection(stream, peer, acceptor, authority),
            )
            .await;
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    authority: Arc<Authority>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "certmesh API TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let member = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let service = hyper::service::service_fn(move |req| {
        let authority = authority.clone();
        async move { Ok::<_, Infallible>(route(req, peer.ip(), member, authority).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(%peer, "certmesh API connection ended: {e}");
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: u16, reason: &str, error: impl Into<String>) -> Response<Full<Bytes>> {
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
    member: bool,
    authority: Arc<Authority>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let allowed = match path.as_str() {
        "/v1/certmesh/join" => Method::POST,
        "/v1/certmesh/health" | "/v1/certmesh/roster" => Method::GET,
        _ => {
            return error_response(
                404,
                "not_found",
                format!(
                    "No route {path}. The certmesh API serves /v1/certmesh/join, /health and /roster."
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
    match path.as_str() {
        "/v1/certmesh/health" => json_response(
            StatusCode::OK,
            &HealthResponse {
                status: "ok".into(),
                api_version: crate::wire::API_VERSION,
                locked: !authority.is_unlocked(),
                enrollment_open: roster
                    .mesh
                    .enrollment
                    .is_open(time::OffsetDateTime::now_utc()),
                mesh: MeshInfo::of(&roster),
            },
        ),
        "/v1/certmesh/roster" if !member => error_response(
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
        _ => join(req, peer, authority).await,
    }
}

async fn join(
    req: Request<Incoming>,
    peer: IpAddr,
    authority: Arc<Authority>,
) -> Response<Full<Bytes>> {
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !is_json {
        return error_response(
            415,
            "unsupported_media_type",
            "Send the join request as JSON (Content-Type: application/json).",
        );
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return error_response(408, "timeout", "The request body did not arrive in time.");
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(
                413,
                "too_large",
                format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
            );
        }
        Ok(Err(e)) => {
            return error_response(400, "bad_body", format!("Could not read the body: {e}"));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
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
    let outcome = tokio::task::spawn_blocking(move || authority.enroll(&request, peer)).await;
    match outcome {
        Ok(Ok(answer)) => json_response(StatusCode::OK, &answer),
        Ok(Err(refusal)) => refusal_response(&refusal),
        Err(e) => refusal_response(&Refusal::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
