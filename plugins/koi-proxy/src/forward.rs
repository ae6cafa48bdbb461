//! One request through the proxy: routed by Host (or `:authority`) to an entry configured on
//! this port — never anywhere else (no open proxy) — rewritten (hop-by-hop headers out,
//! forwarding headers in) and sent over an HTTP/1.1 backend connection (the client
//! connection's own, or one of the serving thread's: [`crate::local`], [`crate::pool`]) with the body
//! streaming both ways. `Upgrade` requests (WebSocket) get a connection of their own that is
//! spliced to the client after the 101; the tunnel keeps the connection's place under the caps
//! and is closed after [`limits::TUNNEL_IDLE`] with no byte either way. A backend that does not
//! answer gives a 502 page naming the entry; one slower than the entry's timeout gives a 504.

use crate::backend::resolve;
use crate::body::ProxyBody;
use crate::headers::{Forwarding, strip_hop_by_hop, wants_upgrade};
use crate::limits::{self, Activity, Admitted, Tracked};
use crate::local::SendError;
use crate::state::{ActiveMark, EntryRt, Proxy, lock};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What a request knows about its connection.
#[derive(Debug)]
pub struct Conn {
    /// The HTTPS port it arrived on.
    pub port: u16,
    /// The client's address.
    pub peer: IpAddr,
    /// The plugin state (routes).
    pub proxy: Arc<Proxy>,
    /// The connection's activity record.
    pub activity: Arc<Activity>,
    /// Whether the client speaks HTTP/2 on it.
    pub h2: bool,
    /// Its own backend connections (HTTP/1.1 clients; HTTP/2 ones use the entry's pool).
    pub local: Option<crate::local::LocalBackends>,
    /// Requests forwarded on it so far.
    pub requests: std::sync::atomic::AtomicU64,
    /// The first host its requests named, checked, with its forwarding header values: every
    /// later request naming the same `Host` reuses them instead of parsing and formatting again.
    pub named: OnceLock<Named>,
    /// Its places under the caps, released when the connection ends or handed to the tunnel an
    /// `Upgrade` makes of it (taken at most once).
    pub held: Mutex<Option<Held>>,
}

/// What an open client connection holds: its place under the connection caps and in its entry's
/// active count. A WebSocket tunnel carries it on, so tunnels count against the caps too.
#[derive(Debug)]
pub struct Held {
    /// Its place under the per-client and total caps.
    _admitted: Admitted,
    /// Its place in the active count of the entry its SNI chose.
    _active: Option<ActiveMark>,
}

impl Held {
    /// The places of a connection admitted under the caps, for the entry its SNI chose.
    pub fn new(admitted: Admitted, entry: Option<Arc<EntryRt>>) -> Self {
        Self {
            _admitted: admitted,
            _active: entry.map(ActiveMark::new),
        }
    }
}

/// A `Host` as a connection's requests name it: checked for routing, and the forwarding header
/// values for it and the connection's client.
#[derive(Debug)]
pub struct Named {
    /// The host name, lower case, without port (what routes are keyed by).
    host: String,
    /// `Host`, `X-Forwarded-*` and `Forwarded` for it.
    fwd: Forwarding,
}

impl Named {
    fn new(peer: IpAddr, raw: &str) -> Option<Self> {
        Some(Self {
            host: host_of(raw)?,
            fwd: Forwarding::new(peer, raw)?,
        })
    }
}

/// The `Host` a request names as sent (`:authority` for HTTP/2), port included.
fn raw_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// A raw `Host` value's host name, checked, lower case, without port.
fn host_of(raw: &str) -> Option<String> {
    let host = if let Some(v6) = raw.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    crate::config::check_host(host).ok()
}

/// The request's host as the connection saw it before (`seen`: its first host), or as it is made
/// now (kept in `seen` if it is the first; in `here` otherwise). `None`: no host, or not a valid
/// host name.
fn named<'a, B>(
    seen: &'a OnceLock<Named>,
    peer: IpAddr,
    req: &Request<B>,
    here: &'a mut Option<Named>,
) -> Option<&'a Named> {
    let raw = raw_host(req)?;
    if let Some(n) = seen.get()
        && n.fwd.raw_host.as_bytes() == raw.as_bytes()
    {
        return Some(n);
    }
    let fresh = Named::new(peer, raw)?;
    match seen.set(fresh) {
        Ok(()) => seen.get(),
        Err(fresh) => Some(here.insert(fresh)),
    }
}

/// The host a request names (lower case, without port), and the raw value for X-Forwarded-Host.
pub fn request_host<B>(req: &Request<B>) -> Option<(String, String)> {
    let raw = raw_host(req)?;
    Some((host_of(raw)?, raw.to_owned()))
}

/// A short HTML page of the proxy's own.
pub fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<!doctype html><title>{status}</title><h1>{status}</h1><p>{escaped}</p><p><small>koi-proxy</small></p>\n"
    );
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The request handler every HTTPS connection runs.
pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let inflight = conn.activity.begin();
    let head: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if head > crate::limits::MAX_HEAD_BYTES || req.headers().len() > crate::limits::MAX_HEADERS {
        return Ok(page(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "The request headers are too large for this proxy.",
        )
        .holding_into(inflight));
    }
    let mut here = None;
    let routed = named(&conn.named, conn.peer, &req, &mut here).and_then(|named| {
        let entry = conn
            .proxy
            .routes
            .load()
            .tls_entry(conn.port, &named.host)
            .cloned()?;
        Some((entry, &named.fwd))
    });
    let Some((entry, fwd)) = routed else {
        return Ok(page(
            StatusCode::MISDIRECTED_REQUEST,
            "This proxy serves no such host on this port.",
        )
        .holding_into(inflight));
    };
    let resp = if !conn.h2 && wants_upgrade(req.headers()) {
        upgrade(&entry, &conn, fwd, req).await
    } else {
        forward(&entry, &conn, fwd, req).await
    };
    entry.count(resp.status().as_u16());
    Ok(resp.holding_into(inflight))
}

trait Holding {
    fn holding_into(self, inflight: crate::limits::InFlight) -> Self;
}

impl Holding for Response<ProxyBody> {
    fn holding_into(self, inflight: crate::limits::InFlight) -> Self {
        self.map(|b| b.holding(inflight))
    }
}

/// The request rewritten for the backend.
fn rewrite(
    entry: &EntryRt,
    conn: &Conn,
    fwd: &Forwarding,
    req: Request<Incoming>,
    keep_upgrade: bool,
) -> Option<Request<Incoming>> {
    let (mut parts, body) = req.into_parts();
    // Origin form (`/path?query`), what a backend connection speaks.
    let path = match parts.uri.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => p.clone(),
        Some(_) => return None,
        None => hyper::http::uri::PathAndQuery::from_static("/"),
    };
    let mut uri = hyper::http::uri::Parts::default();
    uri.path_and_query = Some(path);
    parts.uri = Uri::from_parts(uri).ok()?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, keep_upgrade);
    parts.headers.insert(header::HOST, fwd.raw_host.clone());
    let trusted = entry.trusted.iter().any(|c| c.contains(conn.peer));
    fwd.apply(&mut parts.headers, trusted);
    Some(Request::from_parts(parts, body))
}

fn bad_target() -> Response<ProxyBody> {
    page(StatusCode::BAD_REQUEST, "The request target is not a path.")
}

fn down_page(entry: &EntryRt) -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        &format!(
            "The service \u{201c}{}\u{201d} ({}) is not answering at {}. Start it, or check it \
             with `koi proxy status`.",
            entry.entry.name, entry.entry.host, entry.entry.backend
        ),
    )
}

fn slow_page(entry: &EntryRt) -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "The service \u{201c}{}\u{201d} ({}) did not answer within {} s.",
            entry.entry.name, entry.entry.host, entry.entry.timeout_secs
        ),
    )
}

fn from_backend(mut resp: Response<Incoming>, keep_upgrade: bool) -> Response<ProxyBody> {
    strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
    resp.map(ProxyBody::stream)
}

async fn forward(
    entry: &EntryRt,
    conn: &Conn,
    fwd: &Forwarding,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(req) = rewrite(entry, conn, fwd, req, false) else {
        return bad_target();
    };
    let limit = Duration::from_secs(entry.entry.timeout_secs);
    // The first request of a connection goes through the shared pool (a client that sends one
    // request per connection costs no new backend connection); from the second on, the client is
    // keeping its connection alive and gets backend connections of its own.
    let first = conn
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        == 0;
    let local = conn.local.as_ref().filter(|_| !first);
    let req = match local {
        Some(local) => match tokio::time::timeout(limit, local.send(entry, req)).await {
            Ok(Err(SendError::Full(req))) => *req,
            other => return answer(entry, other),
        },
        None => req,
    };
    answer(
        entry,
        tokio::time::timeout(limit, crate::pool::send(entry, req)).await,
    )
}

/// The response for what the backend exchange gave: the backend's, or a 502 or 504 page.
fn answer(
    entry: &EntryRt,
    sent: Result<Result<Response<Incoming>, SendError>, tokio::time::error::Elapsed>,
) -> Response<ProxyBody> {
    match sent {
        Ok(Ok(resp)) => {
            entry.backend_answered();
            from_backend(resp, false)
        }
        Ok(Err(SendError::Connect(why))) => {
            entry.backend_failed(&format!("cannot connect: {why}"));
            down_page(entry)
        }
        Ok(Err(SendError::Exchange(e))) => {
            tracing::info!(entry = %entry.entry.name, "backend request failed: {}", source_text(&e));
            down_page(entry)
        }
        // Only a client connection's own connections run out; the thread's pool never does.
        Ok(Err(SendError::Full(_))) => down_page(entry),
        Err(_) => slow_page(entry),
    }
}

fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

async fn upgrade(
    entry: &EntryRt,
    conn: &Conn,
    fwd: &Forwarding,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let Some(req) = rewrite(entry, conn, fwd, req, true) else {
        return bad_target();
    };
    let backend = &entry.backend;
    let connected = async {
        let addrs = resolve(&backend.host, backend.port, entry.entry.backend_remote).await?;
        tokio::net::TcpStream::connect(&addrs[..]).await
    };
    let tcp = match tokio::time::timeout(Duration::from_secs(5), connected).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            entry.backend_failed(&format!("cannot connect: {e}"));
            return down_page(entry);
        }
        Err(_) => {
            entry.backend_failed("the connection timed out");
            return down_page(entry);
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(tcp)).await {
            Ok(pair) => pair,
            Err(_) => return down_page(entry),
        };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let limit = Duration::from_secs(entry.entry.timeout_secs);
    let mut resp = match tokio::time::timeout(limit, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => return down_page(entry),
        Err(_) => return slow_page(entry),
    };
    entry.backend_answered();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return from_backend(resp, false);
    }
    let backend_side = hyper::upgrade::on(&mut resp);
    let held = lock(&conn.held).take();
    tokio::spawn(async move {
        let _held = held;
        if let (Ok(c), Ok(b)) = (client_side.await, backend_side.await) {
            let activity = Activity::new();
            let mut c = TokioIo::new(c);
            let mut b = Tracked::new(TokioIo::new(b), Arc::clone(&activity));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut c, &mut b) => {}
                () = limits::idle_past(&activity, limits::tunnel_idle()) => {}
            }
        }
    });
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    Response::from_parts(parts, ProxyBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderMap;

    fn req(host: &str) -> Request<()> {
        Request::builder()
            .uri("/x")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn a_connection_keeps_its_first_host_and_another_host_gets_its_own_values() {
        let seen = OnceLock::new();
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut here = None;
        let first = named(&seen, peer, &req("Grafana.LAN:8443"), &mut here).unwrap();
        assert_eq!(first.host, "grafana.lan");
        assert!(std::ptr::eq(first, seen.get().unwrap()));
        let mut h = HeaderMap::new();
        first.fwd.apply(&mut h, false);
        assert_eq!(h["x-forwarded-host"], "Grafana.LAN:8443");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.2;host=\"Grafana.LAN:8443\";proto=https"
        );

        let mut here = None;
        let other = named(&seen, peer, &req("jellyfin.lan"), &mut here).unwrap();
        assert_eq!(other.host, "jellyfin.lan");
        let mut h = HeaderMap::new();
        other.fwd.apply(&mut h, false);
        assert_eq!(h["x-forwarded-host"], "jellyfin.lan");
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(seen.get().unwrap().host, "grafana.lan");

        let mut here = None;
        let again = named(&seen, peer, &req("Grafana.LAN:8443"), &mut here).unwrap();
        assert!(std::ptr::eq(again, seen.get().unwrap()));
        assert!(here.is_none());

        let mut here = None;
        assert!(named(&seen, peer, &req("bad_host!"), &mut here).is_none());
        assert!(named(&seen, peer, &Request::new(()), &mut here).is_none());
    }
}
