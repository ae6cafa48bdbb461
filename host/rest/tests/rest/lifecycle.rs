//! The listener's life, over raw TCP: the loopback rule and bind errors, the header read timeout,
//! and graceful shutdown (stop accepting, finish the request in flight, close idle connections).

use crate::fake::TestServer;
use koi_rest::{RestConfig, RestError, RestServer};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Upper bound on any wait in these tests: it only keeps a broken server from hanging the suite.
const HANG_GUARD: Duration = Duration::from_secs(60);

#[test]
fn defaults_are_loopback_7240_1mib_10s() {
    let config = RestConfig::default();
    assert_eq!(config.bind, SocketAddr::from(([127, 0, 0, 1], 7240)));
    assert!(!config.allow_non_loopback);
    assert_eq!(config.max_body_bytes, 1024 * 1024);
    assert_eq!(config.header_read_timeout, Duration::from_secs(10));
}

#[tokio::test]
async fn non_loopback_addresses_are_refused_unless_allowed() {
    for addr in ["0.0.0.0:0", "[::]:7240", "192.0.2.1:7240"] {
        let config = RestConfig {
            bind: addr.parse().expect("address"),
            ..RestConfig::default()
        };
        let error = RestServer::bind(config).await.expect_err("refused");
        assert!(matches!(error, RestError::NonLoopback { .. }), "{error:?}");
        let message = error.to_string();
        let shown = addr.parse::<SocketAddr>().expect("address").to_string();
        assert!(message.contains(&shown), "{message}");
        assert!(message.contains("allow_non_loopback"), "{message}");
    }
    // Allowed loopback addresses bind (non-loopback ones are not bound here: tests stay on
    // loopback).
    let config = RestConfig {
        bind: "127.0.0.1:0".parse().expect("address"),
        allow_non_loopback: true,
        ..RestConfig::default()
    };
    let server = RestServer::bind(config).await.expect("bind");
    assert!(server.local_addr().ip().is_loopback());
    assert_ne!(server.local_addr().port(), 0);
}

#[tokio::test]
async fn a_taken_port_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let error = RestServer::bind(RestConfig {
        bind: addr,
        ..RestConfig::default()
    })
    .await
    .expect_err("taken");
    assert!(matches!(error, RestError::Bind { .. }), "{error:?}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[test]
fn slow_headers_are_cut_off() {
    let server = TestServer::with_config(RestConfig {
        bind: "127.0.0.1:0".parse().expect("address"),
        header_read_timeout: Duration::from_secs(1),
        ..RestConfig::default()
    });
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    // Headers never finished: no blank line.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("write");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("200 OK"), "{text}");
}

fn send(stream: &mut TcpStream, path: &str, keep_alive: bool) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n"
    )
    .expect("write request");
}

#[test]
fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let server = TestServer::start();
    let addr = server.addr;
    let waits = server.fake.watch_waits();

    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    send(&mut idle, "/healthz", true);
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).expect("response");
    assert_eq!(&first, b"HTTP/1.1 200");

    // A request in flight when shutdown begins.
    let in_flight = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
        send(&mut stream, "/v1/other-plug/wait", false);
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    });
    waits
        .recv_timeout(HANG_GUARD)
        .expect("the wait call started");

    server.shutdown.cancel();
    // New connections are refused once the listener is gone.
    let refused = (0..600).any(|_| {
        if TcpStream::connect(addr).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(refused, "the listener still accepts after shutdown");

    server.fake.release.notify_waiters();
    let response = in_flight.join().expect("client thread");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"waited":true}"#), "{response}");
    server.stop();

    // The idle connection was closed by the server.
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
}
