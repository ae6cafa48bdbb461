//! A LAN flood of refused joins against a real CA (two-host namespace lab, real daemons): the
//! audit log grows by a bounded number of bytes, stays verifiable in little memory, stores no raw
//! terminal control bytes, the pending file of a locked CA stays bounded, every refusal is still
//! counted, and a legitimate join afterwards works (issue 9, finding 2 and half of finding 4).

use std::path::Path;

use crate::support::certmesh::{
    LabCa, audit_entries, ca_under_daemon, certmesh_pid, code, join_from_b, wait_for_api,
};
use crate::support::netlab::NetLab;
use crate::support::{KoiEnv, root_or_skip};

const FLOOD: usize = 5000;
/// The CA reads at most 64 KiB of body; the join body is built to sit just under it.
const BODY_CAP: usize = 64 * 1024;

/// A join body at the body cap whose host name and operator are long and full of terminal
/// control characters (ESC, BEL, CSI) that JSON carries as-is.
fn hostile_body() -> String {
    let chunk = "evil\u{1b}[31m\u{7}\u{1b}]0;owned\u{7}\u{9b}2J";
    let escaped = serde_json::to_string(chunk).expect("json").len();
    let per_field = (BODY_CAP - 600) / 2;
    let field = chunk.repeat(per_field / escaped);
    let body = serde_json::json!({
        "hostname": field,
        "code": "123456",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
        "operator": field,
    })
    .to_string();
    assert!(
        body.len() > BODY_CAP - 4096 && body.len() <= BODY_CAP,
        "{}",
        body.len()
    );
    body
}

/// Sends `n` joins with `body` from B to A's API with one curl process (HTTP keep-alive, 16 in
/// parallel). Returns the HTTP status of each.
fn flood(lab: &NetLab, ca_pem: &Path, body: &str, n: usize) -> Vec<u16> {
    let body_file = lab.b.env.dir.path().join("flood.json");
    std::fs::write(&body_file, body).expect("body file");
    let url = format!("https://{}:5641/v1/certmesh/join?n=[1-{n}]", lab.a.ip);
    let out = lab
        .b
        .command(
            "curl",
            &[
                "-s",
                "--no-progress-meter",
                "--parallel",
                // Under the API's per-address connection cap (8), so every request is answered.
                "--parallel-max",
                "6",
                "--max-time",
                "60",
                "--cacert",
                &ca_pem.display().to_string(),
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", body_file.display()),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
                &url,
            ],
        )
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn audit_size(env: &KoiEnv) -> u64 {
    std::fs::metadata(env.home.join("certmesh/audit.log")).map_or(0, |m| m.len())
}

/// Refusals of `reason` the log accounts for: individual entries plus counted ones.
fn refused_total(entries: &[serde_json::Value], reason: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e["event"] == "enrollment_refused" && e["details"]["reason"] == reason)
        .map(|e| e["details"]["count"].as_u64().unwrap_or(1))
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .expect("VmHWM")
}

/// Resets the process's peak resident size (VmHWM) to its current size (Linux ≥ 4.0).
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

fn assert_no_control_bytes(what: &str, text: &str) {
    for bad in ['\u{1b}', '\u{7}', '\u{9b}'] {
        assert!(
            !text.contains(bad),
            "{what} holds a raw {:?}: {}",
            bad,
            text.chars().take(400).collect::<String>()
        );
    }
}

#[test]
fn a_refused_join_flood_costs_bounded_bytes_and_the_ca_keeps_working() {
    if !root_or_skip("a_refused_join_flood_costs_bounded_bytes_and_the_ca_keeps_working") {
        return;
    }
    let lab = NetLab::new("fl");
    let (daemon, ca) = ca_under_daemon(&lab, &["--domain", "lan", "--no-trust", "--json"]);
    let LabCa {
        pass_file,
        uri,
        fingerprint: fp,
        ca_pem,
        ..
    } = ca;
    let body = hostile_body();

    // Unlocked CA: 5,000 refused joins with maximal, hostile fields. The plugin's peak memory is
    // measured from here (create's Argon2id needs 64 MiB by design; that is not the flood's).
    let pid = certmesh_pid(&lab.a.env);
    reset_peak_rss(pid);
    let before = audit_size(&lab.a.env);
    let statuses = flood(&lab, &ca_pem, &body, FLOOD);
    assert_eq!(statuses.len(), FLOOD, "curl did not finish every request");
    assert!(statuses.iter().all(|s| *s == 400), "{statuses:?}");
    let entries = audit_entries(&lab.a.env);
    let grown = audit_size(&lab.a.env) - before;
    eprintln!("a flood of {FLOOD} refused joins grew the audit log by {grown} bytes");
    assert!(
        grown <= 1024 * 1024,
        "the flood grew the audit log by {grown} bytes"
    );
    assert_eq!(
        refused_total(&entries, "bad_request"),
        FLOOD as u64,
        "every refusal is accounted for (individually or counted)"
    );

    // Verification streams: it passes, and the plugin's peak memory stays small.
    lab.a
        .env
        .run(&["certmesh", "log", "--verify"])
        .expect_code(0);
    assert_eq!(
        certmesh_pid(&lab.a.env),
        pid,
        "the plugin restarted during the flood"
    );
    let peak = peak_rss_kib(pid);
    eprintln!("koi-certmesh peak RSS during flood, log and log --verify: {peak} KiB");
    assert!(peak < 64 * 1024, "koi-certmesh peaked at {peak} KiB");

    // What the operator sees holds no raw terminal control bytes.
    let shown = lab.a.env.run(&["certmesh", "log"]);
    shown.expect_code(0);
    assert_no_control_bytes("koi certmesh log", &shown.stdout);
    // Nor does any stored entry once its JSON escapes are decoded.
    let stored = std::fs::read_to_string(lab.a.env.home.join("certmesh/audit.log")).expect("log");
    let decoded: String = stored
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("an audit line is JSON");
            format!(
                "{} {}",
                v["actor"].as_str().unwrap_or(""),
                values(&v["details"])
            )
        })
        .collect();
    assert_no_control_bytes("a decoded audit entry", &decoded);

    // Locked CA (daemon restarted): refusals wait in audit-pending.jsonl, which stays bounded,
    // and are signed in — counts included — at unlock.
    drop(daemon);
    let _daemon = lab.a.env.start_daemon(&[]);
    wait_for_api(&lab.a, &lab.a.ip);
    let statuses = flood(&lab, &ca_pem, &body, FLOOD);
    assert_eq!(statuses.len(), FLOOD);
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    let pending = std::fs::metadata(lab.a.env.home.join("certmesh/audit-pending.jsonl"))
        .map_or(0, |m| m.len());
    eprintln!("locked flood: audit-pending.jsonl is {pending} bytes");
    assert!(
        pending <= 300 * 1024,
        "audit-pending.jsonl is {pending} bytes"
    );
    let before = audit_size(&lab.a.env);
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &pass_file])
        .expect_code(0);
    let entries = audit_entries(&lab.a.env);
    assert!(audit_size(&lab.a.env) - before <= 1024 * 1024);
    assert_eq!(refused_total(&entries, "ca_locked"), FLOOD as u64);
    lab.a
        .env
        .run(&["certmesh", "log", "--verify"])
        .expect_code(0);

    // A legitimate join still works.
    let joined = join_from_b(&lab, &fp, &code(&uri, 0), &["--no-trust"]);
    assert_eq!(joined.code, Some(0), "{}{}", joined.stdout, joined.stderr);
}

/// Every string inside `v`, joined.
fn values(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(values).collect::<Vec<_>>().join(" "),
        serde_json::Value::Object(m) => m.values().map(values).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}
