//! Renewal pushed by the CA (issue 11 item 2) end to end, in two-namespace labs with real daemons
//! and short lifetimes (the debug-only `KOI_TEST_CERT_LIFETIME_SECS`), the member's own renewal
//! turned off with the debug-only `KOI_TEST_NO_PULL_RENEWAL`:
//! - a member whose daemon is down is retried by the CA, and when it comes back the push arrives
//!   and is accepted: new serial, same key, `openssl verify`, the hook ran once per push,
//!   `certmesh.cert.renewed` published, `cert_pushed` audited;
//! - a push the member refuses is answered with the reason, audited on the CA as `push_refused`,
//!   and retried until accepted;
//! - a locked CA pushes nothing, says so in `status`, and pushes right after `unlock`;
//! - crafted pushes are refused with their reasons ([`crafted`]).

use std::path::Path;
use std::time::Duration;

use crate::support::certmesh::{
    LabCa, audit_entries, ca_under_daemon_with, cert_dir, fresh_code, join_from_b, openssl,
    public_key_of, serial_of, wait_for_api,
};
use crate::support::netlab::NetLab;
use crate::support::{DaemonProc, KoiEnv, fixture, root_or_skip, wait_until};

mod crafted;

const NO_PULL: (&str, &str) = ("KOI_TEST_NO_PULL_RENEWAL", "1");

/// A mesh created on A under a daemon started with `env`.
fn ca_with_env(lab: &NetLab, env: &[(&str, &str)]) -> (DaemonProc, LabCa) {
    ca_under_daemon_with(lab, env, &["--no-trust", "--json"])
}

fn join_b(lab: &NetLab, ca: &LabCa) {
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    let roster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.a.env.home.join("certmesh/roster.json")).expect("roster"),
    )
    .expect("roster json");
    let entry = roster["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["hostname"] == lab.b.hostname.as_str()))
        .cloned()
        .expect("B's entry");
    assert!(
        entry["ip_addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|ip| ip == lab.b.ip.as_str())),
        "the CA pushes to the addresses the roster records: {entry:#}"
    );
}

/// [`wait_until`] that, on timeout, shows both sides' push state and daemon logs.
fn wait_or_dump(
    lab: &NetLab,
    daemons: &[&DaemonProc],
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        if std::time::Instant::now() >= deadline {
            let logs: Vec<String> = daemons.iter().map(|d| d.log_text()).collect();
            panic!(
                "{what} did not happen within {limit:?}\nCA push state: {:#}\nmember push: {:#}\n{}",
                ca_push_record(lab),
                member_push(lab),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn events_of(env: &KoiEnv, event: &str, host: &str) -> Vec<serde_json::Value> {
    audit_entries(env)
        .into_iter()
        .filter(|e| e["event"] == event && e["details"]["hostname"] == host)
        .collect()
}

/// What the CA's status says about pushing to `host`.
fn ca_push_record(lab: &NetLab) -> serde_json::Value {
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    status.json()["details"]["push"]["members"][lab.b.hostname.as_str()].clone()
}

/// The member's push record (`details.push` of its status).
fn member_push(lab: &NetLab) -> serde_json::Value {
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    status.json()["details"]["push"].clone()
}

fn verifies(ca_pem: &Path, cert: &Path) {
    let text = openssl(&[
        "verify",
        "-CAfile",
        &ca_pem.display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(text.contains(": OK"), "openssl verify: {text}");
}

#[test]
fn an_offline_member_is_retried_and_the_push_it_then_accepts_renews_it_with_the_same_key() {
    if !root_or_skip(
        "an_offline_member_is_retried_and_the_push_it_then_accepts_renews_it_with_the_same_key",
    ) {
        return;
    }
    let lab = NetLab::new("pa");
    let (a, ca) = ca_with_env(&lab, &[("KOI_TEST_CERT_LIFETIME_SECS", "120")]);
    join_b(&lab, &ca);
    let dir = cert_dir(&lab.b);
    let cert = dir.join("cert.pem");
    let old_cert = lab.b.env.dir.path().join("old-cert.pem");
    std::fs::copy(&cert, &old_cert).expect("copy");
    let old_serial = serial_of(&cert);
    let old_key = public_key_of(&dir.join("key.pem"), false);
    let marker = lab.b.env.dir.path().join("hook-marker");
    let hook = format!("echo \"run $KOI_CERT_HOST\" >> {}", marker.display());
    lab.b
        .env
        .run(&["certmesh", "set-hook", "--reload", &hook])
        .expect_code(0);

    // B's daemon is not running: the CA's push finds nobody and is retried with backoff.
    wait_until(
        "the CA retrying the offline member",
        Duration::from_secs(150),
        || {
            let rec = ca_push_record(&lab);
            rec["state"] == "failed" && rec["attempts"].as_u64().is_some_and(|n| n >= 2)
        },
    );
    let rec = ca_push_record(&lab);
    assert!(
        rec["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{rec:#}"
    );
    assert_eq!(serial_of(&cert), old_serial);

    // B comes back, with its own renewal off: the next retry delivers.
    lab.b.env.install(&fixture("koi-certwatch"), "certwatch");
    let mut b = lab.b.env.start_daemon(&[NO_PULL]);
    wait_or_dump(
        &lab,
        &[&a, &b],
        "the pushed renewal",
        Duration::from_secs(60),
        || serial_of(&cert) != old_serial,
    );
    let events = lab.b.env.pids.join("certwatch.events");
    wait_until(
        "the hook and the event after the push",
        Duration::from_secs(30),
        || lines(&marker) >= 1 && lines(&events) >= 1,
    );
    let new_serial = serial_of(&cert);
    verifies(&ca.ca_pem, &old_cert);
    verifies(&ca.ca_pem, &cert);
    assert_eq!(
        public_key_of(&cert, true),
        old_key,
        "a push re-signs the key the member has"
    );
    assert_eq!(public_key_of(&dir.join("key.pem"), false), old_key);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&events)
            .expect("events")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("event JSON");
    assert_eq!(first["topic"], "certmesh.cert.renewed", "{first}");
    assert_eq!(first["payload"]["host"], lab.b.hostname.as_str(), "{first}");
    assert_eq!(first["payload"]["serial"], new_serial.as_str(), "{first}");
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    let details = &status.json()["details"];
    assert_eq!(
        details["renewal"]["last"]["last_trigger"], "push",
        "{}",
        status.stdout
    );
    assert!(
        details["push"]["accepted"].as_u64().is_some_and(|n| n >= 1),
        "{}",
        status.stdout
    );
    b.terminate(Duration::from_secs(10));

    // Audited on the CA, once per push; no pull renewal happened; one hook run per push.
    let pushes = events_of(&lab.a.env, "cert_pushed", &lab.b.hostname);
    assert!(!pushes.is_empty());
    assert_eq!(pushes[0]["details"]["old_serial"], old_serial.as_str());
    assert_eq!(pushes[0]["details"]["serial"], new_serial.as_str());
    assert!(events_of(&lab.a.env, "certificate_renewed", &lab.b.hostname).is_empty());
    assert_eq!(lines(&marker), pushes.len(), "one hook run per push");
    assert_eq!(ca_push_record(&lab)["state"], "pushed");
    lab.a
        .env
        .run(&["certmesh", "log", "--verify", "--json"])
        .expect_code(0);
}

/// Writes `membership.json` atomically (the daemon reads it on every push).
fn write_membership(path: &Path, value: &serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn a_push_the_member_refuses_is_audited_on_the_ca_and_retried_until_accepted() {
    if !root_or_skip("a_push_the_member_refuses_is_audited_on_the_ca_and_retried_until_accepted") {
        return;
    }
    let lab = NetLab::new("pr");
    let (a, ca) = ca_with_env(&lab, &[("KOI_TEST_CERT_LIFETIME_SECS", "120")]);
    join_b(&lab, &ca);
    let cert = cert_dir(&lab.b).join("cert.pem");
    let old_serial = serial_of(&cert);
    // The member no longer counts one of its names as its own: the CA's push, which carries
    // the roster's names, names one it does not hold.
    let membership_path = lab.b.env.home.join("certmesh/membership.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&membership_path).expect("membership"))
            .expect("json");
    let mut narrowed = original.clone();
    let names = narrowed["dns_names"].as_array_mut().expect("dns_names");
    assert!(names.len() >= 2, "{original:#}");
    let dropped = names.pop().expect("a name");
    write_membership(&membership_path, &narrowed);
    let b = lab.b.env.start_daemon(&[NO_PULL]);

    wait_or_dump(
        &lab,
        &[&a, &b],
        "the refused push audited on the CA",
        Duration::from_secs(150),
        || !events_of(&lab.a.env, "push_refused", &lab.b.hostname).is_empty(),
    );
    let refused = events_of(&lab.a.env, "push_refused", &lab.b.hostname);
    assert_eq!(
        refused[0]["details"]["reason"], "names_not_held",
        "{refused:#?}"
    );
    assert_eq!(refused[0]["details"]["status"], 403);
    assert_eq!(refused[0]["details"]["old_serial"], old_serial.as_str());
    assert!(
        refused[0]["details"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(dropped.as_str().unwrap_or("?"))),
        "{refused:#?}"
    );
    assert_eq!(
        serial_of(&cert),
        old_serial,
        "a refused push changes nothing"
    );
    let record = member_push(&lab);
    assert_eq!(
        record["last_refused"][0]["reason"], "names_not_held",
        "{record:#}"
    );
    let rec = ca_push_record(&lab);
    assert!(
        rec["state"] == "refused" || rec["state"] == "pushed",
        "{rec:#}"
    );

    // The member holds the name again: the next retry is accepted.
    write_membership(&membership_path, &original);
    wait_or_dump(
        &lab,
        &[&a, &b],
        "the retried push",
        Duration::from_secs(60),
        || serial_of(&cert) != old_serial,
    );
    verifies(&ca.ca_pem, &cert);
    wait_until("cert_pushed audited", Duration::from_secs(15), || {
        !events_of(&lab.a.env, "cert_pushed", &lab.b.hostname).is_empty()
    });
    lab.a
        .env
        .run(&["certmesh", "log", "--verify", "--json"])
        .expect_code(0);
}

#[test]
fn a_locked_ca_pushes_nothing_says_so_in_status_and_pushes_right_after_unlock() {
    if !root_or_skip("a_locked_ca_pushes_nothing_says_so_in_status_and_pushes_right_after_unlock") {
        return;
    }
    let lab = NetLab::new("pl");
    let lifetime = [("KOI_TEST_CERT_LIFETIME_SECS", "120")];
    let (mut a, ca) = ca_with_env(&lab, &lifetime);
    join_b(&lab, &ca);
    let cert = cert_dir(&lab.b).join("cert.pem");
    let old_serial = serial_of(&cert);
    // A CA daemon starts locked.
    a.terminate(Duration::from_secs(10));
    let a = lab.a.env.start_daemon(&lifetime);
    wait_for_api(&lab.a, &lab.a.ip);
    let b = lab.b.env.start_daemon(&[NO_PULL]);
    wait_or_dump(
        &lab,
        &[&a, &b],
        "the locked CA saying a push waits for unlock",
        Duration::from_secs(150),
        || {
            let status = lab.a.env.run(&["certmesh", "status", "--json"]);
            status.json()["details"]["push"]["waiting_for_unlock"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    assert!(
        status.json()["summary"]
            .as_str()
            .is_some_and(|s| s.contains("wait for `koi certmesh unlock`")),
        "{}",
        status.stdout
    );
    assert_eq!(serial_of(&cert), old_serial, "a locked CA signs nothing");
    assert!(events_of(&lab.a.env, "cert_pushed", &lab.b.hostname).is_empty());

    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &ca.pass_file])
        .expect_code(0);
    wait_or_dump(
        &lab,
        &[&a, &b],
        "the push after unlock",
        Duration::from_secs(30),
        || serial_of(&cert) != old_serial,
    );
    verifies(&ca.ca_pem, &cert);
    wait_until("cert_pushed audited", Duration::from_secs(15), || {
        !events_of(&lab.a.env, "cert_pushed", &lab.b.hostname).is_empty()
    });
}
