//! `kill -9` during demotion, in a two-host lab with koi-mdns (A the primary, B its standby,
//! re-check 3 s, heartbeat 2 s, grace 3 s): A is cut off and stopped, B takes over (term 2) and
//! is unlocked; A's CA state is then copied aside, so each cycle can start A again as the old
//! primary that comes back, sees term 2 and demotes itself.
//!
//! - A demotion killed after it moved `ca/` into `demoted/` but before `roster.json` (the state
//!   is laid out by hand, as the kill leaves it: that window is too narrow to hit by chance) is
//!   finished by the next start: a standby, its vault and log whole in `demoted/`.
//! - A few cycles (6: each one is a daemon start and an mDNS sighting) kill A's certmesh at a
//!   random moment between the daemon's start and a little past the measured end of an
//!   undisturbed demotion; the daemon restarts it, and A always ends a standby of term 2 with
//!   its whole log, unchanged, in `demoted/` (nothing signed), its certificate and key matching;
//!   B's roster and log verify throughout.

use crate::support::certmesh::join_host;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{assert_ca_verifies, assert_cert_and_key_match, assert_standby_whole, run_until_ok};
use crate::support::certmesh::{ca_on, certmesh_pid, fresh_code, install_mesh, promote_host};
use crate::support::kill::{Jitter, kill9};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::{DaemonProc, root_or_skip};

/// Demotions killed at random.
const CYCLES: usize = 6;

/// B's settings: the fastest re-check koi-mdns allows, a 2 s heartbeat and sync, 3 s grace.
pub(super) const B_ENV: [(&str, &str); 6] = [
    ("KOI_TEST_FAILOVER_GRACE_SECS", "3"),
    ("KOI_MDNS_RECHECK_SECS", "3"),
    ("KOI_TEST_HEARTBEAT_SECS", "2"),
    ("KOI_TEST_STANDBY_SYNC_SECS", "2"),
    ("KOI_RESTART_INITIAL_MS", "20"),
    ("KOI_RESTART_MAX_MS", "200"),
];

pub(super) fn status(host: &LabHost) -> serde_json::Value {
    run_until_ok(
        &host.env,
        &["certmesh", "status", "--json"],
        Duration::from_secs(30),
    )
    .json()
}

pub(super) use crate::support::wait_for;

pub(super) fn sh(script: &str, dir: &Path) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .expect("sh");
    assert!(ok.success(), "{script} failed in {}", dir.display());
}

/// `host`'s certmesh state replaced by a copy of `snapshot`.
pub(super) fn restore(host: &LabHost, snapshot: &Path) {
    let home = &host.env.home;
    let _ = std::fs::remove_dir_all(home.join("certmesh"));
    sh(&format!("cp -a '{}' certmesh", snapshot.display()), home);
}

/// A ended as a standby of term 2, with the old primary's log and vault whole in `demoted/`
/// (its log byte for byte as it was: nothing signed after coming back).
#[track_caller]
fn assert_demoted(a: &LabHost, daemon: &DaemonProc, snapshot: &Path, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = status(a);
        if s["details"]["role"] == "standby" && s["details"]["term"] == 2 {
            break s;
        }
        if Instant::now() > deadline {
            let log = daemon.log_text();
            let tail: String = log
                .chars()
                .skip(log.chars().count().saturating_sub(8000))
                .collect();
            panic!("{context}: A is not a standby after 60 s: {s:#}\nA's daemon log ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let certmesh = a.env.home.join("certmesh");
    assert!(
        !certmesh.join("roster.json").exists() && !certmesh.join("ca").exists(),
        "{context}: A is still a CA on disk: {s}"
    );
    assert_standby_whole(&certmesh.join("standby"), false, context);
    let demoted = certmesh.join("demoted");
    for name in ["audit.log", "roster.json", "ca/vault.sealed", "ca/ca.pem"] {
        assert_eq!(
            std::fs::read(demoted.join(name)).ok(),
            std::fs::read(snapshot.join(name)).ok(),
            "{context}: demoted/{name} is not the old primary's"
        );
    }
    assert_eq!(
        std::fs::read(certmesh.join("standby/ca/vault.sealed")).ok(),
        std::fs::read(snapshot.join("ca/vault.sealed")).ok(),
        "{context}: the standby's vault is not the old primary's"
    );
    assert_cert_and_key_match(a, context);
}

/// A's settings: debug logs, the fastest re-check, a 2 s heartbeat and sync, quick restarts.
const A_ENV: [(&str, &str); 6] = [
    ("KOI_LOG", "debug"),
    ("KOI_MDNS_RECHECK_SECS", "3"),
    ("KOI_TEST_HEARTBEAT_SECS", "2"),
    ("KOI_TEST_STANDBY_SYNC_SECS", "2"),
    ("KOI_RESTART_INITIAL_MS", "20"),
    ("KOI_RESTART_MAX_MS", "200"),
];

pub(super) fn start_a(a: &LabHost) -> DaemonProc {
    a.env.start_daemon(&A_ENV)
}

/// A two-host lab's mesh: A the primary (created under its daemon), B joined, under its daemon
/// with [`B_ENV`], promoted to standby and watching A (present, heartbeat ok). Returns both
/// daemons and B's standby passphrase file.
pub(super) fn primary_and_standby(net: &SwitchLab) -> (DaemonProc, DaemonProc, String) {
    install_mesh(net);
    let (a, b) = (net.host(0), net.host(1));
    let (a_daemon, ca) = ca_on(a, &A_ENV, &["--no-trust", "--json"]);
    let (uri, fingerprint) = (ca.uri, ca.fingerprint);
    let mut last = i64::MIN;
    let code = fresh_code(&uri, &mut last);
    join_host(b, &a.ip, &fingerprint, &code).expect_code(0);
    let b_daemon = b.env.start_daemon(&B_ENV);
    let standby_pass = b.env.dir.path().join("standby-pass");
    std::fs::write(&standby_pass, "demotion standby passphrase 77\n").expect("standby pass");
    let standby_pass = standby_pass.display().to_string();
    let code = fresh_code(&uri, &mut last);
    promote_host(b, &code, &standby_pass).expect_code(0);
    wait_for("B sees A present", Duration::from_secs(30), || {
        let s = status(b);
        let w = &s["details"]["primary_watch"];
        (w["mdns"] == "present" && w["heartbeat_ok"] == true)
            .then_some(())
            .ok_or(s)
    });

    (a_daemon, b_daemon, standby_pass)
}

/// Takes `host`'s link down or up.
pub(super) fn link(host: &LabHost, state: &str) {
    let ok = host
        .command("ip", &["link", "set", "veth0", state])
        .status()
        .expect("ip link");
    assert!(ok.success());
}

#[test]
fn a_demotion_killed_at_any_moment_ends_a_standby_with_the_old_log_whole() {
    if !root_or_skip("a_demotion_killed_at_any_moment_ends_a_standby_with_the_old_log_whole") {
        return;
    }
    let mut jitter = Jitter::new("demotion crash-safety");
    let net = SwitchLab::new("dk", 2);
    let (a, b) = (net.host(0), net.host(1));
    let (mut a_daemon, _b_daemon, standby_pass) = primary_and_standby(&net);

    // A vanishes (interface down, daemon stopped); B takes over and is unlocked.
    link(a, "down");
    a_daemon.terminate(Duration::from_secs(10));
    wait_for("B takes over", Duration::from_secs(40), || {
        let s = status(b);
        (s["details"]["role"] == "primary" && s["details"]["term"] == 2)
            .then_some(())
            .ok_or(s)
    });
    b.env
        .run(&["certmesh", "unlock", "--passphrase-file", &standby_pass])
        .expect_code(0);
    assert_ca_verifies(&b.env, "after the takeover");

    // The old primary's state, kept to start A as it from each cycle.
    let snapshot = a.env.dir.path().join("old-primary");
    sh(
        &format!("cp -a certmesh '{}'", snapshot.display()),
        &a.env.home,
    );
    link(a, "up");

    // 1. A demotion killed after `ca/` moved to `demoted/`, before `roster.json` did: the kill's
    //    state, laid out by hand. The next start finishes the demotion from `demoted/ca`.
    restore(a, &snapshot);
    sh(
        "mkdir -m 700 demoted && for f in audit.log audit.log.checkpoint audit-pending.jsonl \
         totp-state.json ca; do if [ -e \"$f\" ]; then mv \"$f\" demoted/; fi; done",
        &a.env.home.join("certmesh"),
    );
    let mut a_daemon = start_a(a);
    assert_demoted(
        a,
        &a_daemon,
        &snapshot,
        "a demotion killed after moving ca/",
    );
    assert_ca_verifies(&b.env, "a demotion killed after moving ca/");

    // 2. One undisturbed demotion, timed from the daemon's start; then kills across it.
    a_daemon.terminate(Duration::from_secs(10));
    restore(a, &snapshot);
    let started = Instant::now();
    let mut a_daemon = start_a(a);
    let demoted_roster = a.env.home.join("certmesh/demoted/roster.json");
    wait_for("an undisturbed demotion", Duration::from_secs(60), || {
        demoted_roster
            .exists()
            .then_some(())
            .ok_or_else(|| status(a))
    });
    let whole = u64::try_from(started.elapsed().as_millis()).unwrap_or(5000);
    assert_demoted(a, &a_daemon, &snapshot, "an undisturbed demotion");
    for i in 0..CYCLES {
        a_daemon.terminate(Duration::from_secs(10));
        restore(a, &snapshot);
        let delay = whole / 3 + jitter.below(whole);
        let context = format!(
            "cycle {i} (A's certmesh killed {delay} ms after its daemon started; a demotion takes {whole} ms)"
        );
        let started = Instant::now();
        a_daemon = start_a(a);
        let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(delay.saturating_sub(waited)));
        let was_demoted = demoted_roster.exists();
        kill9(certmesh_pid(&a.env));
        eprintln!(
            "{context}: the demotion had {}finished",
            if was_demoted { "" } else { "not " }
        );
        assert_demoted(a, &a_daemon, &snapshot, &context);
        assert_ca_verifies(&b.env, &context);
    }
    drop(a_daemon);
}
