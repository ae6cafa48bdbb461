//! The proxy entries mirrored in the roster with the real koi-certmesh, in a two-host [`NetLab`]:
//! A is the CA (under its daemon), B a member running koi-proxy under its daemon. `koi proxy add`
//! on B puts the entry in B's roster entry on the CA (`set-proxy-entries` forwarded over mutual
//! TLS); while the CA is locked (its daemon restarted) the verb still succeeds, says the list is
//! not mirrored yet, and B's service sends it once the CA is unlocked; `remove` mirrors the rest.

use crate::support::certmesh::{ca_under_daemon, fresh_code, join_from_b, wait_for_api};
use crate::support::netlab::NetLab;
use crate::support::proxy::proxy_bin;
use crate::support::{KoiEnv, poll_until, root_or_skip};
use serde_json::{Value, json};
use std::time::Duration;

/// `host`'s `proxy_entries` in the CA's roster.
fn proxy_entries(ca: &KoiEnv, host: &str) -> Value {
    let roster: Value = std::fs::read(ca.home.join("certmesh/roster.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    roster["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["hostname"] == host))
        .map_or(Value::Null, |m| m["proxy_entries"].clone())
}

/// `koi proxy ARGS --json` on `env`, which must succeed.
fn proxy(env: &KoiEnv, args: &[&str]) -> Value {
    let mut all = vec!["proxy"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = env.run(&all);
    run.expect_code(0);
    run.json()
}

#[test]
fn proxy_add_on_a_member_lands_in_its_roster_entry_on_the_ca_and_waits_out_a_locked_ca() {
    if !root_or_skip("proxy roster mirror") {
        return;
    }
    let lab = NetLab::new("pxr");
    let (a_daemon, ca) = ca_under_daemon(&lab, &["--no-trust", "--json"]);
    lab.b.env.install(&proxy_bin(), "proxy");
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(&lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    let _b_daemon = lab.b.env.start_daemon(&[("KOI_PROXY_RETRY_SECS", "1")]);
    let b = lab.b.hostname.clone();

    let added = proxy(
        &lab.b.env,
        &["add", "grafana", "--backend", "http://127.0.0.1:3000"],
    );
    let host = added["entry"]["host"].as_str().expect("host").to_owned();
    assert!(
        added["roster"]
            .as_str()
            .is_some_and(|r| r.starts_with("mirrored: 1 entries")),
        "{added:#}"
    );
    let grafana = json!({"name": host, "listen_port": 443, "backend": "http://127.0.0.1:3000"});
    assert_eq!(proxy_entries(&lab.a.env, &b), json!([grafana.clone()]));

    // The CA's daemon restarts locked: `add` succeeds, says why nothing is mirrored yet.
    drop(a_daemon);
    let _a_daemon = lab.a.env.start_daemon(&[]);
    wait_for_api(&lab.a, &lab.a.ip);
    let added = proxy(
        &lab.b.env,
        &[
            "add",
            "wiki",
            "--listen",
            "8443",
            "--backend",
            "http://127.0.0.1:3001",
        ],
    );
    let roster = added["roster"].as_str().unwrap_or_default();
    assert!(roster.starts_with("not mirrored yet"), "{added:#}");
    assert_eq!(proxy_entries(&lab.a.env, &b), json!([grafana.clone()]));
    // Unlocked, the CA gets the complete list from B's service, with no verb.
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &ca.pass_file])
        .expect_code(0);
    let wiki = json!({
        "name": added["entry"]["host"],
        "listen_port": 8443,
        "backend": "http://127.0.0.1:3001",
    });
    poll_until(
        "B's service to mirror both entries after the unlock",
        Duration::from_millis(200),
        || {
            let status = lab.b.env.run(&["proxy", "status", "--json"]).json();
            json!({"roster": proxy_entries(&lab.a.env, &b), "b": status["details"]["roster"]})
        },
        |e| e["roster"] == json!([grafana.clone(), wiki.clone()]),
    );
    // B's status says so.
    let status = lab.b.env.run(&["proxy", "status", "--json"]);
    status.expect_code(0);
    assert!(
        status.json()["details"]["roster"]
            .as_str()
            .is_some_and(|r| r.starts_with("mirrored: 2 entries")),
        "{}",
        status.stdout
    );
    let removed = proxy(&lab.b.env, &["remove", "grafana"]);
    assert!(
        removed["roster"]
            .as_str()
            .is_some_and(|r| r.starts_with("mirrored: 1 entries")),
        "{removed:#}"
    );
    assert_eq!(proxy_entries(&lab.a.env, &b), json!([wiki]));
}
