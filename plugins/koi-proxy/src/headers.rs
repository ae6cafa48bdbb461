//! Header rewriting between client and backend: hop-by-hop headers removed (RFC 9110 §7.6.1,
//! including those a `Connection` header names), and the forwarding headers set —
//! `X-Forwarded-For`, `X-Forwarded-Proto: https`, `X-Forwarded-Host` and RFC 7239 `Forwarded`.
//! Incoming forwarding headers are replaced unless the peer is a configured trusted proxy, in
//! which case this hop is appended to them.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers that never cross the proxy (parsed names: removing one is a lookup, not a
/// parse, on every request and response).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers and those listed in `Connection`. With `keep_upgrade`, `Upgrade`
/// survives and `Connection: upgrade` is set again (for a 101 handshake).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = if keep_upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `for=` node of RFC 7239 (IPv6 quoted in brackets).
fn node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("\"[{v6}]\""),
        },
    }
}

/// A value as an RFC 7230 token, or quoted.
fn token_or_quoted(value: &str) -> String {
    let token = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Replaces `name` with `ours`, or with the incoming values followed by `ours` when `trusted`.
fn append(headers: &mut HeaderMap, name: &HeaderName, ours: &HeaderValue, trusted: bool) {
    if trusted {
        let old: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !old.is_empty() {
            let merged = format!("{}, {}", old.join(", "), ours.to_str().unwrap_or_default());
            match HeaderValue::from_str(&merged) {
                Ok(v) => headers.insert(name, v),
                Err(_) => headers.remove(name),
            };
            return;
        }
    }
    headers.insert(name, ours.clone());
}

/// The forwarding header values for one client address and one `Host`, made once and set on
/// every request that matches them (a client connection keeps both for all its requests, so
/// [`crate::forward::Conn`] keeps one of these instead of formatting them per request).
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// `Host` as the client sent it (with its port, if any): `Host` and `X-Forwarded-Host`.
    pub raw_host: HeaderValue,
    /// The client's address as text (IPv4-mapped IPv6 as IPv4): `X-Forwarded-For`.
    peer: HeaderValue,
    /// This hop's RFC 7239 element, `for=…;host=…;proto=https`: `Forwarded`.
    element: HeaderValue,
}

impl Forwarding {
    /// The values for requests from `peer` naming `raw_host`; `None` when `raw_host` cannot be a
    /// header value.
    pub fn new(peer: IpAddr, raw_host: &str) -> Option<Self> {
        let peer_text = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        }
        .to_string();
        let element = format!(
            "for={};host={};proto=https",
            node(peer),
            token_or_quoted(raw_host)
        );
        Some(Self {
            raw_host: HeaderValue::from_str(raw_host).ok()?,
            peer: HeaderValue::from_str(&peer_text).ok()?,
            element: HeaderValue::from_str(&element).ok()?,
        })
    }

    /// Sets the forwarding headers on a request (see [`set_forwarded`]).
    pub fn apply(&self, headers: &mut HeaderMap, trusted: bool) {
        append(headers, &X_FORWARDED_FOR, &self.peer, trusted);
        let keep_proto_host = trusted
            && headers.contains_key(&X_FORWARDED_PROTO)
            && headers.contains_key(&X_FORWARDED_HOST);
        if !keep_proto_host {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
            headers.insert(&X_FORWARDED_HOST, self.raw_host.clone());
        }
        append(headers, &header::FORWARDED, &self.element, trusted);
        headers.remove(&X_REAL_IP);
    }
}

/// Sets the forwarding headers for a request from `peer` to `host` over HTTPS: incoming ones
/// replaced, or this hop appended to them when the peer is `trusted`.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, host: &str, trusted: bool) {
    match Forwarding::new(peer, host) {
        Some(f) => f.apply(headers, trusted),
        None => {
            for name in [
                &X_FORWARDED_FOR,
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &X_REAL_IP,
            ] {
                headers.remove(name);
            }
            headers.remove(header::FORWARDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_forwarding_headers_are_replaced_unless_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        let mut trusted = h.clone();
        set_forwarded(&mut h, "10.0.0.2".parse().unwrap(), "grafana.lan", false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "grafana.lan");
        assert_eq!(h["forwarded"], "for=10.0.0.2;host=grafana.lan;proto=https");
        set_forwarded(&mut trusted, "10.0.0.2".parse().unwrap(), "g.lan", true);
        assert_eq!(trusted["x-forwarded-for"], "6.6.6.6, 10.0.0.2");
        assert_eq!(
            trusted["forwarded"],
            "for=6.6.6.6, for=10.0.0.2;host=g.lan;proto=https"
        );
        let mut v6 = HeaderMap::new();
        set_forwarded(&mut v6, "fe80::1".parse().unwrap(), "g.lan:8443", false);
        assert_eq!(
            v6["forwarded"],
            "for=\"[fe80::1]\";host=\"g.lan:8443\";proto=https"
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        let mut u = HeaderMap::new();
        u.insert("connection", HeaderValue::from_static("Upgrade"));
        u.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&u));
        strip_hop_by_hop(&mut u, true);
        assert_eq!(u["upgrade"], "websocket");
        assert_eq!(u["connection"], "upgrade");
    }
}
