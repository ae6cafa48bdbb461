//! The proxy and certmesh through the host, with a stand-in certmesh (fixture
//! `koi-certmesh-fake`): `add` takes the zone from `certmesh/members` and asks
//! `certmesh/request-names` for `NAME.<zone>`; `status` names the host until the certificate has
//! it; `certmesh.cert.renewed` alone (the file watch switched off) makes new handshakes get the
//! renewed certificate. The entries are mirrored with `certmesh/set-proxy-entries` (the
//! complete list): refused while the fake "CA is locked" (the verb still succeeds and says so,
//! `status` too), sent again by the service once it is unlocked, sent once when the service
//! starts, and after `remove`.

use super::{Site, presented_serial};
use crate::support::{poll_until, root_or_skip};
use serde_json::{Value, json};
use std::time::Duration;

/// The lists koi-proxy sent to `set-proxy-entries`, in order (a JSON array).
fn mirrored(site: &Site) -> Value {
    std::fs::read_to_string(site.a().env.pids.join("certmesh-fake.mirror"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|p| p["entries"].clone())
        .collect()
}

fn last(lists: &Value) -> Option<&Value> {
    lists.as_array().and_then(|a| a.last())
}

fn count(lists: &Value) -> usize {
    lists.as_array().map_or(0, Vec::len)
}

#[test]
fn add_asks_certmesh_for_the_name_and_a_renewal_event_swaps_the_certificate() {
    if !root_or_skip("proxy certmesh link") {
        return;
    }
    let mut site = Site::new("pxc", 2);
    site.a()
        .env
        .install(&crate::support::fixture("koi-certmesh-fake"), "certmesh");
    let first = site.write_cert(&["stone.lab"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    // The fake CA is locked: mirroring is refused until the lock goes.
    let locked = site.a().env.pids.join("certmesh-fake.locked");
    std::fs::write(&locked, "").expect("lock file");
    site.daemon = Some(
        site.a()
            .env
            .start_daemon(&[("KOI_PROXY_NO_WATCH", "1"), ("KOI_PROXY_RETRY_SECS", "1")]),
    );
    let added = site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    assert_eq!(added["entry"]["host"], "grafana.lab", "{added:#}");
    let roster = added["roster"].as_str().unwrap_or_default();
    assert!(
        roster.contains("not mirrored yet") && roster.contains("locked"),
        "{added:#}"
    );
    assert!(
        site.status()["roster"]
            .as_str()
            .is_some_and(|r| r.contains("not mirrored yet")),
        "status shows the pending mirror"
    );
    assert_eq!(count(&mirrored(&site)), 0);
    std::fs::remove_file(&locked).expect("unlock");
    let grafana =
        json!([{"name": "grafana.lab", "listen_port": 443, "backend": "http://127.0.0.1:3000"}]);
    poll_until(
        "the service to mirror the entries once certmesh takes them",
        Duration::from_millis(200),
        || mirrored(&site),
        |m| last(m) == Some(&grafana),
    );
    poll_until(
        "status to say the entries are mirrored",
        Duration::from_millis(200),
        || {
            site.status()["roster"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        },
        |r| r.starts_with("mirrored: 1 entries"),
    );
    assert!(
        added["names_request"]
            .as_str()
            .is_some_and(|t| t.contains("requested from certmesh")),
        "{added:#}"
    );
    let calls = std::fs::read_to_string(site.a().env.pids.join("certmesh-fake.calls"))
        .expect("certmesh-fake.calls");
    let first_call: serde_json::Value =
        serde_json::from_str(calls.lines().next().expect("a call")).expect("JSON");
    assert_eq!(first_call["names"], serde_json::json!(["grafana.lab"]));
    assert_eq!(first_call["requester"], "proxy");
    site.wait_listening("grafana");
    assert_eq!(site.entry("grafana")["missing_name"], "grafana.lab");
    // The renewal writes the files; without the event (and no file watch) nothing changes.
    let second = site.write_cert(&["stone.lab", "grafana.lab"]);
    let client = site.lab.host(1);
    assert_eq!(
        presented_serial(client, &site.a().ip, "grafana.lab"),
        Some(first)
    );
    site.koi(&["certmesh", "renewed", "--json"]).expect_code(0);
    poll_until(
        "the renewed certificate after certmesh.cert.renewed",
        Duration::from_millis(100),
        || presented_serial(client, &site.a().ip, "grafana.lab").unwrap_or_default(),
        |s| *s == second,
    );
    let entry = site.entry("grafana");
    assert!(entry.get("missing_name").is_none(), "{entry:#}");

    // A restarted service sends the complete list once, with no verb (and no retry due).
    let before = count(&mirrored(&site));
    site.daemon = None;
    site.daemon = Some(site.a().env.start_daemon(&[("KOI_PROXY_NO_WATCH", "1")]));
    poll_until(
        "the service to mirror the entries at its start",
        Duration::from_millis(200),
        || mirrored(&site),
        |m| count(m) > before,
    );
    assert_eq!(last(&mirrored(&site)), Some(&grafana));
    // `remove` mirrors the remaining (empty) list.
    let removed = site.koi(&["proxy", "remove", "grafana", "--json"]);
    removed.expect_code(0);
    assert!(
        removed.json()["roster"]
            .as_str()
            .is_some_and(|r| r.starts_with("mirrored: 0 entries")),
        "{}",
        removed.stdout
    );
    assert_eq!(last(&mirrored(&site)), Some(&json!([])));
}
