//! koi-certmesh on one host without a daemon: tampering with the audit log (`log --verify`), bad
//! input getting clear errors with nothing stored lost, and the keystroke mash at a terminal.

use crate::support::KoiEnv;
use crate::support::certmesh::{audit_entries, certmesh_bin, create, local_ca, write_passphrase};

#[test]
fn log_verify_catches_an_edited_a_deleted_and_a_swapped_line() {
    let (env, pass_file) = local_ca();
    for name in ["one.lan", "two.lan", "three.lan"] {
        env.run(&["certmesh", "issue", name, "--passphrase-file", &pass_file])
            .expect_code(0);
    }
    env.run(&["certmesh", "log", "--verify"]).expect_code(0);
    let log = env.home.join("certmesh/audit.log");
    let original = std::fs::read_to_string(&log).expect("audit.log");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 6, "{original}");
    let check = |tampered: Vec<String>, expect_line: usize| {
        std::fs::write(&log, tampered.join("\n") + "\n").expect("write");
        let run = env.run(&["certmesh", "log", "--verify"]);
        run.expect_code(1);
        assert!(
            run.stderr.contains(&format!("line {expect_line}")),
            "expected line {expect_line}: {}",
            run.stderr
        );
        std::fs::write(&log, &original).expect("restore");
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    // Edited: the timestamp of line 3 moved back a millennium.
    let mut edited = owned.clone();
    edited[2] = edited[2].replacen("\"ts\":\"2", "\"ts\":\"1", 1);
    assert_ne!(edited[2], owned[2]);
    check(edited, 3);
    // Deleted: line 3 removed (line 3 is now the old line 4, whose prev_hash breaks).
    let mut deleted = owned.clone();
    deleted.remove(2);
    check(deleted, 3);
    // Swapped: lines 3 and 4.
    let mut swapped = owned.clone();
    swapped.swap(2, 3);
    check(swapped, 3);
    // Untouched again: intact.
    env.run(&["certmesh", "log", "--verify"]).expect_code(0);
}

#[test]
fn bad_input_gets_clear_errors_and_nothing_stored_is_lost() {
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&env);
    // Non-interactive without a passphrase file: a clear error naming the flag.
    let run = env.run(&["certmesh", "create", "--entropy", "system"]);
    run.expect_code(1);
    assert!(run.stderr.contains("--passphrase-file"), "{}", run.stderr);
    // A weak passphrase.
    let weak = env.dir.path().join("weak");
    std::fs::write(&weak, "short").expect("weak");
    let run = create(&env, &weak.display().to_string(), &[]);
    run.expect_code(1);
    assert!(
        !env.home.join("certmesh").exists(),
        "a refused create left a mesh behind"
    );
    // Organization requires a scope and an operator.
    let run = create(&env, &pass_file, &["--profile", "organization"]);
    run.expect_code(1);
    assert!(run.stderr.contains("--domain"), "{}", run.stderr);
    // A real mesh; a second create refuses and keeps it.
    create(&env, &pass_file, &["--no-trust"]).expect_code(0);
    let roster_before = std::fs::read(env.home.join("certmesh/roster.json")).expect("roster");
    let run = create(&env, &pass_file, &["--no-trust"]);
    run.expect_code(1);
    assert!(run.stderr.contains("already the CA"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(env.home.join("certmesh/roster.json")).expect("roster"),
        roster_before
    );
    // A device certificate cannot take over the CA machine's own name.
    let own = env.run(&["certmesh", "status", "--json"]).json()["details"]["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    let run = env.run(&["certmesh", "issue", &own, "--passphrase-file", &pass_file]);
    run.expect_code(1);
    assert!(run.stderr.contains("not a device"), "{}", run.stderr);
    let members = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes).expect("roster")["members"].clone()
    };
    assert_eq!(
        members(&std::fs::read(env.home.join("certmesh/roster.json")).expect("roster")),
        members(&roster_before),
        "the refused issue changed the members"
    );
    // Wrong passphrase on a signing verb.
    let wrong = env.dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase").expect("wrong");
    let run = env.run(&[
        "certmesh",
        "issue",
        "nas.lan",
        "--passphrase-file",
        &wrong.display().to_string(),
    ]);
    run.expect_code(1);
    assert!(
        run.stderr.to_lowercase().contains("passphrase"),
        "{}",
        run.stderr
    );
    // Out-of-scope device address (documentation range, never contacted).
    let run = env.run(&[
        "certmesh",
        "issue",
        "nas.lan",
        "--ip",
        "192.0.2.10",
        "--passphrase-file",
        &pass_file,
    ]);
    run.expect_code(1);
    assert!(run.stderr.contains("192.0.2.10"), "{}", run.stderr);
    // Bad --ca and --fingerprint values on join are refused before any network use.
    let member = KoiEnv::new();
    member.install(&certmesh_bin(), "certmesh");
    let run = member.run(&["certmesh", "join", "--ca", "http://x", "--code", "123456"]);
    run.expect_code(1);
    assert!(run.stderr.contains("--ca HOST:PORT"), "{}", run.stderr);
    let run = member.run(&[
        "certmesh",
        "join",
        "--ca",
        "127.0.0.1:9",
        "--fingerprint",
        "abcd",
        "--code",
        "123456",
    ]);
    run.expect_code(1);
    assert!(run.stderr.contains("64"), "{}", run.stderr);
    // No panic text anywhere.
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn create_with_mash_entropy_collects_keystrokes_at_the_terminal() {
    use crate::support::pty::{Pty, result_line};
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&env);
    let mut pty = Pty::start(
        &env,
        &[
            "certmesh",
            "create",
            "--profile",
            "personal",
            "--entropy",
            "mash",
            "--passphrase-file",
            &pass_file,
            "--no-trust",
            "--json",
        ],
        &[],
    );
    pty.wait_for("Mash the keyboard");
    let keys: Vec<u8> = (0..128u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    pty.type_bytes(&keys);
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    let result = result_line(&output);
    assert!(
        result["otpauth_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://")),
        "{result}"
    );
    let first = &audit_entries(&env)[0];
    assert_eq!(first["details"]["entropy"], "mash", "{first}");
}
