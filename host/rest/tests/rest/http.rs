//! Every route exercised with the real `curl`: status codes, bodies, `Allow`, `Location`, 413 for
//! oversized bodies (with and without Content-Length), 403 for foreign `Host` names, and, on every
//! response, `content-type: application/json` and no `access-control-*` header.

use crate::fake::{TestServer, daemon_status, manifests};
use crate::tools::available;
use serde_json::{Value, json};
use std::process::Command;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.data.path` of an error body.
    fn error_path(&self) -> &Value {
        &self.body["error"]["data"]["path"]
    }
}

/// Runs `curl -s -S -i <args>` and parses the final response. Asserts the invariants every
/// response must keep: JSON content type, a JSON body, no CORS headers.
fn curl(args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "120"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rest: &[u8] = &output.stdout;
    loop {
        let split = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(rest)));
        let head = String::from_utf8_lossy(&rest[..split]).into_owned();
        rest = &rest[split + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        // Interim responses, and redirects that `-L` followed, precede the final one.
        if status == 100 || ((300..400).contains(&status) && rest.starts_with(b"HTTP/")) {
            continue;
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let reply = Reply {
            status,
            headers,
            body: serde_json::from_slice(rest).unwrap_or_else(|e| {
                panic!(
                    "{args:?}: body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(rest)
                )
            }),
        };
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{args:?}"
        );
        assert!(
            !reply
                .headers
                .iter()
                .any(|(n, _)| n.to_ascii_lowercase().starts_with("access-control-")),
            "{args:?} sent CORS headers: {:?}",
            reply.headers
        );
        return reply;
    }
}

fn post_json(url: &str, body: &str) -> Reply {
    curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

macro_rules! need_curl {
    () => {
        if !available("curl", "apt-get install curl") {
            return;
        }
    };
}

#[test]
fn health_and_readiness() {
    need_curl!();
    let server = TestServer::start();
    let r = curl(&[&server.url("/healthz")]);
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"status": "alive"}))
    );
    let r = curl(&[&server.url("/readyz")]);
    assert_eq!((r.status, r.body.clone()), (200, json!({"ready": true})));

    server.fake.set_ready(false);
    let r = curl(&[&server.url("/readyz")]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"]["code"], -32003);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("handshake")
    );
    // Alive even when not ready.
    assert_eq!(curl(&[&server.url("/healthz")]).status, 200);

    let r = curl(&["-X", "POST", &server.url("/healthz")]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

#[test]
fn daemon_and_plugin_status() {
    need_curl!();
    let server = TestServer::start();
    let r = curl(&[&server.url("/v1/status")]);
    assert_eq!((r.status, r.body), (200, daemon_status()));

    // `/v1/<moniker>/status` is `call(moniker, "status", null)`; the fake echoes the params.
    let r = curl(&[&server.url("/v1/fake/status?ignored=1")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"state": "ok", "summary": "fake is fine", "details": {"params": null}})
    );
    let r = curl(&[&server.url("/v1/other-plug/status")]);
    assert_eq!(r.body["summary"], "other-plug is fine");
    let r = curl(&["-X", "POST", &server.url("/v1/fake/status")]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

#[test]
fn read_only_methods_convert_query_values_to_schema_types() {
    need_curl!();
    let server = TestServer::start();
    let r = curl(&[&server.url(
        "/v1/fake/scan?count=3&verbose=true&tags=a&tags=b%20c&ports=80&ports=443&mode=fast&limit=",
    )]);
    assert_eq!(r.status, 200, "{}", r.body);
    // The success body is the method's result exactly.
    assert_eq!(
        r.body,
        json!({
            "params": {"count": 3, "verbose": true, "tags": ["a", "b c"], "ports": [80, 443],
                       "mode": "fast", "limit": null},
            "items": [{"n": 1}, {"n": 2}, {"n": 3}]
        })
    );
    let r = curl(&[&server.url("/v1/fake/scan?count=1&tags=only&verbose=false&limit=5")]);
    assert_eq!(
        r.body["params"],
        json!({"count": 1, "tags": ["only"], "verbose": false, "limit": 5})
    );
}

#[test]
fn params_failures_are_400_naming_the_field() {
    need_curl!();
    let server = TestServer::start();
    for (query, path) in [
        ("", "/count"),          // required
        ("count=abc", "/count"), // not an integer
        ("count=0", "/count"),   // below minimum
        ("count=1&verbose=maybe", "/verbose"),
        ("count=1&ports=80&ports=x", "/ports/1"),
        ("count=1&mode=medium", "/mode"), // not in the enum
        ("count=1&extra=1", "/extra"),    // additionalProperties: false
        ("count=1&count=2", "/count"),    // given twice
    ] {
        let r = curl(&[&server.url(&format!("/v1/fake/scan?{query}"))]);
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.body["error"]["code"], -32002, "{query}");
        assert_eq!(r.error_path(), &json!(path), "{query}: {}", r.body);
        assert_eq!(r.body["error"]["data"]["payload"], "params");
    }
    let r = post_json(
        &server.url("/v1/fake/set"),
        r#"{"name": "x", "port": 70000}"#,
    );
    assert_eq!((r.status, r.error_path().clone()), (400, json!("/port")));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("/port"),
        "{}",
        r.body
    );
    let r = post_json(&server.url("/v1/fake/set"), r#"{"port": 80}"#);
    assert_eq!((r.status, r.error_path().clone()), (400, json!("/name")));
}

#[test]
fn mutating_methods_take_a_json_post() {
    need_curl!();
    let server = TestServer::start();
    let r = post_json(
        &server.url("/v1/fake/set"),
        r#"{"name": "grafana", "port": 3000, "labels": {"a": "b"}}"#,
    );
    assert_eq!(
        (r.status, r.body),
        (200, json!({"ok": true, "name": "grafana"}))
    );

    let r = post_json(&server.url("/v1/fake/set"), "{not json");
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (400, json!(-32700))
    );
    let r = post_json(&server.url("/v1/fake/set"), "");
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (400, json!(-32700))
    );

    // A body not declared as JSON is refused: web pages can send text/plain without a preflight.
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        r#"{"name": "x", "port": 1}"#,
        &server.url("/v1/fake/set"),
    ]);
    assert_eq!(r.status, 415);
    let r = curl(&["-X", "POST", &server.url("/v1/fake/set")]);
    assert_eq!(r.status, 415);
}

#[test]
fn local_only_methods_are_403_and_absent_from_openapi() {
    need_curl!();
    let server = TestServer::start();
    let r = post_json(&server.url("/v1/fake/sign"), "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not over the REST API")),
        "{}",
        r.body
    );
    let doc = curl(&[&server.url("/v1/openapi.json")]).body;
    assert!(
        doc["paths"].get("/v1/fake/sign").is_none(),
        "{}",
        doc["paths"]
    );
    assert!(doc["paths"].get("/v1/fake/set").is_some());
}

#[test]
fn the_wrong_verb_is_405_with_allow() {
    need_curl!();
    let server = TestServer::start();
    let r = post_json(&server.url("/v1/fake/scan"), r#"{"count": 1}"#);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = curl(&[&server.url("/v1/fake/set")]);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    for verb in ["PUT", "DELETE", "PATCH"] {
        let r = curl(&["-X", verb, &server.url("/v1/fake/set")]);
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "{verb}");
    }
    // A CORS preflight gets nothing beyond a 405 (and `curl` checks there are no CORS headers).
    let r = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: http://evil.example",
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: content-type",
        &server.url("/v1/fake/set"),
    ]);
    assert_eq!(r.status, 405);
    assert_eq!(r.body["error"]["code"], -32600);
}

#[test]
fn cross_origin_requests_get_no_cors_headers() {
    need_curl!();
    let server = TestServer::start();
    let r = curl(&[
        "-H",
        "Origin: http://evil.example",
        &server.url("/v1/fake/scan?count=1"),
    ]);
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[test]
fn unknown_paths_are_404_json() {
    need_curl!();
    let server = TestServer::start();
    for path in [
        "/",
        "/nope",
        "/v1",
        "/v1/",
        "/v1/fake",
        "/v1/fake/",
        "/v1/nope/scan",
        "/v1/fake/nope",
        "/v1/fake/scan/extra",
        "/v2/fake/scan",
        "/healthz/",
    ] {
        let r = curl(&[&server.url(path)]);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.body["error"]["code"], -32601, "{path}");
        assert!(r.body["error"]["message"].is_string(), "{path}");
    }
    let r = curl(&[&server.url("/v1/fake/nope")]);
    let hint = r.body["error"]["data"]["hint"].as_str().expect("hint");
    assert!(hint.contains("scan") && hint.contains("set"), "{hint}");
}

#[test]
fn interactive_methods_are_409() {
    need_curl!();
    let server = TestServer::start();
    let r = post_json(&server.url("/v1/fake/enroll"), "{}");
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], -32010);
}

#[test]
fn daemon_errors_map_to_statuses_with_the_error_object_as_body() {
    need_curl!();
    let server = TestServer::start();
    for (code, payload, status) in [
        (1, None, 422),
        (0, None, 422),
        (42, None, 422),
        (-32602, None, 400),
        (-32002, Some("params"), 400),
        (-32002, Some("result"), 502),
        (-32601, None, 404),
        (-32010, None, 409),
        (-32003, None, 503),
        (-32800, None, 503),
        (-32004, None, 504),
        (-32603, None, 502),
        (-32001, None, 502),
        (-32700, None, 502),
    ] {
        let mut query = format!("code={code}");
        let mut expected = json!({"code": code, "message": "fake failure",
                                  "data": {"hint": "Nothing to do: the fake always fails."}});
        if let Some(payload) = payload {
            query.push_str(&format!("&payload={payload}"));
            expected["data"]["payload"] = json!(payload);
        }
        let r = curl(&[&server.url(&format!("/v1/other-plug/fail?{query}"))]);
        assert_eq!(r.status, status, "code {code}");
        assert_eq!(r.body, json!({"error": expected}), "code {code}");
    }
}

#[test]
fn legacy_routes_redirect_with_301() {
    need_curl!();
    let server = TestServer::start();
    let base = server.url("");
    let redirect = |path: &str, extra: &[&str]| {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
            ])
            .args(extra)
            .arg(server.url(path))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(
        redirect("/scan?count=2&tags=a", &[]),
        format!("301 {base}/v1/fake/scan?count=2&tags=a")
    );
    assert_eq!(redirect("/scan", &[]), format!("301 {base}/v1/fake/scan"));
    assert_eq!(redirect("/fake", &[]), format!("301 {base}/v1/fake/status"));
    assert_eq!(
        redirect("/echo", &["-X", "POST"]),
        format!("301 {base}/v1/other-plug/echo")
    );

    let r = curl(&[&server.url("/scan?count=2")]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/v1/fake/scan?count=2"));
    // Following the redirect reaches the method.
    let r = curl(&["-L", &server.url("/scan?count=2")]);
    assert_eq!(
        (r.status, r.body["params"].clone()),
        (200, json!({"count": 2}))
    );
}

#[test]
fn bodies_over_the_limit_are_413() {
    need_curl!();
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.json");
    // Valid JSON, so only its size can be the problem: 2 MiB against the default 1 MiB cap.
    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    std::fs::write(&big, body).expect("write body");
    let at_big = format!("@{}", big.display());
    let url = server.url("/v1/other-plug/echo");
    let json_header = "content-type: application/json";

    let r = curl(&["-H", json_header, "--data-binary", &at_big, &url]);
    assert_eq!(r.status, 413, "with content-length: {}", r.body);
    assert_eq!(r.body["error"]["code"], -32005);

    let r = curl(&[
        "-H",
        json_header,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at_big,
        &url,
    ]);
    assert_eq!(r.status, 413, "chunked: {}", r.body);

    // Without `Expect: 100-continue` the body is sent whatever the answer; still a clean 413.
    let r = curl(&[
        "-H",
        json_header,
        "-H",
        "Expect:",
        "--data-binary",
        &at_big,
        &url,
    ]);
    assert_eq!(r.status, 413, "no expect: {}", r.body);

    // Just under the cap is fine.
    let small = dir.path().join("small.json");
    std::fs::write(
        &small,
        format!("{{\"pad\": \"{}\"}}", "y".repeat(1000 * 1024)),
    )
    .expect("write");
    let r = curl(&[
        "-H",
        json_header,
        "--data-binary",
        &format!("@{}", small.display()),
        &url,
    ]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["pad"].as_str().map(str::len), Some(1000 * 1024));
}

#[test]
fn foreign_host_names_are_refused() {
    need_curl!();
    let server = TestServer::start();
    let url = server.url("/v1/fake/scan?count=1");
    let r = curl(&["-H", "Host: evil.example", &url]);
    assert_eq!(r.status, 403);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("evil.example"),
        "{}",
        r.body
    );
    let port = server.addr.port();
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        let r = curl(&["-H", &format!("Host: {host}"), &url]);
        assert_eq!(r.status, 200, "{host}");
    }
}

#[test]
fn the_openapi_document_is_served_and_self_contained() {
    need_curl!();
    let server = TestServer::start();
    let r = curl(&[&server.url("/v1/openapi.json")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, koi_rest::openapi(&manifests()));
    assert_eq!(r.body["openapi"], "3.1.0");
    let text = r.body.to_string();
    assert!(!text.contains("$defs"), "unlifted $defs");
    // Every reference resolves inside the document.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| match (k.as_str(), v) {
                ("$ref", Value::String(r)) => out.push(r),
                _ => refs(v, out),
            }),
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&r.body, &mut found);
    assert!(
        found.contains(&"#/components/schemas/FakeScanMode"),
        "{found:?}"
    );
    assert!(
        found.contains(&"#/components/schemas/FakeScanItem"),
        "{found:?}"
    );
    for reference in found {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(
            r.body.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    let paths = r.body["paths"].as_object().expect("paths");
    assert!(paths["/v1/fake/scan"].get("get").is_some());
    assert!(paths["/v1/fake/set"].get("post").is_some());
    assert!(paths["/v1/fake/set"].get("get").is_none());
    assert!(paths.contains_key("/v1/other-plug/status"));
}
