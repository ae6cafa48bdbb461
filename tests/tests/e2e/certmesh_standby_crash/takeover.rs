//! `kill -9` during takeover, in the two-host lab of [`super::failover`]: B, a standby of A, is
//! stopped and its state copied aside; A vanishes (link down, daemon stopped); each cycle then
//! starts B from that copy — a standby whose primary is gone — and, at a random moment between
//! its daemon's start and a little past the measured end of an undisturbed takeover, SIGKILLs
//! B's certmesh (the daemon restarts it). B always ends a primary of term 2 (the term grows by
//! one, never more, never back), with the standby's vault as its CA key; unlocked with its own
//! passphrase its roster and audit log verify and hold the `ca_failover` entry; its certificate
//! and key match, with exactly one `ca_failover` entry — also when a takeover killed after
//! queueing that entry (the state laid out by hand) runs again. 5 cycles (each a daemon start
//! and a grace period). C, a member, joins first:
//! `koi status` (the host's one line per plugin) on A, B and C leads certmesh's line with the
//! role and term (`primary, term 1`, `standby CA (term 1`, `member, term 1`), and after the
//! locked takeover with `primary, term 2` … `LOCKED` on B and `member, term 2` on C.
//!
//! Before the presence fix, a standby started while its primary was already gone never took
//! over (it waited for an mDNS removal it could not hear), so no cycle, killed or not, ended.

use std::time::{Duration, Instant};

use super::failover::{B_ENV, link, primary_and_standby, restore, sh, status, wait_for};
use super::{assert_ca_verifies, assert_cert_and_key_match, run_until_ok};
use crate::support::certmesh::{audit_entries, certmesh_pid};
use crate::support::kill::{Jitter, kill9};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::root_or_skip;

/// Takeovers killed at random.
const CYCLES: usize = 5;

/// B ended a whole primary of term 2, its log verifying with one or more `ca_failover` entries
/// (the number is returned).
#[track_caller]
fn assert_took_over(b: &LabHost, snapshot: &std::path::Path, pass: &str, context: &str) -> usize {
    let s = wait_for(
        &format!("{context}: B takes over"),
        Duration::from_secs(60),
        || {
            let s = status(b);
            (s["details"]["role"] == "primary")
                .then_some(s.clone())
                .ok_or(s)
        },
    );
    assert_eq!(s["details"]["term"], 2, "{context}: {s}");
    let certmesh = b.env.home.join("certmesh");
    assert_eq!(
        std::fs::read(certmesh.join("ca/vault.sealed")).ok(),
        std::fs::read(snapshot.join("standby/ca/vault.sealed")).ok(),
        "{context}: the CA key is not the standby's vault"
    );
    let membership: serde_json::Value = serde_json::from_slice(
        &std::fs::read(certmesh.join("membership.json")).expect("membership"),
    )
    .expect("membership JSON");
    // A versioned store file (`{version, data}`) or a bare record.
    let record = membership.get("data").unwrap_or(&membership);
    assert_eq!(record["role"], "primary", "{context}: {membership}");
    run_until_ok(
        &b.env,
        &["certmesh", "unlock", "--passphrase-file", pass],
        Duration::from_secs(30),
    );
    assert_ca_verifies(&b.env, context);
    let failovers: Vec<serde_json::Value> = audit_entries(&b.env)
        .into_iter()
        .filter(|e| e["event"] == "ca_failover")
        .collect();
    assert!(!failovers.is_empty(), "{context}: no ca_failover entry");
    for f in &failovers {
        assert_eq!(f["details"]["term"], 2, "{context}: {f}");
        assert_eq!(f["details"]["old_term"], 1, "{context}: {f}");
    }
    assert_cert_and_key_match(b, context);
    failovers.len()
}

/// The certmesh line of `koi status` (the host-level summary) on `host`.
fn certmesh_line(host: &LabHost) -> String {
    let run = host.env.run(&["status"]);
    run.stdout
        .lines()
        .find(|l| l.contains("certmesh"))
        .unwrap_or("")
        .to_owned()
}

/// `member` joins the CA on `ca` (under its daemon, unlocked) with a code of a freshly rotated
/// enrollment secret, then runs its daemon with a 2 s heartbeat.
fn join_member(ca: &LabHost, member: &LabHost) -> crate::support::DaemonProc {
    let rotated = ca.env.run(&["certmesh", "rotate-secret", "--json"]);
    rotated.expect_code(0);
    let uri = rotated.json()["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_owned();
    let fingerprint = status(ca)["details"]["mesh"]["ca_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    crate::support::certmesh::join_host(
        member,
        &ca.ip,
        &fingerprint,
        &crate::support::certmesh::code(&uri, 0),
    )
    .expect_code(0);
    member.env.start_daemon(&[("KOI_TEST_HEARTBEAT_SECS", "2")])
}

#[test]
fn a_takeover_killed_at_any_moment_ends_a_primary_of_the_next_term_whose_log_verifies() {
    if !root_or_skip(
        "a_takeover_killed_at_any_moment_ends_a_primary_of_the_next_term_whose_log_verifies",
    ) {
        return;
    }
    let mut jitter = Jitter::new("takeover crash-safety");
    let net = SwitchLab::new("tk", 3);
    let (a, b, c) = (net.host(0), net.host(1), net.host(2));
    let (mut a_daemon, mut b_daemon, standby_pass) = primary_and_standby(&net);
    // C, a member, for `koi status` on all three roles.
    let _c_daemon = join_member(a, c);
    wait_for(
        "`koi status` shows each machine's role and term",
        Duration::from_secs(30),
        || {
            let lines = [a, b, c].map(certmesh_line);
            (lines[0].contains("primary, term 1")
                && lines[1].contains("standby CA (term 1")
                && lines[2].contains("member, term 1"))
            .then_some(())
            .ok_or_else(|| serde_json::json!(lines))
        },
    );

    // B's standby state, copied while its daemon is stopped; then A vanishes.
    b_daemon.terminate(Duration::from_secs(10));
    let snapshot = b.env.dir.path().join("standby-b");
    sh(
        &format!("cp -a certmesh '{}'", snapshot.display()),
        &b.env.home,
    );
    link(a, "down");
    a_daemon.terminate(Duration::from_secs(10));

    // An undisturbed takeover by a standby started after its primary went, timed.
    let roster = b.env.home.join("certmesh/roster.json");
    let started = Instant::now();
    let mut b_daemon = b.env.start_daemon(&B_ENV);
    wait_for(
        "a standby started after its primary went takes over",
        Duration::from_secs(60),
        || roster.exists().then_some(()).ok_or_else(|| status(b)),
    );
    let whole = u64::try_from(started.elapsed().as_millis()).unwrap_or(5000);
    // Taken over locked: `koi status` on B says primary, term 2, LOCKED; C follows to term 2.
    wait_for(
        "`koi status` shows the new primary locked and the member's new term",
        Duration::from_secs(30),
        || {
            let (b_line, c_line) = (certmesh_line(b), certmesh_line(c));
            (b_line.contains("primary, term 2")
                && b_line.contains("LOCKED")
                && c_line.contains("member, term 2"))
            .then_some(())
            .ok_or_else(|| serde_json::json!([b_line, c_line]))
        },
    );
    assert_eq!(
        assert_took_over(b, &snapshot, &standby_pass, "an undisturbed takeover"),
        1
    );
    // A takeover killed after queueing its `ca_failover` entry, before `membership.json` and
    // `roster.json` (the kill's state, laid out by hand): run again, it queues no second entry.
    b_daemon.terminate(Duration::from_secs(10));
    restore(b, &snapshot);
    let queued = serde_json::json!({
        "ts": "2026-01-01T00:00:00Z",
        "event": "ca_failover",
        "actor": "system",
        "details": {"new_primary": b.hostname, "old_primary": a.hostname, "old_term": 1,
                    "term": 2, "reason": "the first run, killed"},
    });
    std::fs::write(b.env.dir.path().join("queued.jsonl"), format!("{queued}\n"))
        .expect("queued entry");
    sh(
        &format!(
            "mkdir -m 700 ca && cp -p standby/ca/ca.pem standby/ca/vault.sealed ca/ && \
             cp -p standby/audit.log audit.log && cp '{}' audit-pending.jsonl && \
             chmod 600 audit-pending.jsonl",
            b.env.dir.path().join("queued.jsonl").display()
        ),
        &b.env.home.join("certmesh"),
    );
    b_daemon = b.env.start_daemon(&B_ENV);
    assert_eq!(
        assert_took_over(
            b,
            &snapshot,
            &standby_pass,
            "a takeover killed after queueing"
        ),
        1,
        "a takeover run again queued a second ca_failover"
    );
    let mut counts = Vec::new();
    for i in 0..CYCLES {
        b_daemon.terminate(Duration::from_secs(10));
        restore(b, &snapshot);
        let delay = whole / 2 + jitter.below(whole * 3 / 4);
        let context = format!(
            "cycle {i} (B's certmesh killed {delay} ms after its daemon started; a takeover \
             takes {whole} ms)"
        );
        let started = Instant::now();
        b_daemon = b.env.start_daemon(&B_ENV);
        let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(delay.saturating_sub(waited)));
        let was_primary = roster.exists();
        kill9(certmesh_pid(&b.env));
        let n = assert_took_over(b, &snapshot, &standby_pass, &context);
        eprintln!(
            "{context}: the takeover had {}finished; {n} ca_failover entries",
            if was_primary { "" } else { "not " }
        );
        counts.push(n);
        assert_eq!(n, 1, "{context}: one takeover, one ca_failover entry");
    }
    eprintln!("ca_failover entries per cycle: {counts:?}");
    drop(b_daemon);
}
