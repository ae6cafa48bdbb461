//! Certificate renewal (issue 11, items 1, 3 and 4) end to end, in a two-namespace lab with real
//! daemons: a member renews by itself at 2/3 of a short lifetime (the CA signs with the debug-only
//! `KOI_TEST_CERT_LIFETIME_SECS`), both certificates verify with `openssl verify`, the serial and
//! key change (the key stays with `--keep-key`), the reload hook fires exactly once per renewal and
//! restarts an `openssl s_server` that then serves the new certificate to `curl`, and a subscriber
//! receives `certmesh.cert.renewed` with the new serial; a member whose clock moved past its
//! renewal time while its daemon was stopped (the debug-only `KOI_TEST_CLOCK_OFFSET_SECS`) renews
//! as soon as the daemon starts. Refusals are in [`refusals`], `kill -9` in [`crash`]; the helpers
//! here are shared with both.

use std::path::Path;
use std::time::Duration;

use crate::support::certmesh::cert_dir;
use crate::support::certmesh::{
    LabCa, audit_entries, ca_under_daemon_with, fresh_code, join_from_b, openssl, output_text,
    public_key_of, serial_of, validity,
};
use crate::support::netlab::NetLab;
use crate::support::{DaemonProc, KoiEnv, fixture, root_or_skip, wait_until};

mod crash;
mod refusals;

/// Like `ca_under_daemon`, with extra environment for A's daemon.
fn ca_with_env(lab: &NetLab, env: &[(&str, &str)]) -> (DaemonProc, LabCa) {
    ca_with(lab, env, &[])
}

/// [`ca_with_env`] with extra `create` flags.
fn ca_with(lab: &NetLab, env: &[(&str, &str)], create_args: &[&str]) -> (DaemonProc, LabCa) {
    let mut args = vec!["--no-trust", "--json"];
    args.extend_from_slice(create_args);
    ca_under_daemon_with(lab, env, &args)
}

fn join_b(lab: &NetLab, ca: &LabCa) {
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
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

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

fn renewals_of(ca_env: &KoiEnv, host: &str) -> Vec<serde_json::Value> {
    audit_entries(ca_env)
        .into_iter()
        .filter(|e| e["event"] == "certificate_renewed" && e["details"]["hostname"] == host)
        .collect()
}

/// The serial the TLS server on B's port 8443 presents.
fn served_serial(lab: &NetLab) -> String {
    let out = lab
        .b
        .command(
            "sh",
            &[
                "-c",
                "openssl s_client -connect 127.0.0.1:8443 </dev/null 2>/dev/null | openssl x509 -noout -serial",
            ],
        )
        .output()
        .expect("s_client");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

#[test]
fn a_member_renews_at_two_thirds_and_its_hook_restarts_a_server_with_the_new_certificate() {
    if !root_or_skip(
        "a_member_renews_at_two_thirds_and_its_hook_restarts_a_server_with_the_new_certificate",
    ) {
        return;
    }
    let lab = NetLab::new("rn");
    let (_a, ca) = ca_with_env(&lab, &[("KOI_TEST_CERT_LIFETIME_SECS", "90")]);
    join_b(&lab, &ca);
    let dir = cert_dir(&lab.b);
    let cert = dir.join("cert.pem");
    let old_cert = lab.b.env.dir.path().join("old-cert.pem");
    std::fs::copy(&cert, &old_cert).expect("copy");
    let old_serial = serial_of(&cert);
    let old_key = public_key_of(&dir.join("key.pem"), false);

    // The hook: a marker line per run, and an s_server (re)started on the current files.
    let marker = lab.b.env.dir.path().join("hook-marker");
    let pidfile = lab.b.env.dir.path().join("s_server.pid");
    let hook = format!(
        "echo \"run $KOI_CERT_HOST\" >> {m}; \
         if [ -f {p} ]; then kill $(cat {p}) 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do \
         kill -0 $(cat {p}) 2>/dev/null || break; sleep 0.2; done; fi; \
         setsid openssl s_server -accept 8443 -www -cert \"$KOI_CERT_DIR/cert.pem\" \
         -key \"$KOI_CERT_DIR/key.pem\" >/dev/null 2>&1 </dev/null & echo $! > {p}",
        m = marker.display(),
        p = pidfile.display()
    );
    let set = lab.b.env.run(&[
        "certmesh", "set-hook", "--reload", &hook, "--test", "--json",
    ]);
    set.expect_code(0);
    assert_eq!(set.json()["test"]["ok"], true, "{}", set.stdout);
    assert_eq!(lines(&marker), 1);
    wait_until(
        "s_server on the first certificate",
        Duration::from_secs(15),
        || served_serial(&lab) == old_serial,
    );

    // The daemon renews by itself when 2/3 of the lifetime has passed; a subscriber on B records
    // the certmesh.cert.renewed events.
    lab.b.env.install(&fixture("koi-certwatch"), "certwatch");
    let mut b = lab.b.env.start_daemon(&[]);
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    assert!(
        status.json()["details"]["renewal"]["next_renewal_at"].is_string(),
        "{}",
        status.stdout
    );
    wait_until("the scheduled renewal", Duration::from_secs(150), || {
        serial_of(&cert) != old_serial
    });
    let new_serial = serial_of(&cert);
    wait_until(
        "the hook after the renewal",
        Duration::from_secs(30),
        || lines(&marker) >= 2,
    );
    let (old_start, old_end) = validity(&old_cert);
    let (new_start, _) = validity(&cert);
    let life = old_end - old_start;
    // Issued (notBefore + the 60 s back-dating) no earlier than 2/3 of the lifetime minus the
    // largest jitter (2 %), and before the old certificate expired.
    let issued = new_start + 60;
    assert!(
        issued >= old_start + life * 2 / 3 - life / 50 - 1,
        "renewed too early: issued {issued}, old validity {old_start}..{old_end}"
    );
    assert!(issued <= old_end, "renewed only after expiry");
    verifies(&ca.ca_pem, &old_cert);
    verifies(&ca.ca_pem, &cert);
    assert_ne!(
        public_key_of(&dir.join("key.pem"), false),
        old_key,
        "the key rotates by default"
    );
    assert_eq!(
        public_key_of(&cert, true),
        public_key_of(&dir.join("key.pem"), false)
    );
    wait_until(
        "s_server on the renewed certificate",
        Duration::from_secs(15),
        || served_serial(&lab) == new_serial || served_serial(&lab) == serial_of(&cert),
    );
    let name = format!("{}.local", lab.b.hostname);
    let curl = lab
        .b
        .command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                &ca.ca_pem.display().to_string(),
                "--resolve",
                &format!("{name}:8443:127.0.0.1"),
                &format!("https://{name}:8443/"),
            ],
        )
        .output()
        .expect("curl");
    assert!(curl.status.success(), "curl: {}", output_text(&curl));
    let events = lab.b.env.pids.join("certwatch.events");
    wait_until(
        "the certmesh.cert.renewed event",
        Duration::from_secs(15),
        || lines(&events) >= 1,
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&events)
            .expect("events")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("event JSON");
    assert_eq!(first["topic"], "certmesh.cert.renewed", "{first}");
    let payload = &first["payload"];
    assert_eq!(payload["host"], lab.b.hostname.as_str(), "{first}");
    assert_eq!(payload["serial"], new_serial.as_str(), "{first}");
    assert_eq!(
        payload["paths"]["cert"],
        cert.display().to_string().as_str()
    );
    assert!(
        payload["not_after"].is_string()
            && payload["names"].as_array().is_some_and(|n| !n.is_empty()),
        "{first}"
    );
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    let renewal = &status.json()["details"]["renewal"];
    assert_eq!(renewal["last"]["last_ok"], true, "{}", status.stdout);
    assert_eq!(renewal["hook"]["last"]["ok"], true, "{}", status.stdout);
    assert!(renewal["next_renewal_at"].is_string());
    b.terminate(Duration::from_secs(10));

    // Exactly one hook run per renewal (plus the --test run).
    let daemon_renewals = renewals_of(&lab.a.env, &lab.b.hostname);
    assert!(!daemon_renewals.is_empty());
    assert!(
        daemon_renewals
            .iter()
            .all(|e| e["details"]["key_changed"] == true)
    );
    assert_eq!(
        lines(&marker),
        1 + daemon_renewals.len(),
        "one hook run per renewal"
    );

    // Forced, keeping the key, without a daemon: one-shot.
    let key_before = public_key_of(&dir.join("key.pem"), false);
    let serial_before = serial_of(&cert);
    let forced = lab
        .b
        .env
        .run(&["certmesh", "renew", "--now", "--keep-key", "--json"]);
    forced.expect_code(0);
    let json = forced.json();
    assert_eq!(json["renewed"], true, "{}", forced.stdout);
    assert_eq!(json["key_changed"], false);
    assert_eq!(json["old_serial"], serial_before.as_str());
    assert_eq!(json["serial"], serial_of(&cert).as_str());
    assert_ne!(serial_of(&cert), serial_before);
    assert_eq!(public_key_of(&dir.join("key.pem"), false), key_before);
    assert_eq!(json["hook"], "exit 0", "{}", forced.stdout);
    assert_eq!(lines(&marker), 2 + daemon_renewals.len());
    verifies(&ca.ca_pem, &cert);
    let last = renewals_of(&lab.a.env, &lab.b.hostname);
    assert_eq!(last.last().expect("entry")["details"]["key_changed"], false);
    // The roster mirrors the hook.
    let roster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.a.env.home.join("certmesh/roster.json")).expect("roster"),
    )
    .expect("json");
    let entry = roster["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["hostname"] == lab.b.hostname.as_str()))
        .expect("entry");
    assert_eq!(entry["reload_hook"], hook.as_str());
    let verify = lab.a.env.run(&["certmesh", "log", "--verify", "--json"]);
    verify.expect_code(0);
}

#[test]
fn a_member_whose_clock_passed_its_renewal_time_renews_when_its_daemon_starts() {
    if !root_or_skip("a_member_whose_clock_passed_its_renewal_time_renews_when_its_daemon_starts") {
        return;
    }
    let lab = NetLab::new("rc");
    let (_a, ca) = ca_with_env(&lab, &[("KOI_TEST_CERT_LIFETIME_SECS", "600")]);
    join_b(&lab, &ca);
    let cert = cert_dir(&lab.b).join("cert.pem");
    let old_serial = serial_of(&cert);

    // Not due: the daemon leaves it alone.
    let mut b = lab.b.env.start_daemon(&[]);
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(
        status.json()["details"]["renewal"]["due_now"],
        false,
        "{}",
        status.stdout
    );
    b.terminate(Duration::from_secs(10));
    assert_eq!(serial_of(&cert), old_serial);

    // "Asleep" for 7 minutes: past 2/3 of 660 s.
    let _b = lab
        .b
        .env
        .start_daemon(&[("KOI_TEST_CLOCK_OFFSET_SECS", "420")]);
    wait_until("the catch-up renewal", Duration::from_secs(60), || {
        serial_of(&cert) != old_serial
    });
    verifies(&ca.ca_pem, &cert);
    assert_eq!(renewals_of(&lab.a.env, &lab.b.hostname).len(), 1);
}
