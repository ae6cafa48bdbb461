//! The `Host` header rule (issue 9), over raw TCP so the exact request bytes are sent: a request
//! with no `Host` header, or with two, is answered 400 with a JSON reason; an absolute-form request
//! target naming a foreign host is refused like a foreign `Host` (DNS-rebinding protection); a
//! loopback `Host` is served.

use crate::fake::TestServer;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Upper bound on any wait: it only keeps a broken server from hanging the suite.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Sends `request` as is and returns (status, JSON body) of the answer.
fn exchange(server: &TestServer, request: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("body not JSON ({e}): {body}"));
    (status, body)
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn a_request_without_a_host_header_is_answered_400_with_a_reason() {
    let server = TestServer::start();
    for request in [
        "GET /v1/fake/scan?count=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /v1/status HTTP/1.0\r\n\r\n",
    ] {
        let (status, body) = exchange(&server, request);
        assert_eq!(status, 400, "{request:?}: {body}");
        assert!(message(&body).contains("no `Host` header"), "{body}");
        let hint = body["error"]["data"]["hint"].as_str().unwrap_or("");
        assert!(hint.contains("Host: 127.0.0.1"), "{body}");
    }
}

#[test]
fn a_request_with_two_host_headers_is_answered_400() {
    let server = TestServer::start();
    let port = server.addr.port();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = exchange(&server, &request);
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("2 `Host` headers"), "{body}");
}

#[test]
fn an_absolute_request_target_naming_a_foreign_host_is_refused() {
    let server = TestServer::start();
    let port = server.addr.port();
    let request = format!(
        "GET http://evil.example/v1/fake/scan?count=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = exchange(&server, &request);
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("evil.example"), "{body}");
    // The same request addressed to a loopback name is served.
    let request = format!(
        "GET http://localhost:{port}/healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = exchange(&server, &request);
    assert_eq!(status, 200, "{body}");
}
