//! Hostile and careless input: a remote backend without `--backend-remote`, 500 slow-header
//! connections while a normal client is served, oversized headers (431), and a backend slower
//! than the entry's timeout (504).

use super::{PYTHON, Site, script, text};
use crate::support::{KoiEnv, root_or_skip};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

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
