//! What goes through the proxy: HTTP/1.1 and HTTP/2 with the forwarding headers set (and a
//! spoofed one replaced), two entries on :443 chosen by SNI, an unknown SNI refused, a WebSocket
//! echo, an SSE stream event by event, and a 1 GiB download with the proxy's memory flat.

use super::{Site, presented_serial, text};
use crate::support::{poll_until, root_or_skip, rss_kib};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn curl_over_http1_and_http2_reaches_the_backend_with_forwarding_headers_and_a_spoof_replaced() {
    if !root_or_skip("proxy curl http1/http2") {
        return;
    }
    let mut site = Site::new("pxh", 2);
    site.write_cert(&["grafana.lan"]);
    let gate = site.work().join("gate");
    let _backend = site.backend(3000, "grafana", &gate);
    site.start();
    let added = site.add(&[
        "grafana",
        "--listen",
        "443",
        "--backend",
        "http://localhost:3000",
    ]);
    assert_eq!(added["entry"]["host"], "grafana.lan", "{added:#}");
    assert_eq!(added["serving"], true);
    site.wait_listening("grafana");
    let client_ip = site.lab.host(1).ip.clone();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = site.curl(
            1,
            "grafana.lan",
            "/hello?x=1",
            &[
                flag,
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "Forwarded: for=6.6.6.6",
                "-w",
                "\n%{http_version}",
            ],
        );
        let body = text(&out);
        let (json, got_version) = body.rsplit_once('\n').expect("body and version");
        assert_eq!(
            got_version,
            version,
            "{body}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_str(json).expect("backend JSON");
        assert_eq!(seen["name"], "grafana");
        assert_eq!(seen["path"], "/hello?x=1");
        let h = &seen["headers"];
        assert_eq!(h["x-forwarded-for"], client_ip.as_str(), "{h:#}");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "grafana.lan");
        assert_eq!(h["host"], "grafana.lan");
        assert_eq!(
            h["forwarded"],
            format!("for={client_ip};host=grafana.lan;proto=https").as_str()
        );
    }
    // TLS 1.3 and 1.2, each with the proxy's own cipher order, not curl's: OpenSSL asks for
    // AES-256-GCM first, the proxy answers with AES-128-GCM (a CPU with AES instructions) or
    // ChaCha20-Poly1305 (one without; `certs::suite_rank` decides, unit-tested there).
    for (max, chosen) in [
        (
            "1.3",
            [
                "TLSv1.3 / TLS_AES_128_GCM_SHA256",
                "TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256",
            ],
        ),
        (
            "1.2",
            [
                "TLSv1.2 / ECDHE-ECDSA-AES128-GCM-SHA256",
                "TLSv1.2 / ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
        ),
    ] {
        let out = site.curl(
            1,
            "grafana.lan",
            "/",
            &[
                "-v",
                "--tls-max",
                max,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ],
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(text(&out), "200", "TLS {max}: {log}");
        assert!(
            chosen.iter().any(|c| log.contains(c)),
            "TLS {max}: want one of {chosen:?} in {log}"
        );
    }
    // Three requests on one client connection whose backend connection closes after each.
    let out = site.curl(
        1,
        "grafana.lan",
        "/close",
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}%{num_connects} ",
            "https://grafana.lan/close",
            "https://grafana.lan/close",
        ],
    );
    assert_eq!(
        text(&out),
        "2001 2000 2000 ",
        "one client connection, three answers"
    );
    // A POST body streams to the backend.
    let out = site.curl(1, "grafana.lan", "/post", &["--data-binary", "payload-123"]);
    let seen: Value = serde_json::from_str(&text(&out)).expect("backend JSON");
    assert_eq!(seen["posted"], "payload-123");
    let entry = site.entry("grafana");
    assert!(entry["requests"].as_u64() >= Some(3), "{entry:#}");
}

#[test]
fn two_entries_share_443_by_sni_and_an_unknown_sni_gets_no_certificate() {
    if !root_or_skip("proxy sni") {
        return;
    }
    let mut site = Site::new("pxs", 2);
    let serial = site.write_cert(&["grafana.lan", "jellyfin.lan"]);
    let gate = site.work().join("gate");
    let _g = site.backend(3000, "grafana", &gate);
    let _j = site.backend(3001, "jellyfin", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.add(&["jellyfin", "--backend", "http://127.0.0.1:3001"]);
    site.wait_listening("jellyfin");
    for name in ["grafana", "jellyfin"] {
        let out = site.curl(1, &format!("{name}.lan"), "/", &[]);
        let seen: Value = serde_json::from_str(&text(&out)).unwrap_or_else(|e| {
            panic!(
                "{name}: {e}: {}{}",
                text(&out),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(seen["name"], name);
    }
    let client = site.lab.host(1);
    assert_eq!(
        presented_serial(client, &site.a().ip, "grafana.lan"),
        Some(serial)
    );
    assert_eq!(presented_serial(client, &site.a().ip, "other.lan"), None);
    // A Host naming an entry the SNI did not choose, or none at all: never an open proxy.
    let out = site.curl(
        1,
        "grafana.lan",
        "/",
        &[
            "-H",
            "Host: example.com",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    assert_eq!(text(&out), "421");
}

#[test]
fn a_websocket_echo_and_an_sse_stream_pass_through_as_they_happen() {
    if !root_or_skip("proxy websocket sse") {
        return;
    }
    let mut site = Site::new("pxw", 2);
    site.write_cert(&["grafana.lan", "ws.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    let _ws = site.ws_backend(3002);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.add(&["ws", "--backend", "http://127.0.0.1:3002"]);
    site.wait_listening("ws");
    let echo = poll_until(
        "a WebSocket echo through the proxy",
        Duration::from_millis(200),
        || {
            let out = site
                .ws_client(1, "client", "ws.lan")
                .output()
                .expect("ws.py client");
            format!("{}{}", text(&out), String::from_utf8_lossy(&out.stderr))
        },
        |out| out.contains("hello 2"),
    );
    assert_eq!(echo.trim(), "hello 0\nhello 1\nhello 2");

    // SSE: the first event arrives while the backend still holds the second back.
    let mut curl = site
        .curl_command(1, "grafana.lan", 443, "/sse", &["-N", "--max-time", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl sse");
    let mut lines = BufReader::new(curl.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "data: one");
    assert!(!gate.exists(), "the second event is still held back");
    std::fs::write(&gate, "go").expect("open the gate");
    let rest: Vec<String> = lines
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(rest, vec!["data: two".to_owned()]);
    let _ = curl.wait();
}

#[test]
fn a_1_gib_download_streams_through_with_the_proxy_rss_flat() {
    if !root_or_skip("proxy 1 GiB") {
        return;
    }
    let mut site = Site::new("pxg", 2);
    site.write_cert(&["grafana.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.wait_listening("grafana");
    let pid = proxy_pid(&site);
    site.curl(1, "grafana.lan", "/", &["-o", "/dev/null"]); // warm: TLS, pool, buffers
    let before = rss_kib(pid);
    let gib = (1u64 << 30).to_string();
    let mut curl = site
        .curl_command(
            1,
            "grafana.lan",
            443,
            &format!("/big/{gib}"),
            &[
                "--max-time",
                "600",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl 1 GiB");
    let mut peak = before;
    while curl.try_wait().expect("wait").is_none() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = curl.wait_with_output().expect("curl output");
    assert_eq!(text(&out), gib, "the whole GiB arrived");
    eprintln!("koi-proxy RSS: {before} KiB before, {peak} KiB at most while streaming 1 GiB");
    assert!(
        peak < before + 32 * 1024,
        "the proxy's RSS grew from {before} KiB to {peak} KiB while streaming 1 GiB"
    );
}

/// The pid of the koi-proxy process under host `a`'s daemon.
pub fn proxy_pid(site: &Site) -> u32 {
    let status = site.a().env.daemon_status();
    status["plugins"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["name"] == "proxy" || p["moniker"] == "proxy")
        })
        .and_then(|p| p["supervision"]["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no koi-proxy pid in {status:#}"))
}

#[test]
fn plain_http_redirects_to_https_when_asked_and_a_trusted_proxy_keeps_its_forwarded_chain() {
    if !root_or_skip("proxy redirect trusted") {
        return;
    }
    let mut site = Site::new("pxp", 2);
    site.write_cert(&["grafana.lan", "jellyfin.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    let client_ip = site.lab.host(1).ip.clone();
    site.add(&[
        "grafana",
        "--backend",
        "http://127.0.0.1:3000",
        "--redirect-http",
        "80",
    ]);
    site.add(&[
        "jellyfin",
        "--listen",
        "8443",
        "--backend",
        "http://127.0.0.1:3000",
        "--trusted-proxy",
        &format!("{client_ip}/32"),
    ]);
    site.wait_listening("jellyfin");
    // Plain HTTP on :80: a 308 to the same path over HTTPS, for the entry that asked only.
    let resolve = format!("grafana.lan:80:{}", site.a().ip);
    let out = site
        .lab
        .host(1)
        .command(
            "curl",
            &[
                "-sS",
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "http://grafana.lan/a/b?c=1",
            ],
        )
        .output()
        .expect("curl");
    assert_eq!(text(&out), "308 https://grafana.lan/a/b?c=1");
    let resolve = format!("jellyfin.lan:80:{}", site.a().ip);
    let out = site
        .lab
        .host(1)
        .command(
            "curl",
            &[
                "-sS",
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://jellyfin.lan/",
            ],
        )
        .output()
        .expect("curl");
    assert_eq!(text(&out), "421");
    // The client is a trusted proxy for jellyfin: its chain is kept and this hop appended.
    let out = site
        .curl_command(
            1,
            "jellyfin.lan",
            8443,
            "/",
            &["-H", "X-Forwarded-For: 192.0.2.7"],
        )
        .output()
        .expect("curl");
    let seen: Value = serde_json::from_str(&text(&out)).expect("backend JSON");
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        format!("192.0.2.7, {client_ip}").as_str()
    );
}
