//! The standby CA (issue 11 item 6) end to end in a three-host lab (A primary, B standby, C a
//! member that joins later), with real daemons at `KOI_LOG=trace` and protocol traces on:
//! `koi certmesh promote` with a wrong code is refused and audited; with the right code, typed at
//! B's terminal with the new passphrase (no echo, under B's daemon), B becomes a standby that
//! starts locked, refuses the primary's passphrase and unlocks with its own; the roster manifest
//! and the audit log (append-only, verified) sync after C joins A; no log, trace or terminal holds
//! the TOTP secret, a passphrase, the code or a private key, and B's disk holds no plaintext CA
//! key or secret; a primary restored from an older backup serves an older manifest, which B
//! refuses as a rollback, and a shorter audit log, which B refuses as diverged; without a
//! terminal `promote` needs `--code` and `--passphrase-file`; and a plugin calling it through the
//! host is refused.

mod lab;
mod leaks;

use std::time::Duration;

use crate::support::certmesh::audit_entries;
use crate::support::netlab::SwitchLab;
use crate::support::root_or_skip;

use crate::support::pty::{Pty, result_line};
use lab::{Mesh, STANDBY_PASSPHRASE};

#[test]
fn promote_refuses_a_wrong_code_then_makes_a_locked_standby_that_unlocks_and_syncs() {
    if !root_or_skip(
        "promote_refuses_a_wrong_code_then_makes_a_locked_standby_that_unlocks_and_syncs",
    ) {
        return;
    }
    let lab = SwitchLab::new("sb", 3);
    let mut mesh = Mesh::new(&lab);
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));

    // A wrong code: refused, audited on A, nothing written on B.
    let wrong = mesh.promote_b(Some(&crate::support::certmesh::wrong_code(&mesh.uri)));
    wrong.expect_code(1);
    assert!(
        wrong.stderr.contains("refused the promotion") && wrong.stderr.contains("bad_code"),
        "{}",
        wrong.stderr
    );
    assert!(!b.env.home.join("certmesh/standby").exists());
    let refused = audit_entries(&a.env)
        .into_iter()
        .find(|e| e["event"] == "standby_refused")
        .expect("standby_refused audited on A");
    assert_eq!(
        refused["details"]["standby"],
        b.hostname.as_str(),
        "{refused}"
    );

    // The right code: B is a standby, locked.
    let code = mesh.next_code();
    // At B's terminal (the call is forwarded to B's daemon, which asks through the CLI): the new
    // passphrase twice, then the code; nothing typed is echoed.
    let mut pty = Pty::start(&b.env, &["certmesh", "promote", "--json"], &lab::TRACE);
    pty.wait_for("Passphrase for the CA key");
    pty.type_text(&format!("{STANDBY_PASSPHRASE}\n"));
    pty.wait_for("Passphrase again");
    pty.type_text(&format!("{STANDBY_PASSPHRASE}\n"));
    pty.wait_for("Enrollment code");
    pty.type_text(&format!("{code}\n"));
    let (exit, terminal) = pty.finish();
    assert_eq!(exit, Some(0), "{terminal}");
    assert!(
        !terminal.contains(STANDBY_PASSPHRASE) && !terminal.contains(&code),
        "a typed secret was echoed: {terminal}"
    );
    let answer = result_line(&terminal);
    assert_eq!(answer["locked"], true, "{answer}");
    assert_eq!(answer["term"], 1, "{answer}");
    assert!(answer["audit_entries"].as_u64() >= Some(3), "{answer}");
    let status = mesh.status(b);
    assert_eq!(status["details"]["role"], "standby", "{status}");
    assert_eq!(status["details"]["term"], 1, "{status}");
    assert_eq!(status["details"]["standby"]["locked"], true, "{status}");
    assert!(
        status["summary"].as_str().unwrap_or("").contains("LOCKED"),
        "{status}"
    );
    let a_status = mesh.status(a);
    assert_eq!(
        a_status["details"]["standbys"],
        serde_json::json!([b.hostname]),
        "{a_status}"
    );
    assert_eq!(a_status["details"]["term"], 1, "{a_status}");
    let events: Vec<String> = audit_entries(&a.env)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(events.iter().any(|e| e == "standby_promoted"), "{events:?}");
    // The standby's copy of the log carries the same CA-signed entry.
    let copy =
        std::fs::read_to_string(b.env.home.join("certmesh/standby/audit.log")).expect("log copy");
    assert!(
        copy.lines()
            .last()
            .unwrap_or("")
            .contains("standby_promoted"),
        "{copy}"
    );

    // The primary's passphrase does not open the standby; its own does.
    let wrong_pass = b.env.dir.path().join("primary-pass");
    std::fs::write(
        &wrong_pass,
        format!("{}\n", crate::support::certmesh::PASSPHRASE),
    )
    .expect("pass");
    b.env
        .run(&[
            "certmesh",
            "unlock",
            "--passphrase-file",
            &wrong_pass.display().to_string(),
        ])
        .expect_code(1);
    let unlocked = mesh.traced(
        b,
        &[
            "certmesh",
            "unlock",
            "--passphrase-file",
            &mesh.standby_pass,
            "--json",
        ],
    );
    unlocked.expect_code(0);
    assert_eq!(unlocked.json()["unlocked"], true, "{}", unlocked.stdout);
    let status = mesh.status(b);
    assert_eq!(status["details"]["standby"]["locked"], false, "{status}");

    // C joins A: the roster manifest reaches B (through B's heartbeat or the periodic sync).
    mesh.join(c);
    let version = lab::roster_version(&a.env.home);
    lab::wait_for(
        "B syncs the roster with C in it",
        Duration::from_secs(60),
        || {
            let status = mesh.status(b);
            let held = status["details"]["standby"]["roster_version"]
                .as_u64()
                .unwrap_or(0);
            let manifest =
                std::fs::read_to_string(b.env.home.join("certmesh/standby/roster-manifest.json"))
                    .unwrap_or_default();
            (held >= version && manifest.contains(&format!("\"{}\"", c.hostname)))
                .then_some(held)
                .ok_or(status)
        },
    );
    let status = mesh.status(b);
    assert!(
        status["details"]["standby"]["last_sync_error"].is_null(),
        "{status}"
    );
    assert!(
        status["details"]["standby"]["last_sync_ok_at"].is_string(),
        "{status}"
    );
    // The audit log follows, append-only: B's copy becomes A's log byte for byte (A's verifies).
    let a_log = a.env.home.join("certmesh/audit.log");
    let b_copy = b.env.home.join("certmesh/standby/audit.log");
    lab::wait_for(
        "B's audit copy level with A's log",
        Duration::from_secs(60),
        || {
            let (theirs, ours) = (
                std::fs::read(&a_log).unwrap_or_default(),
                std::fs::read(&b_copy).unwrap_or_default(),
            );
            (theirs == ours).then_some(()).ok_or_else(|| mesh.status(b))
        },
    );
    let copy = std::fs::read_to_string(&b_copy).expect("copy");
    assert!(
        copy.lines()
            .any(|l| l.contains("member_enrolled") && l.contains(&c.hostname)),
        "C's enrollment reached B's copy"
    );
    let verified = a.env.run(&["certmesh", "log", "--verify", "--json"]);
    verified.expect_code(0);
    let status = mesh.status(b);
    assert!(
        status["details"]["standby"]["last_audit_sync_error"].is_null(),
        "{status}"
    );
    assert_eq!(
        status["details"]["standby"]["audit_entries"].as_u64(),
        Some(copy.lines().count() as u64),
        "{status}"
    );

    // Nothing secret in any log or trace, nor in plaintext on B's disk.
    let secrets = leaks::Secrets::of(&mesh, &code);
    mesh.stop_daemons();
    let mut texts: Vec<(String, String)> = mesh.logs();
    for (what, run) in [("unlock", &unlocked), ("wrong promote", &wrong)] {
        texts.push((what.into(), format!("{}{}", run.stdout, run.stderr)));
    }
    texts.push(("the promoting terminal".into(), terminal));
    assert!(
        texts
            .iter()
            .any(|(_, t)| t.contains("TRACE") || t.contains("\"method\"")),
        "the daemons ran with trace logging"
    );
    secrets.assert_absent_from_logs(&texts);
    secrets.assert_absent_from_disk(&b.env.home, &b.hostname);
}

#[test]
fn a_primary_restored_from_an_old_backup_serves_an_older_manifest_which_the_standby_refuses() {
    if !root_or_skip(
        "a_primary_restored_from_an_old_backup_serves_an_older_manifest_which_the_standby_refuses",
    ) {
        return;
    }
    let lab = SwitchLab::new("sr", 2);
    lab.host(1)
        .env
        .install(&crate::support::fixture("koi-namer"), "namer");
    let mut mesh = Mesh::new(&lab);
    let (a, b) = (lab.host(0), lab.host(1));
    // A plugin calling certmesh/promote through the host is refused (CLI only), nothing written.
    let params = serde_json::json!({"code": "123456", "passphrase_file": mesh.standby_pass});
    let by_plugin = b.env.run(&[
        "namer",
        "promote",
        "--params",
        &params.to_string(),
        "--json",
    ]);
    assert_ne!(by_plugin.code, Some(0), "{}", by_plugin.stdout);
    assert!(
        format!("{}{}", by_plugin.stdout, by_plugin.stderr)
            .contains("runs only from the koi command line"),
        "{}\n{}",
        by_plugin.stdout,
        by_plugin.stderr
    );
    assert!(!b.env.home.join("certmesh/standby").exists());
    // Without a terminal, the code and the passphrase file are required (and nothing is sent).
    let blind = b.env.run(&["certmesh", "promote", "--json"]);
    blind.expect_code(1);
    assert!(
        blind
            .stderr
            .contains("--code CODE and --passphrase-file FILE"),
        "{}",
        blind.stderr
    );
    let code = mesh.next_code();
    mesh.promote_b(Some(&code)).expect_code(0);
    let backup = lab::backup(&a.env.home);

    // Four audited changes on A, synced by B.
    for verb in [
        "close-enrollment",
        "open-enrollment",
        "close-enrollment",
        "open-enrollment",
    ] {
        a.env.run(&["certmesh", verb, "--json"]).expect_code(0);
    }
    let newer = lab::roster_version(&a.env.home);
    lab::wait_for("B syncs the newer roster", Duration::from_secs(60), || {
        let status = mesh.status(b);
        (status["details"]["standby"]["roster_version"].as_u64() >= Some(newer))
            .then_some(())
            .ok_or(status)
    });

    // A is restored from the backup taken before them, then unlocked: its manifests are older.
    mesh.restart_a_from(&backup);
    let older = lab::roster_version(&a.env.home);
    assert!(
        older < newer,
        "the restored roster is older ({older} < {newer})"
    );
    let status = lab::wait_for(
        "B refuses the older manifest",
        Duration::from_secs(60),
        || {
            let status = mesh.status(b);
            (status["details"]["standby"]["rollbacks_rejected"].as_u64() >= Some(1))
                .then_some(status.clone())
                .ok_or(status)
        },
    );
    let standby = &status["details"]["standby"];
    assert_eq!(standby["roster_version"].as_u64(), Some(newer), "{status}");
    assert!(
        standby["last_sync_error"]
            .as_str()
            .is_some_and(|e| e.contains("rollback")),
        "{status}"
    );
    let manifest =
        std::fs::read_to_string(b.env.home.join("certmesh/standby/roster-manifest.json"))
            .expect("manifest");
    let kept: serde_json::Value = serde_json::from_str(&manifest).expect("manifest JSON");
    assert_eq!(
        kept["manifest"]["version"].as_u64(),
        Some(newer),
        "the newer manifest is kept"
    );
    assert!(
        mesh.b_log()
            .contains("refused a roster manifest of version"),
        "the rollback is logged"
    );
    // The restored primary's log is shorter than B's copy: the audit sync is refused, the copy kept.
    let copy_len = std::fs::metadata(b.env.home.join("certmesh/standby/audit.log"))
        .expect("copy")
        .len();
    let status = lab::wait_for(
        "B refuses the diverged audit log",
        Duration::from_secs(60),
        || {
            let status = mesh.status(b);
            status["details"]["standby"]["last_audit_sync_error"]
                .as_str()
                .is_some_and(|e| e.contains("diverged"))
                .then_some(status.clone())
                .ok_or(status)
        },
    );
    assert_eq!(
        std::fs::metadata(b.env.home.join("certmesh/standby/audit.log"))
            .expect("copy")
            .len(),
        copy_len,
        "the copy is kept: {status}"
    );
}
