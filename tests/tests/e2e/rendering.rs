//! Rendering and output as a newcomer meets them (issue 10): the fixture `koi-awkward` sends
//! hostile and awkward data (control characters, 200-character cells, a data map with the keys
//! `path` and `v`, an empty list, a null, sentences) and the host shows it at 80 columns
//! (`COLUMNS=80`, `NO_COLOR=1`) with schema labels, data keys untouched, tables wrapped to fit, one
//! next step per line. Also: range errors in the user's words, errors as JSON under `--json` with
//! the same exit codes, no `[default: []]` in help, a QR code only at a terminal, a stream ended by
//! Ctrl-C ends with its items, a missing plugin named with where koi looked, deprecated aliases out
//! of completions, a daemon dying mid-command explained, and `KOI_EXE` for plugins.

use crate::support::{KoiEnv, Run};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The fixture's control characters as the host must show them.
const SHOWN: &str = "A\\e[2JB\\x07C\\rD\\u{9b}E\\u{202e}F";

fn env() -> KoiEnv {
    KoiEnv::new().with_fixture("awkward")
}

fn run_at_80(env: &KoiEnv, args: &[&str]) -> Run {
    let mut cmd = env.command(args);
    cmd.env("COLUMNS", "80").env("NO_COLOR", "1");
    Run::from(cmd.output().expect("run koi"))
}

fn no_raw_controls(run: &Run) {
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "raw control characters:\n{text:?}"
        );
    }
}

#[test]
fn hostile_result_keeps_data_keys_uses_labels_and_fits_80_columns() {
    let env = env();
    let run = run_at_80(&env, &["--no-daemon", "awkward", "render"]);
    run.expect_code(0);
    no_raw_controls(&run);
    let out = &run.stdout;
    for expected in [
        "CA fingerprint:",                 // humanised with its acronym
        "Enrollment link:",                // the schema's `title`
        "stone-b.lan, stone-b.local",      // short values on one line
        &format!("  k{SHOWN}: {SHOWN}\n"), // data keys exactly as sent
        "Next:\n  Run `koi awkward render` again.\n  On another machine: `koi awkward port --port 80`.\n",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    for (key, value) in [("path:", " /x"), ("v:", " 1")] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("  {key}")) && l.ends_with(value)),
            "no data key {key:?} in:\n{out}"
        );
    }
    for unexpected in [
        "Path:",
        "V:",
        "Ca fingerprint",
        "Addresses",
        "Expires",
        "(none)",
    ] {
        assert!(!out.contains(unexpected), "{unexpected:?} in:\n{out}");
    }
    // The table fits 80 columns by wrapping, and keeps every character.
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Entries:"))
        .skip(1)
        .collect();
    assert!(
        table[0].contains("SEQ") && table[0].contains("DETAIL"),
        "{out}"
    );
    assert!(
        table.len() > 3,
        "long cells are wrapped onto more lines:\n{out}"
    );
    for line in &table {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
    assert_eq!(out.matches('y').count(), 2 * 97, "cells cut short:\n{out}");

    // --json is exactly what the plugin sent.
    let json = run_at_80(&env, &["--no-daemon", "--json", "awkward", "render"]);
    json.expect_code(0);
    let value = json.json();
    assert_eq!(value["txt"]["path"], "/x");
    assert_eq!(value["addresses"], Value::Array(vec![]));
    env.assert_no_plugin_left();
}

#[test]
fn range_errors_speak_the_users_language_and_json_errors_are_json() {
    let env = env();
    let human = env.run(&["--no-daemon", "awkward", "port", "--port", "70000"]);
    human.expect_code(2);
    assert!(
        human.stderr.contains("--port must be 1–65535"),
        "{}",
        human.stderr
    );
    assert!(
        !human.stderr.contains("schema") && human.stderr.contains("koi awkward port --help"),
        "{}",
        human.stderr
    );
    let verbose = env.run(&["--no-daemon", "-v", "awkward", "port", "--port", "0"]);
    verbose.expect_code(2);
    assert!(
        verbose.stderr.contains("--port must be 1–65535") && verbose.stderr.contains("/port"),
        "-v keeps the field path:\n{}",
        verbose.stderr
    );

    let json = env.run(&[
        "--no-daemon",
        "--json",
        "awkward",
        "port",
        "--port",
        "70000",
    ]);
    json.expect_code(2);
    assert!(json.stdout.is_empty(), "{}", json.stdout);
    let error: Value = serde_json::from_str(json.stderr.trim()).expect("stderr is one JSON object");
    assert_eq!(error["error"]["message"], "--port must be 1–65535");
    assert_eq!(error["error"]["plugin"], "awkward");
    assert_eq!(error["error"]["code"], -32002);
    assert_eq!(error["error"]["path"], "/port");
    assert!(
        error["error"]["next"]
            .as_str()
            .is_some_and(|n| n.contains("koi awkward port --help")),
        "{error}"
    );

    // The same through `koi daemon` (which checks the params against its own manifest).
    let daemon = env.start_daemon(&[]);
    let forwarded = env.run(&["awkward", "port", "--port", "70000"]);
    forwarded.expect_code(2);
    assert!(
        forwarded.stderr.contains("--port must be 1–65535"),
        "{}",
        forwarded.stderr
    );
    drop(daemon);

    for (args, code) in [
        (
            vec!["--json", "--no-daemon", "awkward", "port", "--port", "abc"],
            2,
        ),
        (vec!["--json", "dns", "add", "x"], 2),
        (vec!["--json", "help", "awkward", "nope"], 2),
        (vec!["--json", "--no-daemon", "awkward", "nope"], 2),
    ] {
        let run = env.run(&args);
        run.expect_code(code);
        let error: Value = serde_json::from_str(run.stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not JSON ({e}):\n{}", run.stderr));
        assert!(error["error"]["message"].is_string(), "{error}");
        assert!(error["error"]["code"].is_i64(), "{error}");
    }
}

#[test]
fn help_shows_no_empty_default() {
    let env = env();
    let help = env.run(&["awkward", "port", "--help"]);
    help.expect_code(0);
    assert!(help.stdout.contains("Tags"), "{}", help.stdout);
    assert!(!help.stdout.contains("[default: []]"), "{}", help.stdout);
}

#[test]
fn qr_code_only_at_a_terminal_else_the_uri_alone() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["--no-daemon", "hello", "show"]);
    run.expect_code(0);
    assert!(
        run.stdout
            .lines()
            .any(|l| l == "otpauth://totp/Koi:example?secret=JBSWY3DPEHPK3PXP&issuer=Koi"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(['█', '▀', '▄']),
        "a QR code was drawn for a pipe:\n{}",
        run.stdout
    );
    // With --json the result is all of stdout, and stderr (often a log) gets no copy of the data.
    let json = env.run(&["--no-daemon", "--json", "hello", "show"]);
    json.expect_code(0);
    json.json();
    assert!(!json.stderr.contains("JBSWY3DPEHPK3PXP"), "{}", json.stderr);
    // At a terminal it is drawn.
    let pty = crate::support::pty::Pty::start(&env, &["--no-daemon", "hello", "show"], &[]);
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(['█', '▀', '▄']),
        "no QR code at a terminal:\n{output}"
    );
}

/// Runs `koi <args>` (the fixture's `watch`), waits for its first streamed line, presses Ctrl-C
/// (SIGINT) and returns the exit code and every stdout line.
fn watch_until_ctrl_c(env: &KoiEnv, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut child = env
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn koi");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first item");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest of stdout");
    let status = child.wait().expect("wait koi");
    let lines = std::iter::once(first.trim_end().to_owned())
        .chain(rest.lines().map(str::to_owned))
        .filter(|l| !l.is_empty())
        .collect();
    (status.code(), lines)
}

#[test]
fn a_stream_ended_by_ctrl_c_ends_with_its_items() {
    let env = env();
    let (code, lines) = watch_until_ctrl_c(&env, &["--no-daemon", "--json", "awkward", "watch"]);
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(lines, vec![r#"{"instance":"web"}"#.to_owned()]);
    let (code, lines) = watch_until_ctrl_c(&env, &["--no-daemon", "awkward", "watch"]);
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(lines, vec!["instance=web".to_owned()]);
    env.assert_no_plugin_left();
}

#[test]
fn a_missing_plugin_is_named_with_where_koi_looked() {
    let env = env();
    let run = env.run(&["dns", "add", "x"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("no plugin provides it"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("koi-dns"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&env.plugins.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Did you mean"), "{}", run.stderr);
    let typo = env.run(&["awkwrd", "render"]);
    typo.expect_code(2);
    assert!(
        typo.stderr.contains("Did you mean `koi awkward`?"),
        "{}",
        typo.stderr
    );
}

#[test]
fn completions_leave_out_deprecated_aliases() {
    let env = env();
    env.run(&["plugins", "list"]).expect_code(0);
    let bash = env.run(&["completions", "bash"]);
    bash.expect_code(0);
    assert!(bash.stdout.contains("awkward"), "{}", bash.stdout);
    assert!(!bash.stdout.contains("oldrender"), "{}", bash.stdout);
    // The alias itself still works.
    let alias = env.run(&["--no-daemon", "oldrender"]);
    alias.expect_code(0);
    assert!(alias.stderr.contains("deprecated"), "{}", alias.stderr);
}

#[test]
fn plugins_are_told_the_absolute_path_of_koi() {
    let env = env();
    let run = env.run(&["--no-daemon", "--json", "awkward", "exe"]);
    run.expect_code(0);
    let koi = run.json()["koi_exe"].as_str().map(std::path::PathBuf::from);
    assert_eq!(
        koi.and_then(|p| std::fs::canonicalize(p).ok()),
        std::fs::canonicalize(&env.koi).ok()
    );
}

#[test]
fn a_daemon_dying_mid_command_says_what_to_check() {
    let env = KoiEnv::new().with_hello();
    let mut daemon = env.start_daemon(&[]);
    let pid_file = env.dir.path().join("wait.pid");
    let child = env
        .command(&[
            "hello",
            "wait",
            "60",
            "--pid-file",
            pid_file.to_str().expect("utf-8"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn koi");
    // The call is running once the plugin wrote its pid (the deadline only stops a hung test).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.child.kill().expect("kill the daemon");
    let _ = daemon.child.wait();
    let run = Run::from(child.wait_with_output().expect("wait koi"));
    run.expect_code(3);
    for expected in [
        "koi daemon stopped while `koi hello wait` was running",
        "`koi status`",
        "`koi hello status`",
    ] {
        assert!(
            run.stderr.contains(expected),
            "no {expected:?} in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn certmesh_create_and_log_read_well_at_80_columns() {
    if !crate::support::root_or_skip("certmesh_create_and_log_read_well_at_80_columns") {
        return;
    }
    let mut lab = crate::support::netlab::NetLab::new("rd");
    lab.a.env.extra_env.extend([
        ("COLUMNS".into(), "80".into()),
        ("NO_COLOR".into(), "1".into()),
    ]);
    let env = &lab.a.env;
    env.install(&crate::support::certmesh::certmesh_bin(), "certmesh");
    env.install(&crate::support::certmesh::mdns_bin(), "mdns");
    let pass_file = crate::support::certmesh::write_passphrase(env);
    let created = crate::support::certmesh::create(
        env,
        &pass_file,
        &[
            "--profile",
            "personal",
            "--operator",
            "ana",
            "--domain",
            "lan",
        ],
    );
    created.expect_code(0);
    let out = &created.stdout;
    assert!(out.contains("CA fingerprint:"), "{out}");
    assert!(!out.contains("Ca fingerprint"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("otpauth://totp/")),
        "the enrollment URI alone on its line (stdout is no terminal):\n{out}"
    );
    assert!(
        !out.contains(['█', '▀', '▄']),
        "a QR code for a pipe:\n{out}"
    );
    let next: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Next:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(next.len() >= 2, "next steps one per line:\n{out}");
    assert!(next.iter().all(|l| l.contains('`')), "{next:?}");

    let log = env.run(&["certmesh", "log"]);
    log.expect_code(0);
    assert!(log.stdout.contains("TIME"), "{}", log.stdout);
    for line in log.stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}\n{}",
            log.stdout
        );
    }
}
