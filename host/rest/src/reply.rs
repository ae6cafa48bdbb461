//! Building responses: every response is JSON with `content-type: application/json`, every
//! failure is `{"error": ErrorObject}`, and [`http_status_for`] maps the daemon's JSON-RPC errors
//! to HTTP statuses.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use koi_protocol::{ErrorObject, codes};
use serde_json::{Value, json};

/// The body type of every response.
pub(crate) type Body = Full<Bytes>;

/// A finished response.
pub(crate) type Reply = Response<Body>;

/// The HTTP status for an error returned by [`crate::DaemonApi::call`].
///
/// | JSON-RPC error | HTTP |
/// |---|---|
/// | `-32602` invalid params, `-32002` with `data.payload == "params"` | 400 |
/// | `-32601` no such method (or plugin) | 404 |
/// | `-32010` a person must answer at a terminal | 409 |
/// | any code `>= 0` (a domain failure) | 422 |
/// | `-32003` plugin unavailable, `-32800` cancelled | 503 |
/// | `-32004` timeout | 504 |
/// | any negative code with `data.caller` (a plugin's `host/call` the callee refused) | 502 |
/// | anything else (internal errors, result schema violations, protocol errors) | 502 |
pub fn http_status_for(error: &ErrorObject) -> StatusCode {
    // `data.caller`: one plugin sent another something it refused, a plugin bug behind the API.
    let plugin_caused = error.data.as_ref().and_then(|d| d.get("caller")).is_some();
    match error.code {
        code if code >= 0 => StatusCode::UNPROCESSABLE_ENTITY,
        _ if plugin_caused => StatusCode::BAD_GATEWAY,
        codes::INVALID_PARAMS => StatusCode::BAD_REQUEST,
        codes::SCHEMA_VIOLATION if is_params_violation(error) => StatusCode::BAD_REQUEST,
        codes::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        codes::USER_INPUT_UNAVAILABLE => StatusCode::CONFLICT,
        codes::PLUGIN_UNAVAILABLE | codes::REQUEST_CANCELLED => StatusCode::SERVICE_UNAVAILABLE,
        codes::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn is_params_violation(error: &ErrorObject) -> bool {
    error
        .data
        .as_ref()
        .and_then(|d| d.get("payload"))
        .and_then(Value::as_str)
        == Some("params")
}

/// A JSON response with `status` and `value` as the body.
pub(crate) fn json(status: StatusCode, value: &Value) -> Reply {
    // Serialising a `Value` cannot fail (its map keys are strings); fall back to `null` anyway.
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `{"error": error}` with `status`.
pub(crate) fn error(status: StatusCode, error: &ErrorObject) -> Reply {
    json(status, &json!({ "error": error }))
}

/// An error built from its parts, with `data.hint` set.
pub(crate) fn failure(status: StatusCode, code: i64, message: String, hint: &str) -> Reply {
    error(status, &ErrorObject::new(code, message).with_hint(hint))
}

/// 404 for a path nothing answers.
pub(crate) fn no_route(path: &str) -> Reply {
    failure(
        StatusCode::NOT_FOUND,
        codes::METHOD_NOT_FOUND,
        format!("nothing is served at {path}"),
        "Plugin methods are at /v1/<plugin>/<method>; GET /v1/openapi.json lists every route.",
    )
}

/// 405 with an `Allow` header naming the one verb the route takes.
pub(crate) fn wrong_verb(path: &str, used: &hyper::Method, allowed: &hyper::Method) -> Reply {
    let hint = if *allowed == hyper::Method::POST {
        "This route changes state: send POST with a JSON body (content-type: application/json)."
    } else {
        "This route only reads: send GET, with any parameters in the query string."
    };
    let mut response = failure(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::INVALID_REQUEST,
        format!("{path} does not accept {used}; it accepts {allowed}"),
        hint,
    );
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i64, data: Option<Value>) -> u16 {
        let mut error = ErrorObject::new(code, "x");
        error.data = data;
        http_status_for(&error).as_u16()
    }

    #[test]
    fn mapping_table() {
        assert_eq!(status(codes::INVALID_PARAMS, None), 400);
        assert_eq!(
            status(
                codes::SCHEMA_VIOLATION,
                Some(json!({"payload": "params", "path": "/port"}))
            ),
            400
        );
        assert_eq!(
            status(codes::SCHEMA_VIOLATION, Some(json!({"payload": "result"}))),
            502
        );
        assert_eq!(status(codes::SCHEMA_VIOLATION, None), 502);
        assert_eq!(status(codes::METHOD_NOT_FOUND, None), 404);
        assert_eq!(status(0, None), 422);
        assert_eq!(status(codes::METHOD_FAILED, None), 422);
        assert_eq!(status(4711, None), 422);
        assert_eq!(status(codes::USER_INPUT_UNAVAILABLE, None), 409);
        assert_eq!(status(codes::PLUGIN_UNAVAILABLE, None), 503);
        assert_eq!(status(codes::REQUEST_CANCELLED, None), 503);
        assert_eq!(status(codes::TIMEOUT, None), 504);
        assert_eq!(status(codes::INTERNAL_ERROR, None), 502);
        assert_eq!(status(codes::PROTOCOL_MISMATCH, None), 502);
        assert_eq!(status(codes::FRAME_TOO_LARGE, None), 502);
        assert_eq!(status(-1, None), 502);
    }

    #[test]
    fn a_plugins_refused_host_call_is_a_bad_gateway_not_a_bad_request() {
        let caller = |payload: Option<&str>| {
            let mut data = json!({"caller": "certmesh"});
            if let Some(p) = payload {
                data["payload"] = json!(p);
            }
            Some(data)
        };
        assert_eq!(status(codes::SCHEMA_VIOLATION, caller(Some("params"))), 502);
        assert_eq!(status(codes::INVALID_PARAMS, caller(None)), 502);
        assert_eq!(status(codes::METHOD_NOT_FOUND, caller(None)), 502);
        assert_eq!(status(1, caller(None)), 422);
    }

    #[test]
    fn every_reply_is_json() {
        let r = wrong_verb("/x", &hyper::Method::GET, &hyper::Method::POST);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::ALLOW], "POST");
    }
}
