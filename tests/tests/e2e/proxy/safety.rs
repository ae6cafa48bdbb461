//! Hostile and careless input: a remote backend without `--backend-remote`, 500 slow-header
//! connections while a normal client is served, oversized headers (431), a backend slower than
//! the entry's timeout (504), and WebSocket tunnels that would escape the caps and idle timeout.

use super::{PYTHON, Site, script, text};
use crate::support::{KoiEnv, poll_until, root_or_skip};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn a_remote_backend_is_refused_without_backend_remote() {
    let env = KoiEnv::new().with_proxy();
    let run = env.run(&["proxy", "add", "nas", "--backend", "http://10.9.8.7:5000"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("10.9.8.7 is not a loopback address"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--backend-remote"), "{}", run.stderr);
    let listed = env.run(&["proxy", "list", "--json"]);
    assert_eq!(listed.json()["entries"], serde_json::json!([]));
    // With the flag it is stored, and the answer carries the seed's warning.
    let run = env.run(&[
        "proxy",
        "add",
        "nas",
        "--backend",
        "http://10.9.8.7:5000",
        "--backend-remote",
        "--json",
    ]);
    run.expect_code(0);
    let added = run.json();
    assert!(
        added["note"]
            .as_str()
            .unwrap_or_default()
            .contains("Backend traffic to 10.9.8.7 is unencrypted"),
        "{added:#}"
    );
}

#[test]
fn five_hundred_slow_header_connections_are_closed_while_a_normal_client_is_served() {
    if !root_or_skip("proxy slowloris") {
        return;
    }
    let mut site = Site::new("pxl", 3);
    site.write_cert(&["grafana.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.wait_listening("grafana");
    let mut slow = site
        .lab
        .host(2)
        .command(
            PYTHON,
            &[
                script("slowloris.py").to_str().expect("path"),
                &site.a().ip,
                "grafana.lan",
                "500",
                "60",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("slowloris.py");
    let mut lines = BufReader::new(slow.stdout.take().expect("stdout")).lines();
    let opened = lines.next().expect("a line").expect("read");
    assert!(opened.starts_with("opened="), "{opened}");
    // While they are held open, host b is served, request after request.
    let mut served = 0;
    let mut last = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        last = line;
        if last.ends_with(" open=0") {
            break;
        }
        let out = site.curl(
            1,
            "grafana.lan",
            "/",
            &["-o", "/dev/null", "-w", "%{http_code}"],
        );
        assert_eq!(
            text(&out),
            "200",
            "a normal client was refused while {last}"
        );
        served += 1;
    }
    lines.for_each(drop);
    let _ = slow.wait();
    eprintln!("{opened}; {last}; normal requests served meanwhile: {served}");
    assert!(
        last.starts_with("closed=500 open=0"),
        "slow connections left open: {last}"
    );
    assert!(served > 0, "{opened} {last}");
    let status = site.status();
    assert!(
        status["connections_refused"].as_u64() > Some(0),
        "{status:#}"
    );
}

#[test]
fn oversized_headers_get_431_and_a_slow_backend_504() {
    if !root_or_skip("proxy 431 504") {
        return;
    }
    let mut site = Site::new("pxo", 2);
    site.write_cert(&["grafana.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&[
        "grafana",
        "--backend",
        "http://127.0.0.1:3000",
        "--timeout-secs",
        "1",
    ]);
    site.wait_listening("grafana");
    let big = format!("X-Big: {}", "a".repeat(40_000));
    for version in ["--http1.1", "--http2"] {
        let out = site.curl(
            1,
            "grafana.lan",
            "/",
            &[version, "-H", &big, "-o", "/dev/null", "-w", "%{http_code}"],
        );
        assert_eq!(text(&out), "431", "{version}");
    }
    // Past the hard bounds (128 KiB: hyper's HTTP/1.1 read buffer, the HTTP/2 header list): 431
    // over HTTP/1.1; over HTTP/2 the h2 crate ends the connection (GOAWAY, its defence against
    // CONTINUATION floods) before any of it is decoded. Neither reaches the backend, and the
    // proxy goes on serving. (curl takes a header this long from a file only.)
    let huge = site.work().join("huge-header");
    std::fs::write(&huge, format!("X-Big: {}\n", "a".repeat(200_000))).expect("write");
    let from_file = format!("@{}", huge.display());
    for (version, want) in [("--http1.1", "431"), ("--http2", "000")] {
        let out = site.curl(
            1,
            "grafana.lan",
            "/",
            &[
                version,
                "-H",
                &from_file,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ],
        );
        assert_eq!(text(&out), want, "{version} with a 200 KB header");
    }
    let ok = site.curl(
        1,
        "grafana.lan",
        "/",
        &["-o", "/dev/null", "-w", "%{http_code}"],
    );
    assert_eq!(text(&ok), "200");
    let many: Vec<String> = (0..120).map(|i| format!("X-H{i}: v")).collect();
    let mut args = vec!["--http1.1", "-o", "/dev/null", "-w", "%{http_code}"];
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    assert_eq!(text(&site.curl(1, "grafana.lan", "/", &args)), "431");
    let out = site.curl(1, "grafana.lan", "/slow/5", &["-w", "\n%{http_code}"]);
    let body = text(&out);
    assert!(body.ends_with("\n504"), "{body}");
    assert!(
        body.contains("grafana"),
        "the 504 page names the entry: {body}"
    );
}

#[test]
fn a_websocket_tunnel_keeps_its_place_under_the_caps_and_is_closed_when_idle() {
    if !root_or_skip("proxy tunnel caps") {
        return;
    }
    let mut site = Site::new("pxt", 2);
    site.write_cert(&["ws.lan"]);
    let _ws = site.ws_backend(3002);
    // The tunnel idle timeout (10 min) shortened to 3 s; debug builds only (`limits::debug_secs`).
    site.daemon = Some(
        site.a()
            .env
            .start_daemon(&[("KOI_PROXY_TUNNEL_IDLE_SECS", "3")]),
    );
    site.add(&["ws", "--backend", "http://127.0.0.1:3002"]);
    site.wait_listening("ws");
    let mut hold = site
        .ws_client(1, "hold", "ws.lan")
        .stdout(Stdio::piped())
        .spawn()
        .expect("ws.py hold");
    let mut lines = BufReader::new(hold.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "hello");
    assert_eq!(lines.next().expect("a line").expect("read"), "open");
    // The upgraded connection still counts: a client cannot open tunnels past its cap.
    let status = site.status();
    assert_eq!(status["connections_open"], 1, "{status:#}");
    assert_eq!(status["entries"][0]["active_connections"], 1, "{status:#}");
    // Silent both ways (the client sends no pings): the proxy closes it.
    assert_eq!(lines.next().expect("a line").expect("read"), "closed");
    let _ = hold.wait();
    poll_until(
        "the tunnel's place to be freed",
        Duration::from_millis(100),
        || site.status(),
        |s| s["connections_open"] == 0 && s["entries"][0]["active_connections"] == 0,
    );
}
