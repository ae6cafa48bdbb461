//! Certificate rotation: ten swaps during a 20 s load run fail no request and new connections
//! see the new serial; a bad pair keeps the old certificate serving; `status` names the host a
//! certificate is missing until a renewal adds it.

use super::{Site, presented_serial, text};
use crate::support::{poll_until, root_or_skip};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ten_swaps_under_load_fail_no_request_and_new_connections_see_the_new_serial() {
    if !root_or_skip("proxy rotation under load") {
        return;
    }
    let mut site = Site::new("pxr", 3);
    let mut serial = site.write_cert(&["grafana.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.wait_listening("grafana");
    let a_ip = site.a().ip.clone();
    // Keep-alive load from host b (HTTP/2 and HTTP/1.1 clients), for 20 s.
    let connect = format!("--connect-to={a_ip}:443");
    let h2 = site
        .lab
        .host(1)
        .command(
            "h2load",
            &[
                "-D",
                "20",
                "-c",
                "8",
                "-t",
                "1",
                &connect,
                "https://grafana.lan/",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("h2load");
    let h1 = site
        .lab
        .host(1)
        .command(
            "h2load",
            &[
                "-D",
                "20",
                "-c",
                "8",
                "-t",
                "1",
                "--h1",
                &connect,
                "https://grafana.lan/",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("h2load --h1");
    // A new TLS connection per request from host c, throughout.
    let ca = site.ca();
    let resolve = format!("grafana.lan:443:{a_ip}");
    let fresh = site
        .lab
        .host(2)
        .command(
            "sh",
            &[
                "-c",
                "end=$(($(date +%s) + 20)); ok=0; bad=0; while [ $(date +%s) -lt $end ]; do \
                 if curl -sf -o /dev/null --max-time 10 --cacert \"$1\" --resolve \"$2\" https://grafana.lan/; \
                 then ok=$((ok+1)); else bad=$((bad+1)); fi; done; echo \"ok=$ok bad=$bad\"",
                "sh",
                ca.to_str().expect("path"),
                &resolve,
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl loop");
    let start = Instant::now();
    for i in 1..=10u64 {
        while start.elapsed() < Duration::from_millis(1500 * i) {
            std::thread::sleep(Duration::from_millis(50));
        }
        serial = site.write_cert(&["grafana.lan"]);
    }
    let h2 = text(&h2.wait_with_output().expect("h2load"));
    let h1 = text(&h1.wait_with_output().expect("h2load --h1"));
    let fresh = text(&fresh.wait_with_output().expect("curl loop"));
    eprintln!("h2load (h2):\n{h2}\nh2load (h1):\n{h1}\nnew connections: {fresh}");
    for report in [&h2, &h1] {
        let line = report
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_else(|| panic!("no requests line:\n{report}"));
        assert!(line.contains(" 0 failed, 0 errored, 0 timeout"), "{report}");
        assert!(!line.contains(" 0 succeeded"), "{report}");
        let codes = report
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or_default();
        assert!(codes.contains(" 0 3xx, 0 4xx, 0 5xx"), "{report}");
    }
    assert!(
        fresh.trim_end().ends_with("bad=0"),
        "new connections failed: {fresh}"
    );
    assert!(!fresh.contains("ok=0 "), "{fresh}");
    let seen = poll_until(
        "a new connection to see the last serial",
        Duration::from_millis(100),
        || presented_serial(site.lab.host(1), &a_ip, "grafana.lan").unwrap_or_default(),
        |s| *s == serial,
    );
    assert_eq!(seen, serial);
}

#[test]
fn a_bad_pair_keeps_the_old_certificate_and_status_names_a_missing_host_until_renewal() {
    if !root_or_skip("proxy bad swap") {
        return;
    }
    let mut site = Site::new("pxb", 2);
    // The certificate lacks grafana.lan at first: status names it.
    let first = site.write_cert(&["stone.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    let added = site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    assert!(
        added["certificate"]
            .as_str()
            .unwrap_or_default()
            .contains("grafana.lan is missing"),
        "{added:#}"
    );
    site.wait_listening("grafana");
    assert_eq!(site.entry("grafana")["missing_name"], "grafana.lan");
    // The renewal adds it: picked up by the file watch, and status says nothing is missing.
    let second = site.write_cert(&["stone.lan", "grafana.lan"]);
    assert_ne!(first, second);
    poll_until(
        "the renewed certificate to be served",
        Duration::from_millis(100),
        || presented_serial(site.lab.host(1), &site.a().ip, "grafana.lan").unwrap_or_default(),
        |s| *s == second,
    );
    let entry = site.entry("grafana");
    assert!(entry.get("missing_name").is_none(), "{entry:#}");
    // A key that does not fit the certificate: refused, the old pair goes on serving.
    let key = site.cert_dir().join("key.pem");
    let tmp = site.cert_dir().join(".key.pem.bad");
    let out = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&tmp)
        .output()
        .expect("openssl ecparam");
    assert!(out.status.success());
    std::fs::rename(&tmp, &key).expect("rename the bad key in");
    let entry = poll_until(
        "the bad pair to be refused",
        Duration::from_millis(100),
        || site.entry("grafana"),
        |e| {
            e["certificate_error"]
                .as_str()
                .is_some_and(|t| t.contains("do not fit together"))
        },
    );
    assert_eq!(entry["certificate"]["names"][1], "grafana.lan", "{entry:#}");
    assert_eq!(
        presented_serial(site.lab.host(1), &site.a().ip, "grafana.lan"),
        Some(second)
    );
    let out = site.curl(
        1,
        "grafana.lan",
        "/",
        &["-o", "/dev/null", "-w", "%{http_code}"],
    );
    assert_eq!(text(&out), "200");
}
