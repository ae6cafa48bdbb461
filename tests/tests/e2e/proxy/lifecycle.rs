//! Lifecycle: a dead backend gives a 502 naming the entry and `proxy.backend.down`, its recovery
//! is seen (`proxy.backend.up`); entries come back after a daemon restart; `remove` stops serving;
//! without the daemon `add` stores the entry and says the daemon serves it.

use super::{Site, text};
use crate::support::{KoiEnv, poll_until, root_or_skip};
use std::time::Duration;

#[test]
fn a_dead_backend_gives_a_502_naming_the_entry_and_its_recovery_is_seen() {
    if !root_or_skip("proxy 502") {
        return;
    }
    let mut site = Site::new("pxd", 2);
    site.write_cert(&["grafana.lan"]);
    site.a()
        .env
        .install(&crate::support::fixture("koi-proxywatch"), "proxywatch");
    let gate = site.work().join("gate");
    let mut backend = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.wait_listening("grafana");
    let ok = |site: &Site| {
        text(&site.curl(
            1,
            "grafana.lan",
            "/",
            &["-o", "/dev/null", "-w", "%{http_code}"],
        ))
    };
    assert_eq!(ok(&site), "200");
    backend.kill();
    let out = site.curl(1, "grafana.lan", "/", &["-w", "\n%{http_code}"]);
    let body = text(&out);
    assert!(body.ends_with("\n502"), "{body}");
    assert!(
        body.contains("grafana"),
        "the 502 page names the entry: {body}"
    );
    assert_eq!(site.entry("grafana")["backend_state"], "down");
    let _backend = site.backend(3000, "grafana", &gate);
    assert_eq!(ok(&site), "200");
    assert_eq!(site.entry("grafana")["backend_state"], "up");
    let events = site.a().env.pids.join("proxywatch.events");
    let seen = poll_until(
        "proxy.backend.down and proxy.backend.up to be delivered",
        Duration::from_millis(100),
        || std::fs::read_to_string(&events).unwrap_or_default(),
        |t| t.lines().count() >= 2,
    );
    let events: Vec<serde_json::Value> = seen
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let topics: Vec<&str> = events.iter().filter_map(|v| v["topic"].as_str()).collect();
    assert_eq!(topics, ["proxy.backend.down", "proxy.backend.up"], "{seen}");
    for e in &events {
        assert_eq!(e["payload"]["entry"], "grafana", "{seen}");
    }
    assert!(
        events[0]["payload"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused")),
        "{seen}"
    );
}

#[test]
fn entries_come_back_after_a_daemon_restart_and_remove_stops_serving() {
    if !root_or_skip("proxy restart") {
        return;
    }
    let mut site = Site::new("pxt", 2);
    site.write_cert(&["grafana.lan", "jellyfin.lan"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.start();
    site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    site.add(&[
        "jellyfin",
        "--backend",
        "http://127.0.0.1:3000",
        "--listen",
        "8443",
    ]);
    site.wait_listening("grafana");
    site.start(); // stops the daemon, starts a new one
    site.wait_listening("grafana");
    site.wait_listening("jellyfin");
    let code = |site: &Site| {
        text(&site.curl(
            1,
            "grafana.lan",
            "/",
            &["-o", "/dev/null", "-w", "%{http_code}"],
        ))
    };
    assert_eq!(code(&site), "200");
    let run = site.koi(&["proxy", "remove", "grafana", "--json"]);
    run.expect_code(0);
    poll_until(
        "grafana to stop being served",
        Duration::from_millis(100),
        || code(&site),
        |c| c != "200",
    );
    let listed = site.koi(&["proxy", "list", "--json"]).json();
    let names: Vec<&str> = listed["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["jellyfin"]);
}

#[test]
fn without_the_daemon_add_stores_the_entry_and_says_the_daemon_serves_it() {
    let env = KoiEnv::new().with_proxy();
    let run = env.run(&[
        "proxy",
        "add",
        "grafana",
        "--backend",
        "http://127.0.0.1:3000",
        "--json",
    ]);
    run.expect_code(0);
    let added = run.json();
    assert_eq!(added["serving"], false);
    assert!(
        added["note"]
            .as_str()
            .unwrap_or_default()
            .contains("koi daemon"),
        "{added:#}"
    );
    let dup = env.run(&[
        "proxy",
        "add",
        "grafana",
        "--backend",
        "http://127.0.0.1:3001",
    ]);
    dup.expect_code(2);
    assert!(
        dup.stderr.contains("koi proxy remove grafana"),
        "{}",
        dup.stderr
    );
    let status = env.run(&["proxy", "status", "--json"]).json();
    assert_eq!(status["details"]["serving"], false, "{status:#}");
    assert_eq!(status["details"]["entries"][0]["host"], "grafana.lan");
}
