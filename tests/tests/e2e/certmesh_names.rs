//! What koi-certmesh offers other plugins (dns, proxy, health), end to end in a two-namespace lab
//! with real daemons and the fixture plugin koi-namer, which calls certmesh through the host as
//! those plugins do and records `certmesh.members.changed`:
//! - `certmesh/members` on the CA (its roster) and on a member (the roster its heartbeat fetched,
//!   with the debug-only `KOI_TEST_HEARTBEAT_SECS=2`), `certmesh.members.changed` after a join
//!   on both, and version 0 with role `none` after the member leaves;
//! - `certmesh/request-names` from a plugin on the member, forwarded to the CA over mutual TLS,
//!   then `koi certmesh renew --now`: the new certificate holds the name and `openssl verify`
//!   accepts it; the roster records it as owned; the CA may name any machine;
//! - refusals, each clear: a name outside the scope, a name another entry holds (both audited on
//!   the CA), the REST API, a member naming another host, too many names, oversize and invalid
//!   names;
//! - `certmesh/set-proxy-entries` from the member's plugin lands in its roster entry;
//! - the member routes (`POST /v1/certmesh/names`, `/proxy-entries`) take the host from the client
//!   certificate only (curl with and without B's certificate, a body naming another host).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::certmesh::{
    LabCa, audit_entries, cert_dir, certmesh_bin, create, fresh_code, join_from_b, mesh_ids,
    openssl, wait_for_api, write_passphrase,
};
use crate::support::netlab::NetLab;
use crate::support::{DaemonProc, KoiEnv, Run, fixture, free_port, root_or_skip, wait_until};

const BEAT_ENV: (&str, &str) = ("KOI_TEST_HEARTBEAT_SECS", "2");

/// A mesh created on A under its daemon (with koi-namer and `env`), its API answering.
fn ca_with_namer(lab: &NetLab, env: &[(&str, &str)]) -> (DaemonProc, LabCa) {
    lab.a.env.install(&certmesh_bin(), "certmesh");
    lab.b.env.install(&certmesh_bin(), "certmesh");
    lab.a.env.install(&fixture("koi-namer"), "namer");
    lab.b.env.install(&fixture("koi-namer"), "namer");
    let pass_file = write_passphrase(&lab.a.env);
    let daemon = lab.a.env.start_daemon(env);
    let created = create(&lab.a.env, &pass_file, &["--no-trust", "--json"]);
    created.expect_code(0);
    let (uri, fingerprint) = mesh_ids(&created);
    wait_for_api(&lab.a, &lab.a.ip);
    let ca_pem = lab.a.env.home.join("certmesh/ca/ca.pem");
    let ca = LabCa {
        pass_file,
        uri,
        fingerprint,
        ca_pem,
        created,
    };
    (daemon, ca)
}

fn join_b(lab: &NetLab, ca: &LabCa) {
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
}

/// The `certmesh.members.changed` versions koi-namer recorded on `env`.
fn changed_versions(env: &KoiEnv) -> Vec<u64> {
    std::fs::read_to_string(env.pids.join("namer.events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["topic"] == "certmesh.members.changed")
        .filter_map(|e| e["payload"]["roster_version"].as_u64())
        .collect()
}

fn members(env: &KoiEnv) -> Value {
    let run = env.run(&["certmesh", "members", "--json"]);
    run.expect_code(0);
    run.json()
}

fn hosts(answer: &Value) -> Vec<String> {
    let mut h: Vec<String> = answer["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["host"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    h.sort();
    h
}

/// `koi namer METHOD --params PARAMS --json` on `env`: koi-namer calls certmesh through the host.
fn namer(env: &KoiEnv, method: &str, params: &Value) -> Run {
    env.run(&["namer", method, "--params", &params.to_string(), "--json"])
}

/// The roster entry of `host` on the CA.
fn roster_entry(ca: &KoiEnv, host: &str) -> Value {
    let roster: Value = serde_json::from_slice(
        &std::fs::read(ca.home.join("certmesh/roster.json")).expect("roster"),
    )
    .expect("roster JSON");
    roster["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["hostname"] == host).cloned())
        .unwrap_or(Value::Null)
}

fn all_text(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

#[test]
fn members_are_listed_on_the_ca_and_on_a_member_and_a_join_is_announced_on_both() {
    if !root_or_skip("members_are_listed_on_the_ca_and_on_a_member_and_a_join_is_announced_on_both")
    {
        return;
    }
    let lab = NetLab::new("mb");
    let (_a, ca) = ca_with_namer(&lab, &[]);
    let on_ca = members(&lab.a.env);
    assert_eq!(on_ca["role"], "ca", "{on_ca}");
    assert_eq!(hosts(&on_ca), vec![lab.a.hostname.clone()], "{on_ca}");
    assert_eq!(on_ca["members"][0]["role"], "ca", "{on_ca}");
    assert_eq!(
        on_ca["zone_hint"],
        json!(["lan", "home.arpa", "local"]),
        "{on_ca}"
    );
    let before = on_ca["roster_version"].as_u64().expect("version");
    // Not in a mesh yet: B answers role "none".
    let none = members(&lab.b.env);
    assert_eq!(none["role"], "none", "{none}");
    assert_eq!(none["members"], json!([]), "{none}");

    join_b(&lab, &ca);
    let on_ca = members(&lab.a.env);
    let after = on_ca["roster_version"].as_u64().expect("version");
    assert!(after > before, "{on_ca}");
    let mut both = vec![lab.a.hostname.clone(), lab.b.hostname.clone()];
    both.sort();
    assert_eq!(hosts(&on_ca), both, "{on_ca}");
    let b_entry = on_ca["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["host"] == lab.b.hostname.as_str()))
        .expect("B listed")
        .clone();
    assert_eq!(b_entry["role"], "member", "{on_ca}");
    assert!(
        b_entry["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a == lab.b.ip.as_str())),
        "{on_ca}"
    );
    assert!(b_entry["not_after"].is_string(), "{on_ca}");
    // The join is announced on the CA.
    wait_until(
        "members.changed on the CA after the join",
        Duration::from_secs(20),
        || changed_versions(&lab.a.env).contains(&after),
    );

    // On the member: empty until the first beat, then the roster the heartbeat fetched.
    let _b = lab.b.env.start_daemon(&[BEAT_ENV]);
    let mut on_b = Value::Null;
    wait_until(
        "the members on B after a beat",
        Duration::from_secs(30),
        || {
            on_b = members(&lab.b.env);
            on_b["members"].as_array().is_some_and(|a| a.len() == 2)
        },
    );
    assert_eq!(on_b["role"], "member", "{on_b}");
    assert_eq!(hosts(&on_b), both, "{on_b}");
    assert!(on_b["roster_version"].as_u64() >= Some(after), "{on_b}");
    assert_eq!(on_b["zone_hint"], on_ca["zone_hint"], "{on_b}");
    wait_until(
        "members.changed on the member",
        Duration::from_secs(20),
        || changed_versions(&lab.b.env).iter().any(|v| *v >= after),
    );

    // The member leaves: announced with version 0, and `members` answers role "none".
    lab.b
        .env
        .run(&["certmesh", "leave", "--yes", "--json"])
        .expect_code(0);
    wait_until(
        "members.changed 0 after leaving",
        Duration::from_secs(20),
        || changed_versions(&lab.b.env).last() == Some(&0),
    );
    let left = members(&lab.b.env);
    assert_eq!(left["role"], "none", "{left}");
    assert_eq!(left["members"], json!([]), "{left}");
}

#[test]
fn a_plugin_on_a_member_requests_a_name_and_the_forced_renewal_certifies_it() {
    if !root_or_skip("a_plugin_on_a_member_requests_a_name_and_the_forced_renewal_certifies_it") {
        return;
    }
    let lab = NetLab::new("nm");
    let rest = format!("127.0.0.1:{}", free_port());
    let (_a, ca) = ca_with_namer(
        &lab,
        &[("KOI_REST_ENABLED", "true"), ("KOI_REST_BIND", &rest)],
    );
    join_b(&lab, &ca);
    let _b = lab.b.env.start_daemon(&[BEAT_ENV]);
    let b = lab.b.hostname.clone();

    // A plugin on B asks for a name: forwarded to the CA, checked, pending on B's entry.
    let asked = namer(
        &lab.b.env,
        "ask",
        &json!({"names": ["Grafana.LAN"], "requester": "dns"}),
    );
    asked.expect_code(0);
    let answer = asked.json();
    assert_eq!(answer["host"], b.as_str(), "{answer}");
    assert_eq!(answer["accepted"], json!(["grafana.lan"]), "{answer}");
    assert!(
        answer["effective"]
            .as_str()
            .is_some_and(|e| e.contains("koi certmesh renew --now")),
        "{answer}"
    );
    assert_eq!(
        roster_entry(&lab.a.env, &b)["pending_names"],
        json!(["grafana.lan"])
    );
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(
        status.json()["details"]["pending_names"][b.as_str()],
        json!(["grafana.lan"]),
        "the CA's status shows what is pending: {}",
        status.stdout
    );
    let requested: Vec<Value> = audit_entries(&lab.a.env)
        .into_iter()
        .filter(|e| e["event"] == "names_requested")
        .collect();
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["details"]["hostname"], b.as_str());
    assert_eq!(requested[0]["details"]["requester"], "dns");
    // The same name again changes nothing.
    let again = namer(&lab.b.env, "ask", &json!({"names": ["grafana.lan"]}));
    again.expect_code(0);
    assert_eq!(
        again.json()["already"],
        json!(["grafana.lan"]),
        "{}",
        again.stdout
    );
    assert_eq!(again.json()["accepted"], json!([]), "{}", again.stdout);

    // The forced renewal certifies it; openssl verifies the new certificate.
    let renewed = lab.b.env.run(&["certmesh", "renew", "--now", "--json"]);
    renewed.expect_code(0);
    let cert = cert_dir(&lab.b).join("cert.pem");
    let sans = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &cert.display().to_string(),
    ]);
    assert!(sans.contains("DNS:grafana.lan"), "{sans}");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &ca.ca_pem.display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(verified.contains(": OK"), "{verified}");
    let entry = roster_entry(&lab.a.env, &b);
    assert!(
        entry["dns_names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "grafana.lan")),
        "the roster records it as owned: {entry}"
    );
    assert!(
        entry["pending_names"].is_null(),
        "no longer pending: {entry}"
    );
    let renewal = audit_entries(&lab.a.env)
        .into_iter()
        .rfind(|e| e["event"] == "certificate_renewed")
        .expect("renewal audited");
    assert_eq!(
        renewal["details"]["pending_names_added"],
        json!(["grafana.lan"])
    );

    // The CA's plugins may name any machine.
    let for_b = namer(
        &lab.a.env,
        "ask",
        &json!({"host": b, "names": ["wiki.lan"], "requester": "proxy"}),
    );
    for_b.expect_code(0);
    assert_eq!(
        for_b.json()["accepted"],
        json!(["wiki.lan"]),
        "{}",
        for_b.stdout
    );

    // And the CLI, for this machine by default.
    let cli = lab.a.env.run(&[
        "certmesh",
        "request-names",
        "cli.lan",
        "--requester",
        "ops",
        "--json",
    ]);
    cli.expect_code(0);
    assert_eq!(
        cli.json()["host"],
        lab.a.hostname.as_str(),
        "{}",
        cli.stdout
    );
    assert_eq!(cli.json()["accepted"], json!(["cli.lan"]), "{}", cli.stdout);

    // Refusals. Outside the scope, and a name another entry holds: refused with the reason, and
    // audited on the CA.
    let refusals_before = audit_entries(&lab.a.env)
        .iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .count();
    let out = namer(&lab.b.env, "ask", &json!({"names": ["x.example.com"]}));
    out.expect_code(0);
    let refused = &out.json()["refused"][0];
    assert_eq!(refused["name"], "x.example.com", "{}", out.stdout);
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("outside the mesh scope")),
        "{}",
        out.stdout
    );
    let owned_name = format!("{}.lan", lab.a.hostname);
    let owned = namer(&lab.b.env, "ask", &json!({"names": [owned_name]}));
    owned.expect_code(0);
    assert!(
        owned.json()["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&lab.a.hostname) && r.contains("belongs to")),
        "{}",
        owned.stdout
    );
    // Pending for another machine counts as taken too.
    let pending = namer(&lab.a.env, "ask", &json!({"names": ["wiki.lan"]}));
    pending.expect_code(0);
    assert!(
        pending.json()["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already requested for") && r.contains(&b)),
        "{}",
        pending.stdout
    );
    let audited: Vec<String> = audit_entries(&lab.a.env)
        .into_iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .skip(refusals_before)
        .map(|e| e["details"].to_string())
        .collect();
    assert!(
        audited
            .iter()
            .any(|d| d.contains("request-names") && d.contains("x.example.com")),
        "{audited:?}"
    );
    assert!(
        audited
            .iter()
            .any(|d| d.contains("request-names") && d.contains(&owned_name)),
        "{audited:?}"
    );

    // Oversize and invalid names, and too many in one request.
    let long = format!("{}.lan", "a".repeat(260));
    let bad = namer(
        &lab.b.env,
        "ask",
        &json!({"names": [long, "bad_name.lan", "ok\u{7}.lan"]}),
    );
    bad.expect_code(0);
    let reasons = bad.json()["refused"].to_string();
    assert!(reasons.contains("253"), "{reasons}");
    assert_eq!(
        bad.json()["refused"].as_array().map(Vec::len),
        Some(3),
        "{reasons}"
    );
    let audited_bad = audit_entries(&lab.a.env)
        .into_iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .any(|e| e["details"].to_string().contains("bad_name.lan"));
    assert!(
        audited_bad,
        "the invalid names' refusal is audited on the CA"
    );
    let many: Vec<String> = (0..33).map(|i| format!("n{i}.lan")).collect();
    let too_many = namer(&lab.b.env, "ask", &json!({"names": many}));
    assert_ne!(too_many.code, Some(0));
    assert!(
        all_text(&too_many).contains("at most 32"),
        "{}",
        all_text(&too_many)
    );

    // A member cannot name another machine: the refusal names what works instead.
    let other = namer(
        &lab.b.env,
        "ask",
        &json!({"host": lab.a.hostname, "names": ["y.lan"]}),
    );
    assert_ne!(other.code, Some(0));
    let text = all_text(&other);
    assert!(
        text.contains("not its CA") && text.contains("Leave out `host`"),
        "{text}"
    );

    // The REST API is refused.
    let curl = lab
        .a
        .command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"names":["rest.lan"]}"#,
                "-w",
                "\n%{http_code}",
                &format!("http://{rest}/v1/certmesh/request-names"),
            ],
        )
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let status = body.lines().last().unwrap_or_default().to_owned();
    assert!(status.starts_with('4'), "REST must be refused: {body}");
    assert!(!body.contains("accepted"), "{body}");
    assert_eq!(
        roster_entry(&lab.a.env, &lab.a.hostname)["pending_names"],
        json!(["cli.lan"]),
        "the REST request stored nothing"
    );

    // Proxy entries from B's plugin land in B's roster entry.
    let proxy = namer(
        &lab.b.env,
        "proxy",
        &json!({"entries": [{"name": "grafana", "listen_port": 443, "backend": "http://localhost:3000"}]}),
    );
    proxy.expect_code(0);
    assert_eq!(proxy.json()["stored"], 1, "{}", proxy.stdout);
    assert_eq!(
        roster_entry(&lab.a.env, &b)["proxy_entries"],
        json!([{"name": "grafana", "listen_port": 443, "backend": "http://localhost:3000"}])
    );
    let too_long = namer(
        &lab.b.env,
        "proxy",
        &json!({"entries": [{"name": "g", "listen_port": 443, "backend": "x".repeat(300)}]}),
    );
    assert_ne!(too_long.code, Some(0));
    assert!(
        all_text(&too_long).contains("256"),
        "{}",
        all_text(&too_long)
    );
}

/// `curl` from B to A's `path` with `body`, presenting `cert` (B's files) or no certificate:
/// (HTTP status, body).
fn post_from_b(lab: &NetLab, path: &str, body: &str, cert: bool) -> (String, String) {
    let dir = cert_dir(&lab.b);
    let url = format!("https://{}:5641{path}", lab.a.ip);
    let (cert_file, key_file) = (
        dir.join("fullchain.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
    );
    let mut args = vec![
        "-sk",
        "--max-time",
        "20",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        "-w",
        "\n%{http_code}",
    ];
    if cert {
        args.extend_from_slice(&["--cert", &cert_file, "--key", &key_file]);
    }
    args.push(&url);
    let out = lab.b.command("curl", &args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

#[test]
fn the_member_routes_take_the_host_from_the_client_certificate_only() {
    if !root_or_skip("the_member_routes_take_the_host_from_the_client_certificate_only") {
        return;
    }
    let lab = NetLab::new("nr");
    let (_a, ca) = ca_with_namer(&lab, &[]);
    join_b(&lab, &ca);
    let b = lab.b.hostname.clone();

    // No client certificate: refused (401) and audited.
    let (status, body) = post_from_b(&lab, "/v1/certmesh/names", r#"{"names":["x.lan"]}"#, false);
    assert_eq!(status, "401", "{body}");
    assert!(body.contains("not_a_member"), "{body}");
    // A body naming a host is refused: the host comes from the certificate alone.
    let claim = format!(r#"{{"names":["evil.lan"],"host":"{}"}}"#, lab.a.hostname);
    let (status, body) = post_from_b(&lab, "/v1/certmesh/names", &claim, true);
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("host"), "{body}");
    assert!(roster_entry(&lab.a.env, &lab.a.hostname)["pending_names"].is_null());
    // B's certificate: the names are B's.
    let (status, body) = post_from_b(&lab, "/v1/certmesh/names", r#"{"names":["b2.lan"]}"#, true);
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        roster_entry(&lab.a.env, &b)["pending_names"],
        json!(["b2.lan"])
    );
    // Proxy entries the same way; an oversize list is refused whole.
    let entries: Vec<Value> = (0..65)
        .map(|i| json!({"name": format!("p{i}"), "listen_port": 443, "backend": "http://localhost:1"}))
        .collect();
    let (status, body) = post_from_b(
        &lab,
        "/v1/certmesh/proxy-entries",
        &json!({ "entries": entries }).to_string(),
        true,
    );
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("at most 64"), "{body}");
    assert_eq!(roster_entry(&lab.a.env, &b)["proxy_entries"], json!([]));
    let refusals: Vec<String> = audit_entries(&lab.a.env)
        .into_iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .map(|e| e["details"].to_string())
        .collect();
    assert!(
        refusals
            .iter()
            .any(|d| d.contains("/v1/certmesh/names") && d.contains("not_a_member")),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .any(|d| d.contains("set-proxy-entries") && d.contains("at most 64")),
        "{refusals:?}"
    );
}
