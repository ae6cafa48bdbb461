//! Routing one request to its answer: the daemon's own routes (`/healthz`, `/readyz`,
//! `/v1/status`, `/v1/openapi.json`), plugin methods at `/v1/<moniker>/<method>` (GET with query
//! parameters for read-only methods, POST with a JSON body for mutating ones), every plugin's
//! `/v1/<moniker>/status`, and the manifests' legacy routes (301). Everything is derived from the
//! manifests the daemon reports at the time of the request: no plugin is named here.

use crate::api::DaemonApi;
use crate::openapi::openapi;
use crate::query::params_from_query;
use crate::reply::{self, Reply, http_status_for};
use crate::validate::{ParamsProblem, Validators, params_error};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode};
use koi_protocol::{Manifest, calls, codes, manifest::is_valid_moniker};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a client has to send a request body once its headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an oversized body is read and discarded, so that the client sees the 413 instead of
/// a connection reset; past this the connection is simply closed after the answer.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// Paths and names longer than this are cut in error messages.
const SHOWN_CHARS: usize = 128;

/// Whether a method name can be a path segment as it is (and so is served).
pub(crate) fn routable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Answers requests for one daemon.
pub(crate) struct Handler {
    api: Arc<dyn DaemonApi>,
    validators: Validators,
    max_body_bytes: usize,
    /// Refuse requests whose `Host` is not a loopback name (DNS-rebinding protection).
    loopback_only: bool,
}

impl Handler {
    pub(crate) fn new(api: Arc<dyn DaemonApi>, max_body_bytes: usize, loopback_only: bool) -> Self {
        Self {
            api,
            validators: Validators::default(),
            max_body_bytes,
            loopback_only,
        }
    }

    /// The answer to `request`. Never panics, whatever the request holds.
    pub(crate) async fn handle<B>(&self, request: Request<B>) -> Reply
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = request.into_parts();
        if let Some(reply) = host_header_problem(&parts.headers) {
            return reply;
        }
        if self.loopback_only {
            if let Some(reply) = foreign_host(&parts.headers, &parts.uri) {
                return reply;
            }
        }
        let path = parts.uri.path();
        let fixed = matches!(
            path,
            "/healthz" | "/readyz" | "/v1/status" | "/v1/openapi.json"
        );
        if fixed && parts.method != Method::GET {
            return reply::wrong_verb(path, &parts.method, &Method::GET);
        }
        match path {
            "/healthz" => reply::json(StatusCode::OK, &json!({"status": "alive"})),
            "/readyz" if self.api.ready() => reply::json(StatusCode::OK, &json!({"ready": true})),
            "/readyz" => reply::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::PLUGIN_UNAVAILABLE,
                "the daemon is not ready: not every plugin has completed its handshake".into(),
                "Wait a moment and ask again; GET /v1/status shows which plugin is still starting.",
            ),
            "/v1/status" => reply::json(StatusCode::OK, &self.api.status().await),
            "/v1/openapi.json" => reply::json(StatusCode::OK, &openapi(&self.api.manifests())),
            _ => self.dynamic(&parts, body).await,
        }
    }

    /// Plugin routes, legacy redirects, or 404.
    async fn dynamic<B>(&self, parts: &Parts, body: B) -> Reply
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let manifests = self.api.manifests();
        let path = parts.uri.path();
        if let Some(rest) = path.strip_prefix("/v1/") {
            let mut segments = rest.split('/');
            if let (Some(moniker), Some(method), None) =
                (segments.next(), segments.next(), segments.next())
            {
                if !moniker.is_empty() && !method.is_empty() {
                    return self.plugin(parts, body, &manifests, moniker, method).await;
                }
            }
        }
        legacy(&manifests, path, parts.uri.query()).unwrap_or_else(|| reply::no_route(&clip(path)))
    }

    async fn plugin<B>(
        &self,
        parts: &Parts,
        body: B,
        manifests: &[Manifest],
        moniker: &str,
        method: &str,
    ) -> Reply
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let path = parts.uri.path();
        let Some(manifest) = manifests
            .iter()
            .find(|m| m.name == moniker && is_valid_moniker(&m.name))
        else {
            return reply::failure(
                StatusCode::NOT_FOUND,
                codes::METHOD_NOT_FOUND,
                format!(
                    "no plugin named `{}` is running in the daemon",
                    clip(moniker)
                ),
                "GET /v1/status lists the running plugins; `koi plugins list` shows the installed ones.",
            );
        };
        if method == calls::STATUS {
            if parts.method != Method::GET {
                return reply::wrong_verb(path, &parts.method, &Method::GET);
            }
            return self.call(moniker, calls::STATUS, Value::Null).await;
        }
        let Some(spec) = manifest.method(method).filter(|m| routable(&m.name)) else {
            let known: Vec<&str> = manifest
                .methods
                .iter()
                .map(|m| m.name.as_str())
                .filter(|name| routable(name))
                .chain([calls::STATUS])
                .collect();
            return reply::failure(
                StatusCode::NOT_FOUND,
                codes::METHOD_NOT_FOUND,
                format!("koi-{moniker} has no method `{}`", clip(method)),
                &format!("Its methods are: {}.", known.join(", ")),
            );
        };
        if spec.local_only {
            return reply::failure(
                StatusCode::FORBIDDEN,
                codes::METHOD_NOT_FOUND,
                format!(
                    "koi-{moniker}'s `{}` is served only to the koi CLI and other plugins, not over \
                     the REST API (which has no authentication)",
                    clip(method)
                ),
                &format!("Run `koi {moniker} {}` as the daemon's user.", clip(method)),
            );
        }
        let expected = if spec.mutating {
            Method::POST
        } else {
            Method::GET
        };
        if parts.method != expected {
            return reply::wrong_verb(path, &parts.method, &expected);
        }
        let params = if spec.mutating {
            match self.json_body(&parts.headers, body).await {
                Ok(params) => params,
                Err(reply) => return reply,
            }
        } else {
            match params_from_query(&spec.params, parts.uri.query()) {
                Ok(params) => params,
                Err(e) => {
                    return reply::error(
                        StatusCode::BAD_REQUEST,
                        &params_error(moniker, method, e.path, e.message),
                    );
                }
            }
        };
        match self
            .validators
            .check(moniker, method, &spec.params, &params)
        {
            Ok(()) => self.call(moniker, method, params).await,
            Err(ParamsProblem::Invalid(e)) => reply::error(StatusCode::BAD_REQUEST, &e),
            Err(ParamsProblem::BadSchema(e)) => reply::error(StatusCode::BAD_GATEWAY, &e),
        }
    }

    async fn call(&self, moniker: &str, method: &str, params: Value) -> Reply {
        match self
            .api
            .call(moniker.to_owned(), method.to_owned(), params)
            .await
        {
            Ok(result) => reply::json(StatusCode::OK, &result),
            Err(error) => reply::error(http_status_for(&error), &error),
        }
    }

    /// The request body as JSON: declared `application/json`, at most `max_body_bytes`, received
    /// within [`BODY_READ_TIMEOUT`].
    async fn json_body<B>(&self, headers: &HeaderMap, body: B) -> Result<Value, Reply>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if !declares_json(headers) {
            return Err(reply::failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::INVALID_REQUEST,
                "the request body is not declared as JSON".into(),
                "Send the params as a JSON object with `content-type: application/json`.",
            ));
        }
        let limit = u64::try_from(self.max_body_bytes).unwrap_or(u64::MAX);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let expects_continue = headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if let Some(declared) = declared {
            // Don't invite (100-continue) or drain a body that is known to be refused.
            if declared > limit
                && (expects_continue || declared > limit.saturating_add(DRAIN_BYTES))
            {
                return Err(self.too_large());
            }
        }
        let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(body, limit)).await {
            Err(_) => {
                return Err(reply::failure(
                    StatusCode::REQUEST_TIMEOUT,
                    codes::INVALID_REQUEST,
                    format!(
                        "the request body did not arrive within {} seconds",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                    "Send the whole body at once.",
                ));
            }
            Ok(Err(BodyProblem::TooLarge)) => return Err(self.too_large()),
            Ok(Err(BodyProblem::Read(e))) => {
                return Err(reply::failure(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    format!("the request body could not be read: {e}"),
                    "Send a complete body with a correct content-length or chunked encoding.",
                ));
            }
            Ok(Ok(bytes)) => bytes,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(reply::failure(
                StatusCode::BAD_REQUEST,
                codes::PARSE_ERROR,
                "the request body is empty".into(),
                "Send the params as a JSON object: `{}` when the method takes none.",
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            reply::failure(
                StatusCode::BAD_REQUEST,
                codes::PARSE_ERROR,
                format!("the request body is not valid JSON: {e}"),
                "Send the params as a JSON object, e.g. {\"name\": \"x\"}.",
            )
        })
    }

    fn too_large(&self) -> Reply {
        let mut reply = reply::failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::FRAME_TOO_LARGE,
            format!(
                "the request body is larger than the {} bytes this API accepts",
                self.max_body_bytes
            ),
            "Send smaller params; large inputs belong in files the plugin reads.",
        );
        reply
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        reply
    }
}

enum BodyProblem {
    TooLarge,
    Read(String),
}

/// Reads at most `limit` bytes of `body`. A longer body is read on (and discarded) up to
/// [`DRAIN_BYTES`] more, then reported as too large.
async fn read_limited<B>(mut body: B, limit: u64) -> Result<Vec<u8>, BodyProblem>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut bytes = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyProblem::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        if total <= limit {
            bytes.extend_from_slice(&data);
        } else if total > limit.saturating_add(DRAIN_BYTES) {
            return Err(BodyProblem::TooLarge);
        }
    }
    if total > limit {
        return Err(BodyProblem::TooLarge);
    }
    Ok(bytes)
}

/// Whether `content-type` is `application/json` or `application/<something>+json`.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// 403 when the `Host` header names something other than this machine's loopback: a web page
/// that rebinds its own name to 127.0.0.1 must not reach the API.
/// A 400 unless the request carries exactly one `Host` header (RFC 9112 §3.2: a server must
/// answer 400 to a request with none or several). Without it the loopback-name check below could
/// not be applied, so such a request is never served.
fn host_header_problem(headers: &HeaderMap) -> Option<Reply> {
    let count = headers.get_all(header::HOST).iter().count();
    let message = match count {
        1 => return None,
        0 => "the request has no `Host` header; this API answers only requests that name it"
            .to_owned(),
        n => format!("the request has {n} `Host` headers; exactly one is allowed"),
    };
    Some(reply::failure(
        StatusCode::BAD_REQUEST,
        codes::INVALID_REQUEST,
        message,
        "Send one `Host` header naming this API, e.g. `Host: 127.0.0.1:<port>` (curl, browsers and \
         HTTP libraries do this themselves for http://127.0.0.1:<port>/).",
    ))
}

/// A 403 when the `Host` header, or the authority of an absolute-form request target, is not a
/// loopback name.
fn foreign_host(headers: &HeaderMap, uri: &hyper::Uri) -> Option<Reply> {
    let named = headers
        .get(header::HOST)
        .map(|host| host.to_str().unwrap_or("").to_owned());
    let target = uri.authority().map(|a| a.as_str().to_owned());
    let text = [named, target]
        .into_iter()
        .flatten()
        .find(|host| !is_loopback_host(host))?;
    Some(reply::failure(
        StatusCode::FORBIDDEN,
        codes::INVALID_REQUEST,
        format!(
            "requests for the host `{}` are refused: this API answers only to loopback names",
            clip(&text)
        ),
        "Address it as http://127.0.0.1:<port>/ or http://localhost:<port>/. (This guards against \
         web pages that rebind their name to this machine.)",
    ))
}

/// `localhost`, `*.localhost`, a loopback IP address; each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A 301 to `/v1/<moniker>/<method>` (query kept) when a manifest lists `path` as a legacy route.
fn legacy(manifests: &[Manifest], path: &str, query: Option<&str>) -> Option<Reply> {
    let (moniker, method) = manifests
        .iter()
        .filter(|m| is_valid_moniker(&m.name))
        .find_map(|m| {
            m.legacy_routes
                .iter()
                .find(|r| r.path == path && routable(&r.method))
                .map(|r| (m.name.as_str(), r.method.as_str()))
        })?;
    let mut location = format!("/v1/{moniker}/{method}");
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let value = HeaderValue::from_str(&location).ok()?;
    let mut reply = reply::json(
        StatusCode::MOVED_PERMANENTLY,
        &json!({"location": location, "deprecated": format!("{path} moved to /v1/{moniker}/{method}")}),
    );
    reply.headers_mut().insert(header::LOCATION, value);
    Some(reply)
}

fn clip(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(SHOWN_CHARS).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:7240",
            "127.0.0.1",
            "127.0.0.1:7240",
            "127.8.9.10:1",
            "[::1]:7240",
            "[::1]",
            "koi.localhost:80",
            "localhost.",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7240",
            "localhost.evil.example",
            "10.0.0.1:7240",
            "[fe80::1]:7240",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn routable_names() {
        assert!(routable("discover") && routable("list-things") && routable("a_b.c"));
        assert!(!routable("") && !routable("..") && !routable("a/b") && !routable("a b"));
    }

    #[test]
    fn json_content_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            declares_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!declares_json(&HeaderMap::new()));
    }
}
