//! Renewal refusals, end to end: the CA refuses a certificate of another mesh, an expired one
//! (unless the mesh opted in with `--allow-expired-renewal`, and then only within 30 days), and
//! names outside the scope or held by another entry — each with a clear error and an audit entry;
//! the body cannot name a host; the REST API cannot set a hook.

use std::path::Path;
use std::time::Duration;

use super::{LabCa, ca_with, ca_with_env, join_b, renewals_of};
use crate::support::certmesh::cert_dir;
use crate::support::certmesh::serial_of;
use crate::support::certmesh::{
    certmesh_bin, create, openssl_csr, raw_post, refusals, wait_for_api, write_passphrase,
};
use crate::support::netlab::NetLab;
use crate::support::{DaemonProc, KoiEnv, free_port, root_or_skip};

/// A renewal with `body` presenting `client` is refused with `status`, the error naming `needle`.
#[track_caller]
fn refused(
    lab: &NetLab,
    ca: &LabCa,
    client: (&Path, &Path),
    body: serde_json::Value,
    status: u16,
    needle: &str,
) {
    let (got, answer) = raw_renew(lab, &ca.ca_pem, client.0, client.1, &body);
    assert_eq!(got, status, "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or("").contains(needle),
        "{answer}"
    );
}

/// POSTs a renewal body from B with curl, presenting `cert`/`key`. Returns (status, body).
fn raw_renew(
    lab: &NetLab,
    ca_pem: &Path,
    cert: &Path,
    key: &Path,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    raw_post(lab, ca_pem, "renew", Some((cert, key)), body)
}

#[test]
fn the_ca_refuses_foreign_expired_and_out_of_scope_renewals_and_rest_cannot_set_a_hook() {
    if !root_or_skip(
        "the_ca_refuses_foreign_expired_and_out_of_scope_renewals_and_rest_cannot_set_a_hook",
    ) {
        return;
    }
    let lab = NetLab::new("rr");
    let (mut a, ca) = ca_with_env(&lab, &[]);
    lab.a
        .env
        .run(&["certmesh", "issue", "nas.lan"])
        .expect_code(0);
    join_b(&lab, &ca);
    let dir = cert_dir(&lab.b);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let csr = openssl_csr(lab.b.env.dir.path(), &lab.b.hostname, false);

    // Names outside the scope, and a name another entry holds.
    refused(
        &lab,
        &ca,
        (&cert, &key),
        serde_json::json!({"csr_pem": csr, "extra_names": ["www.example.com"]}),
        403,
        "www.example.com",
    );
    refused(
        &lab,
        &ca,
        (&cert, &key),
        serde_json::json!({"csr_pem": csr, "extra_names": ["nas.lan"]}),
        403,
        "device certificate nas.lan",
    );
    // The body cannot name another host.
    let (status, body) = raw_renew(
        &lab,
        &ca.ca_pem,
        &cert,
        &key,
        &serde_json::json!({"csr_pem": csr, "hostname": lab.a.hostname}),
    );
    assert_eq!(status, 400, "{body}");

    // A certificate of another mesh.
    let other = KoiEnv::new();
    other.install(&certmesh_bin(), "certmesh");
    let other_pass = write_passphrase(&other);
    let made = create(&other, &other_pass, &["--no-trust", "--json"]);
    made.expect_code(0);
    let other_dir = std::fs::read_dir(other.home.join("certs"))
        .expect("certs")
        .flatten()
        .next()
        .expect("a certificate directory")
        .path();
    let (status, body) = raw_renew(
        &lab,
        &ca.ca_pem,
        &other_dir.join("cert.pem"),
        &other_dir.join("key.pem"),
        &serde_json::json!({"csr_pem": csr}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "not_a_member", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not issued by this mesh"),
        "{body}"
    );

    // An expired certificate: the CA's clock is 31 days later (debug-only offset).
    a.terminate(Duration::from_secs(10));
    let _a = lab
        .a
        .env
        .start_daemon(&[("KOI_TEST_CLOCK_OFFSET_SECS", &(31 * 86_400).to_string())]);
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &ca.pass_file])
        .expect_code(0);
    wait_for_api(&lab.a, &lab.a.ip);
    let serial = serial_of(&cert);
    let expired = lab.b.env.run(&["certmesh", "renew", "--now"]);
    assert_ne!(expired.code, Some(0));
    let text = format!("{}{}", expired.stdout, expired.stderr);
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("koi certmesh join"), "{text}");
    assert_eq!(serial_of(&cert), serial, "nothing was written");
    let status = lab.b.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(
        status.json()["details"]["renewal"]["last"]["last_ok"],
        false,
        "{}",
        status.stdout
    );

    let reasons = refusals(&lab.a.env);
    for reason in ["not_permitted", "not_a_member", "certificate_expired"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} not audited: {reasons:?}"
        );
    }
    assert_eq!(reasons.iter().filter(|r| *r == "not_permitted").count(), 2);

    // REST cannot set a hook (the command would run as the daemon's user).
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let _b = lab
        .b
        .env
        .start_daemon(&[("KOI_REST_ENABLED", "true"), ("KOI_REST_BIND", &bind)]);
    let out = lab
        .b
        .command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-H",
                "content-type: application/json",
                "--data-binary",
                r#"{"reload":"touch /tmp/koi-rest-hook"}"#,
                "-w",
                "\n%{http_code}",
                &format!("http://{bind}/v1/certmesh/set-hook"),
            ],
        )
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.ends_with("\n403"), "{text}");
    assert!(!lab.b.env.home.join("certmesh/hook.json").exists());
    // The CLI can.
    lab.b
        .env
        .run(&["certmesh", "set-hook", "--reload", "true"])
        .expect_code(0);
    assert!(lab.b.env.home.join("certmesh/hook.json").exists());
}

/// Restarts A's daemon with its clock `days` later and unlocks it.
fn restart_ca_later(lab: &NetLab, ca: &LabCa, days: i64) -> DaemonProc {
    let offset = (days * 86_400).to_string();
    let daemon = lab
        .a
        .env
        .start_daemon(&[("KOI_TEST_CLOCK_OFFSET_SECS", &offset)]);
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &ca.pass_file])
        .expect_code(0);
    wait_for_api(&lab.a, &lab.a.ip);
    daemon
}

#[test]
fn a_mesh_created_with_allow_expired_renewal_renews_a_recently_expired_certificate_only() {
    if !root_or_skip(
        "a_mesh_created_with_allow_expired_renewal_renews_a_recently_expired_certificate_only",
    ) {
        return;
    }
    let lab = NetLab::new("rx");
    let (mut a, ca) = ca_with(&lab, &[], &["--allow-expired-renewal"]);
    join_b(&lab, &ca);
    let cert = cert_dir(&lab.b).join("cert.pem");
    let first = serial_of(&cert);

    // Expired a day ago (30-day leaf, CA clock 31 days on): renewed, and audited as such.
    a.terminate(Duration::from_secs(10));
    let mut a = restart_ca_later(&lab, &ca, 31);
    let renewed = lab.b.env.run(&["certmesh", "renew", "--now", "--json"]);
    renewed.expect_code(0);
    assert_ne!(serial_of(&cert), first);
    let entries = renewals_of(&lab.a.env, &lab.b.hostname);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["details"]["expired_renewal"], true);

    // Expired 35 days ago: past the 30-day bound even on this mesh.
    a.terminate(Duration::from_secs(10));
    let _a = restart_ca_later(&lab, &ca, 65);
    let second = serial_of(&cert);
    let refused = lab.b.env.run(&["certmesh", "renew", "--now"]);
    assert_ne!(refused.code, Some(0));
    let text = format!("{}{}", refused.stdout, refused.stderr);
    assert!(text.contains("more than 30 days ago"), "{text}");
    assert!(text.contains("koi certmesh join"), "{text}");
    assert_eq!(serial_of(&cert), second);
    assert!(
        refusals(&lab.a.env)
            .iter()
            .any(|r| r == "certificate_expired")
    );
}
