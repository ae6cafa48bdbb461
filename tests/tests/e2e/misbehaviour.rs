//! Each misbehaving fixture gives a non-zero exit, a one-paragraph error naming the plugin, no
//! panic text, and leaves no process behind.

use crate::support::KoiEnv;

#[test]
fn garbage_on_stdout_before_the_handshake_is_reported_at_once() {
    let env = KoiEnv::new().with_fixture("garbage");
    let run = env.run(&["garbage", "anything"]);
    run.expect_code(3).expect_clean_error("garbage");
    assert!(
        run.stderr
            .contains("non-protocol output to stdout before the handshake"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Welcome to garbage plugin"),
        "the stray output is quoted: {}",
        run.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn a_crash_mid_call_names_the_exit_status_and_last_stderr_lines() {
    let env = KoiEnv::new().with_fixture("crashy");
    let run = env.run(&["crashy", "boom"]);
    run.expect_code(3).expect_clean_error("crashy");
    assert!(
        run.stderr
            .contains("exited with status 101 while handling `boom`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("about to divide by zero"),
        "last stderr words quoted: {}",
        run.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn a_plugin_that_never_handshakes_times_out_and_is_killed() {
    // koi-mute ignores SIGTERM, so this also proves the escalation to SIGKILL.
    let env = KoiEnv::new().with_fixture("mute");
    let run = env.run(&["mute", "x"]);
    run.expect_code(3).expect_clean_error("mute");
    assert!(
        run.stderr.contains("did not complete the handshake"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("within 5.0 s"), "{}", run.stderr);
    env.assert_no_plugin_left();
}

#[test]
fn an_oversized_frame_closes_the_connection() {
    let env = KoiEnv::new().with_fixture("huge");
    let run = env.run(&["huge", "dump"]);
    run.expect_code(3).expect_clean_error("huge");
    assert!(
        run.stderr.contains("over the 16777216-byte limit"),
        "{}",
        run.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn a_schema_violating_result_names_the_method_and_field() {
    let env = KoiEnv::new().with_fixture("liar");
    let run = env.run(&["liar", "fib"]);
    run.expect_code(3).expect_clean_error("liar");
    assert!(run.stderr.contains("result of `fib`"), "{}", run.stderr);
    assert!(run.stderr.contains("at /value"), "{}", run.stderr);
    env.assert_no_plugin_left();
}

#[test]
fn an_incompatible_protocol_names_both_versions_and_what_to_upgrade() {
    let env = KoiEnv::new().with_fixture("future");
    let run = env.run(&["future", "go"]);
    run.expect_code(3).expect_clean_error("future");
    assert!(run.stderr.contains("protocol 2.0"), "{}", run.stderr);
    assert!(run.stderr.contains("speaks protocol 1.1"), "{}", run.stderr);
    assert!(run.stderr.contains("Upgrade koi"), "{}", run.stderr);
    env.assert_no_plugin_left();
}

#[test]
fn stray_output_after_the_handshake_is_reported_but_tolerated() {
    let env = KoiEnv::new().with_fixture("noisy");
    let run = env.run(&["noisy", "chat", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json(), serde_json::json!({"answer": 42}));
    assert!(run.stderr.contains("noisy"), "{}", run.stderr);
    assert!(
        run.stderr.contains("stray non-protocol output"),
        "{}",
        run.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn misbehaving_plugins_never_hide_the_others_in_status() {
    let env = KoiEnv::new()
        .with_hello()
        .with_fixture("garbage")
        .with_fixture("future")
        .with_fixture("crashy");
    let run = env.run(&["status", "--json"]);
    run.expect_code(1);
    let report = run.json();
    let state = |name: &str| {
        report["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["state"].clone())
    };
    assert_eq!(state("hello"), Some("ok".into()));
    assert_eq!(state("crashy"), Some("ok".into()));
    assert_eq!(state("garbage"), Some("failed".into()));
    assert_eq!(state("future"), Some("failed".into()));
    env.assert_no_plugin_left();
}
