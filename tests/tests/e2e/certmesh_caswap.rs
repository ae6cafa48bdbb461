//! The CA's own API certificate (issue 11, item 3, last point) end to end, in a two-namespace lab
//! with real daemons: created with a short lifetime (the debug-only
//! `KOI_TEST_CA_CERT_LIFETIME_SECS`), it renews by itself at 2/3 of it, and the running API swaps
//! it in without a restart (same daemon and plugin pids) and without dropping connections (a
//! keep-alive HTTP/1.1 connection opened before the swap still completes requests after it, on the
//! same TLS session, while new handshakes get the new certificate); `openssl s_client` sees the
//! new serial, the new certificate verifies against the root, the renewal is audited, and members
//! still join and renew afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::certmesh::cert_dir;
use crate::support::certmesh::{
    audit_entries, certmesh_bin, certmesh_pid, create, fresh_code, join_from_b, mesh_ids, openssl,
    output_text, public_key_of, serial_of, validity, wait_for_api, write_passphrase,
};
use crate::support::netlab::{LabHost, NetLab};
use crate::support::{root_or_skip, wait_until};

/// Opens one keep-alive connection to the API, sends a request on it every half second while a
/// fresh connection per round checks which certificate new handshakes get; once that changes,
/// sends one more request on the old connection and prints what happened as JSON.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, json, ssl, subprocess, sys, time

host = sys.argv[1]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def serial(sock):
    pem = ssl.DER_cert_to_PEM_cert(sock.getpeercert(True))
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(),
                         capture_output=True, check=True).stdout.decode()
    return out.strip().split("=", 1)[1].lower()

def get(conn):
    conn.request("GET", "/v1/certmesh/health")
    r = conn.getresponse()
    r.read()
    return r.status

old = http.client.HTTPSConnection(host, 5641, context=ctx, timeout=10)
statuses = [get(old)]
sock = old.sock
before = serial(sock)
fresh = before
deadline = time.time() + 120
while fresh == before and time.time() < deadline:
    new = http.client.HTTPSConnection(host, 5641, context=ctx, timeout=10)
    get(new)
    fresh = serial(new.sock)
    new.close()
    if fresh == before:
        statuses.append(get(old))
        time.sleep(0.5)
statuses.append(get(old))
print(json.dumps({
    "before": before,
    "new_handshake": fresh,
    "old_connection_serial": serial(old.sock),
    "same_socket": old.sock is sock,
    "statuses": statuses,
}))
"#;

/// The serial a new TLS handshake with `host`'s API gets, seen from `from`.
fn served_serial(from: &LabHost, host: &LabHost) -> String {
    let script = format!(
        "openssl s_client -connect {}:5641 </dev/null 2>/dev/null | openssl x509 -noout -serial",
        host.ip
    );
    let out = from
        .command("sh", &["-c", &script])
        .output()
        .expect("s_client");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn the_cas_api_certificate_renews_and_is_swapped_in_without_a_restart_or_a_dropped_connection() {
    if !root_or_skip(
        "the_cas_api_certificate_renews_and_is_swapped_in_without_a_restart_or_a_dropped_connection",
    ) {
        return;
    }
    let lab = NetLab::new("cs");
    lab.a.env.install(&certmesh_bin(), "certmesh");
    lab.b.env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&lab.a.env);
    // 90 s certificates: issued back-dated 60 s, so due 2/3 into 150 s, 40 s (± 3 s) after issue.
    let mut a = lab.a.env.start_daemon(&[
        ("KOI_TEST_CA_CERT_LIFETIME_SECS", "90"),
        ("KOI_TEST_CERT_LIFETIME_SECS", "90"),
    ]);
    let created = create(&lab.a.env, &pass_file, &["--no-trust", "--json"]);
    created.expect_code(0);
    let (uri, fingerprint) = mesh_ids(&created);
    wait_for_api(&lab.a, &lab.a.ip);
    let ca_pem = lab.a.env.home.join("certmesh/ca/ca.pem");
    let cert = cert_dir(&lab.a).join("cert.pem");
    let key = cert.with_file_name("key.pem");
    let first = serial_of(&cert);
    let first_key = public_key_of(&key, false);
    assert_eq!(served_serial(&lab.b, &lab.a), first);
    let daemon_pid = a.child.id();
    let plugin_pid = certmesh_pid(&lab.a.env);
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let api_cert = &status.json()["details"]["api_certificate"];
    assert!(api_cert["next_renewal_at"].is_string(), "{}", status.stdout);
    assert_eq!(api_cert["waiting_for_unlock"], false, "{}", status.stdout);

    // The keep-alive connection opens about 15 s before the renewal is due.
    let open_at = validity(&cert).0.unsigned_abs() + 60 + 25;
    while unix_now() < open_at {
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = lab.b.env.dir.path().join("keepalive.py");
    std::fs::write(&script, KEEPALIVE_CLIENT).expect("write the client");
    let out = lab
        .b
        .command("python3", &[&script.display().to_string(), &lab.a.ip])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "keep-alive client: {}",
        output_text(&out)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    assert_eq!(seen["before"], first.as_str(), "{seen}");
    assert_ne!(seen["new_handshake"], first.as_str(), "{seen}");
    assert_eq!(
        seen["same_socket"], true,
        "the old connection was dropped: {seen}"
    );
    assert_eq!(seen["old_connection_serial"], first.as_str(), "{seen}");
    let statuses = seen["statuses"].as_array().expect("statuses");
    assert!(
        statuses.len() >= 2 && statuses.iter().all(|s| s == 200),
        "{seen}"
    );

    // The files, the served certificate and the process are what they should be.
    let second = serial_of(&cert);
    assert_ne!(second, first);
    wait_until(
        "s_client seeing the file's serial",
        Duration::from_secs(30),
        || served_serial(&lab.b, &lab.a) == serial_of(&cert),
    );
    let verify = openssl(&[
        "verify",
        "-CAfile",
        &ca_pem.display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(verify.contains(": OK"), "openssl verify: {verify}");
    assert_ne!(public_key_of(&key, false), first_key, "a fresh key");
    assert_eq!(public_key_of(&cert, true), public_key_of(&key, false));
    assert_eq!(
        certmesh_pid(&lab.a.env),
        plugin_pid,
        "the plugin was not restarted"
    );
    assert!(
        a.child.try_wait().expect("wait").is_none(),
        "the daemon {daemon_pid} is running"
    );
    let renewals: Vec<_> = audit_entries(&lab.a.env)
        .into_iter()
        .filter(|e| e["event"] == "certificate_renewed" && e["details"]["api_certificate"] == true)
        .collect();
    assert!(
        renewals.iter().any(|e| e["details"]["old_serial"]
            .as_str()
            .map(str::to_ascii_lowercase)
            == Some(first.clone())),
        "{renewals:?}"
    );
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let api_cert = &status.json()["details"]["api_certificate"];
    assert_eq!(api_cert["last"]["last_ok"], true, "{}", status.stdout);

    // Members join and renew against the renewed certificate.
    let mut last = i64::MIN;
    let code = fresh_code(&uri, &mut last);
    join_from_b(&lab, &fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    let member_cert = cert_dir(&lab.b).join("cert.pem");
    let joined = serial_of(&member_cert);
    lab.b
        .env
        .run(&["certmesh", "renew", "--now"])
        .expect_code(0);
    assert_ne!(serial_of(&member_cert), joined);
    a.terminate(Duration::from_secs(10));
}

#[test]
fn a_locked_ca_says_its_api_certificate_is_due_and_renews_it_right_after_unlock() {
    if !root_or_skip("a_locked_ca_says_its_api_certificate_is_due_and_renews_it_right_after_unlock")
    {
        return;
    }
    let lab = NetLab::new("cl");
    lab.a.env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&lab.a.env);
    let env = [
        ("KOI_TEST_CA_CERT_LIFETIME_SECS", "90"),
        ("KOI_TEST_CERT_LIFETIME_SECS", "90"),
    ];
    let mut a = lab.a.env.start_daemon(&env);
    create(&lab.a.env, &pass_file, &["--no-trust", "--json"]).expect_code(0);
    wait_for_api(&lab.a, &lab.a.ip);
    // The daemon stops before the renewal is due and starts again (locked) after it.
    a.terminate(Duration::from_secs(10));
    let cert = cert_dir(&lab.a).join("cert.pem");
    let first = serial_of(&cert);
    let due_by = validity(&cert).0.unsigned_abs() + 60 + 40 + 4;
    while unix_now() < due_by {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut a = lab.a.env.start_daemon(&env);
    wait_for_api(&lab.a, &lab.a.ip);
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let json = status.json();
    assert_eq!(json["details"]["locked"], true, "{}", status.stdout);
    assert_eq!(
        json["details"]["api_certificate"]["waiting_for_unlock"], true,
        "{}",
        status.stdout
    );
    assert!(
        json["summary"]
            .as_str()
            .unwrap_or("")
            .contains("renews as soon as `koi certmesh unlock`"),
        "{}",
        status.stdout
    );
    assert_eq!(serial_of(&cert), first, "a locked CA signs nothing");
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &pass_file])
        .expect_code(0);
    wait_until("the renewal after unlock", Duration::from_secs(30), || {
        serial_of(&cert) != first
    });
    wait_until("the API serving it", Duration::from_secs(30), || {
        served_serial(&lab.a, &lab.a) == serial_of(&cert)
    });
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let api_cert = &status.json()["details"]["api_certificate"];
    assert_eq!(api_cert["waiting_for_unlock"], false, "{}", status.stdout);
    assert_eq!(api_cert["last"]["last_ok"], true, "{}", status.stdout);
    a.terminate(Duration::from_secs(10));
}
