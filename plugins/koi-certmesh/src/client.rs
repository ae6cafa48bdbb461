//! The member's client for the CA's API: one HTTPS request per connection over hyper's HTTP/1
//! client and rustls, trusting only the pinned CA ([`crate::tls::CaPin`]). Connect and whole
//! request have deadlines; every failure names the CA address and the next step.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use koi_sdk::MethodError;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error;
use crate::tls::CaPin;
use crate::wire::{DEFAULT_API_PORT, ErrorBody};

/// Connect deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Where a CA's API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaEndpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for CaEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl CaEndpoint {
    /// Parses `HOST`, `HOST:PORT`, `ADDR`, `[V6]:PORT` (default port 5641).
    pub fn parse(text: &str) -> Result<Self, MethodError> {
        let bad = || {
            error::fail(
                format!("{text:?} is not a CA address."),
                "Pass --ca HOST:PORT, e.g. --ca 10.77.0.1:5641 or --ca stone-01.local.",
            )
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(CaEndpoint {
                host: ip.to_string(),
                port: DEFAULT_API_PORT,
            });
        }
        if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
            return Ok(CaEndpoint {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (text, DEFAULT_API_PORT),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(CaEndpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// What a request to the CA produced.
pub enum Answer<T> {
    /// 2xx with the body parsed.
    Ok(T),
    /// 4xx/5xx with the CA's explanation.
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's body.
        body: ErrorBody,
    },
}

fn unreachable(endpoint: &CaEndpoint, cause: impl std::fmt::Display) -> MethodError {
    error::fail(
        format!("Failed to reach the certmesh CA at {endpoint}: {cause}."),
        "Is `koi daemon` running there? Try `koi certmesh status` on that machine.",
    )
}

/// Sends one request and reads the answer (at most [`MAX_RESPONSE_BYTES`]).
pub async fn request<B: Serialize, T: DeserializeOwned>(
    endpoint: &CaEndpoint,
    pin: &Arc<CaPin>,
    client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Answer<T>, MethodError> {
    request_up_to(
        endpoint,
        pin,
        client_auth,
        method,
        path,
        body,
        MAX_RESPONSE_BYTES,
    )
    .await
}

/// [`request`] reading an answer of at most `max_response` bytes (the standby's transfer and
/// roster manifests, [`crate::standby`], are larger than ordinary answers).
pub async fn request_up_to<B: Serialize, T: DeserializeOwned>(
    endpoint: &CaEndpoint,
    pin: &Arc<CaPin>,
    client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    method: Method,
    path: &str,
    body: Option<&B>,
    max_response: usize,
) -> Result<Answer<T>, MethodError> {
    let work = async {
        let config = pin
            .client_config(client_auth)
            .map_err(|e| unreachable(endpoint, e))?;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| unreachable(endpoint, "no answer within 5 s"))?
        .map_err(|e| unreachable(endpoint, e))?;
        let _ = stream.set_nodelay(true);
        let server_name = match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(endpoint.host.clone()).map_err(|e| unreachable(endpoint, e))?
            }
        };
        let tls = TlsConnector::from(Arc::new(config))
            .connect(server_name, stream)
            .await
            .map_err(|e| {
                error::fail(
                    format!("The TLS handshake with the certmesh CA at {endpoint} failed: {e}."),
                    "If the fingerprint changed, the machine at that address is not the CA you \
                     pinned: check `koi certmesh status` on the CA and compare fingerprints.",
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(endpoint, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = match body {
            Some(b) => serde_json::to_vec(b)
                .map_err(|e| MethodError::new(format!("Failed to encode the request: {e}")))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, endpoint.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| MethodError::new(format!("Failed to build the request: {e}")))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(endpoint, e))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), max_response)
            .collect()
            .await
            .map_err(|e| unreachable(endpoint, format!("the answer broke off ({e})")))?
            .to_bytes();
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map(Answer::Ok).map_err(|e| {
                error::fail(
                    format!(
                        "The certmesh CA at {endpoint} sent an answer this koi cannot read: {e}."
                    ),
                    "Make sure both machines run the same koi-certmesh version.",
                )
            })
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                reason: "unknown".into(),
                error: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
            Ok(Answer::Refused { status, body })
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| unreachable(endpoint, "no answer within 20 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_the_default_port() {
        let e = |s: &str| CaEndpoint::parse(s).unwrap().to_string();
        assert_eq!(e("10.77.0.1"), "10.77.0.1:5641");
        assert_eq!(e("10.77.0.1:7000"), "10.77.0.1:7000");
        assert_eq!(e("stone-01.local"), "stone-01.local:5641");
        assert_eq!(e("[fd00::1]:99"), "[fd00::1]:99");
        assert_eq!(e("fd00::1"), "[fd00::1]:5641");
        for bad in ["", "a b", "host:0", "host:x", "http://x"] {
            assert!(CaEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
