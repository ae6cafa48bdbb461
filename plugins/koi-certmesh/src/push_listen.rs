//! The member's push endpoint (daemon mode, `Plugin::service("push-receiver")`): a small HTTPS
//! server with one route, `POST /v1/certmesh/push`, where the CA delivers a renewal it signed for
//! a member that did not renew by itself ([`crate::push`]). What is accepted is decided in
//! [`crate::push_accept`].
//!
//! It listens on `KOI_CERTMESH_PUSH_BIND` (default `0.0.0.0:`[`DEFAULT_PUSH_PORT`]), presents the
//! member's own certificate with the root (`fullchain.pem`, re-read whenever the file changes, so
//! a renewal by pull or push is served from the next connection on), and asks the client for a
//! certificate (the CA's API certificate). The CA finds the endpoint at the addresses its roster
//! records for the member (the certificate's IP addresses) and [`DEFAULT_PUSH_PORT`], so a member
//! that moves the port with `KOI_CERTMESH_PUSH_BIND` cannot be pushed to (it still renews by pull).
//!
//! Bounds, as on the CA's API ([`crate::api`]): LAN peers only; at most [`MAX_CONNECTIONS`]
//! connections, [`MAX_CONNECTIONS_PER_PEER`] from one address; handshake, head, body and
//! connection deadlines; bodies capped at [`crate::wire::MAX_BODY_BYTES`]; at most
//! [`MAX_PUSHES_PER_MINUTE`] requests a minute in all (then 429), which also bounds the log lines
//! refusals write.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::{Admission, error_response, json_response, read_json_body};
use crate::files::{CertFiles, Membership};
use crate::hot_cert::ApiCert;
use crate::layout::Layout;
use crate::push_accept::PushRequest;

/// The service's name (in `status` under `details.daemon_services`).
pub const SERVICE: &str = "push-receiver";
/// The port the CA pushes to.
pub const DEFAULT_PUSH_PORT: u16 = 5642;
/// The environment variable that moves the endpoint (`ADDR:PORT`).
pub const PUSH_BIND_ENV: &str = "KOI_CERTMESH_PUSH_BIND";
/// Concurrent connections served.
pub const MAX_CONNECTIONS: usize = 16;
/// Concurrent connections from one source address.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Requests served a minute, from everyone together.
pub const MAX_PUSHES_PER_MINUTE: u32 = 30;
/// How often a member without a mesh (or whose bind failed) looks again.
pub const IDLE_POLL: Duration = Duration::from_secs(5);

/// Where the endpoint of this process listens, or why it does not (what `status` shows).
static LISTEN: Mutex<(Option<String>, Option<String>)> = Mutex::new((None, None));

fn set_listen(listening: Option<String>, error: Option<String>) {
    *LISTEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = (listening, error);
}

/// `(listening address, bind error)` of this process's push endpoint.
pub fn listen_state() -> (Option<String>, Option<String>) {
    LISTEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn bind_address() -> Result<SocketAddr, String> {
    match std::env::var(PUSH_BIND_ENV) {
        Ok(text) => text.parse().map_err(|_| {
            format!("{PUSH_BIND_ENV}={text:?} is not ADDR:PORT (e.g. 0.0.0.0:{DEFAULT_PUSH_PORT})")
        }),
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PUSH_PORT))),
    }
}

fn member(layout: &Layout) -> Option<Membership> {
    Membership::load(layout)
        .ok()
        .flatten()
        .filter(|m| m.role == "member")
}

/// The push endpoint service: serves on members under `koi daemon`; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let layout = crate::app::App::of(&ctx)?.authority().layout().clone();
    let mut reported: Option<String> = None;
    loop {
        let found = {
            let layout = layout.clone();
            ctx.blocking("read the membership", move || Ok(member(&layout)))
                .await?
        };
        if let Some(m) = found {
            let opened = {
                let (layout, m) = (layout.clone(), m.clone());
                ctx.blocking("load the push endpoint's certificate", move || {
                    load(&layout, &m)
                })
                .await?
            };
            match bind(opened).await {
                Ok((listener, cert, ca_pem)) => {
                    serve(&ctx, &layout, listener, cert, &ca_pem).await;
                    if ctx.is_cancelled() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    if reported.as_deref() != Some(e.as_str()) {
                        tracing::warn!("certmesh push endpoint not listening: {e}");
                        reported = Some(e.clone());
                    }
                    set_listen(None, Some(e));
                }
            }
        }
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}

/// The member's root (PEM) and its certificate as a swappable server certificate. Blocking.
fn load(
    layout: &Layout,
    m: &Membership,
) -> Result<Result<(Arc<ApiCert>, String), String>, MethodError> {
    let files = CertFiles::at(layout, &m.hostname);
    let ca_pem = match std::fs::read_to_string(&files.ca) {
        Ok(pem) => pem,
        Err(e) => return Ok(Err(format!("cannot read the mesh root {}: {e}", files.ca))),
    };
    Ok(ApiCert::load(files.fullchain.as_ref(), files.key.as_ref()).map(|cert| (cert, ca_pem)))
}

async fn bind(
    opened: Result<(Arc<ApiCert>, String), String>,
) -> Result<(TcpListener, Arc<ApiCert>, String), String> {
    let (cert, ca_pem) = opened?;
    let addr = bind_address()?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr}: {e}; another program may use the port (set \
             {PUSH_BIND_ENV}=ADDR:PORT to move it; the CA pushes only to port {DEFAULT_PUSH_PORT}, \
             renewal by pull goes on either way)"
        )
    })?;
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!(%local, "certmesh push endpoint listening");
    set_listen(Some(local), None);
    Ok((listener, cert, ca_pem))
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves until `ctx` is cancelled or this machine stops being a member.
async fn serve(
    ctx: &Context,
    layout: &Layout,
    listener: TcpListener,
    cert: Arc<ApiCert>,
    ca_pem: &str,
) {
    let tls = match crate::tls::server_config(cert.clone(), ca_pem) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!("certmesh push endpoint: {e}");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(tls);
    let admission = Admission::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER);
    let rate = Arc::new(Mutex::new((Instant::now(), 0u32)));
    let mut open = JoinSet::new();
    let mut loaded: Option<(String, Option<SystemTime>)> = None;
    loop {
        let accepted = tokio::select! {
            _ = ctx.cancelled() => break,
            Some(_) = open.join_next(), if !open.is_empty() => continue,
            _ = tokio::time::sleep(IDLE_POLL) => None,
            a = listener.accept() => a.ok(),
        };
        // The member may have left (or joined another mesh): stop and start again. A renewed
        // certificate (pull or push) is served from the next connection on. Files: off the
        // async workers.
        let look = {
            let (layout, cert, loaded) = (layout.clone(), cert.clone(), loaded.clone());
            ctx.blocking("check the push endpoint's certificate", move || {
                Ok(member(&layout).map(|m| {
                    let files = CertFiles::at(&layout, &m.hostname);
                    let stamp = (files.fullchain.clone(), modified(&files.fullchain));
                    if loaded.is_some()
                        && loaded.as_ref() != Some(&stamp)
                        && let Err(e) = cert.reload(files.fullchain.as_ref(), files.key.as_ref())
                    {
                        tracing::debug!("push endpoint keeps its certificate: {e}");
                    }
                    stamp
                }))
            })
            .await
        };
        match look {
            Ok(Some(stamp)) => loaded = Some(stamp),
            _ => break,
        }
        let Some((stream, peer)) = accepted else {
            continue;
        };
        let Ok(slot) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "push endpoint dropped a connection (not LAN or over its limits)");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, ctx, rate) = (acceptor.clone(), ctx.clone(), rate.clone());
        open.spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(
                crate::api::CONNECTION_TIMEOUT,
                connection(stream, peer, acceptor, ctx, rate),
            )
            .await;
        });
    }
    set_listen(None, None);
    while open.join_next().await.is_some() {}
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Context,
    rate: Arc<Mutex<(Instant, u32)>>,
) {
    let Ok(Ok(tls)) =
        tokio::time::timeout(crate::api::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
    else {
        tracing::debug!(%peer, "push endpoint: TLS handshake failed or timed out");
        return;
    };
    let client_cert: Option<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let service = hyper::service::service_fn(move |req| {
        let (ctx, rate, client_cert) = (ctx.clone(), rate.clone(), client_cert.clone());
        async move { Ok::<_, Infallible>(route(req, peer.ip(), client_cert, ctx, rate).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(crate::api::HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// Whether one more request fits in this minute's budget.
fn within_rate(rate: &Mutex<(Instant, u32)>) -> bool {
    let mut r = rate
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if r.0.elapsed() >= Duration::from_secs(60) {
        *r = (Instant::now(), 0);
    }
    r.1 = r.1.saturating_add(1);
    r.1 <= MAX_PUSHES_PER_MINUTE
}

async fn route(
    req: Request<Incoming>,
    peer: IpAddr,
    client_cert: Option<Vec<u8>>,
    ctx: Context,
    rate: Arc<Mutex<(Instant, u32)>>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/v1/certmesh/push" {
        return error_response(
            404,
            "not_found",
            "A certmesh member serves only POST /v1/certmesh/push here.",
        );
    }
    if req.method() != Method::POST {
        return error_response(405, "method_not_allowed", "/v1/certmesh/push takes POST.");
    }
    if !within_rate(&rate) {
        let mut r = error_response(
            429,
            "rate_limited",
            format!(
                "This member takes at most {MAX_PUSHES_PER_MINUTE} pushes a minute; try again \
                 in a minute."
            ),
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("60"),
        );
        return r;
    }
    let bytes = match read_json_body(req, "push").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: PushRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                400,
                "bad_request",
                format!("The push is not valid JSON of the expected shape: {e}."),
            );
        }
    };
    match crate::push_accept::accept(&ctx, peer, client_cert, request).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(refusal) => error_response(refusal.status, refusal.reason, refusal.error),
    }
}
