//! Protocol features beyond a plain call: streaming, questions, redacted tracing, calls between
//! plugins, events, frame limits, cancellation with Ctrl-C, and plugin exit when the host dies or
//! closes stdin.

use crate::support::{KoiEnv, assert_process_gone, example};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn streaming_methods_print_ndjson_items_then_the_result() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["hello", "count", "3", "--json"]);
    run.expect_code(0);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"n": 1}),
            json!({"n": 2}),
            json!({"n": 3}),
            json!({"count": 3})
        ]
    );
}

#[test]
fn questions_are_answered_from_stdin_and_secrets_never_reach_traces() {
    let env = KoiEnv::new().with_hello();
    let mut cmd = env.command(&["hello", "ask", "--json"]);
    cmd.env("KOI_TRACE_PROTOCOL", "1");
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"Grace\nhunter2\nn\nred\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        result,
        json!({"name": "Grace", "secret_length": 7, "confirmed": false, "colour": "red"})
    );
    assert!(
        stderr.contains("koi-trace hello -> ") && stderr.contains("host/secret"),
        "traced: {stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the secret leaked into the trace:\n{stderr}"
    );
    assert!(stderr.contains("[redacted]"), "{stderr}");
}

#[test]
fn a_question_without_an_answer_is_a_clear_error() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["hello", "ask"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("koi-hello asked \"Your name"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("standard input is closed"),
        "{}",
        run.stderr
    );
}

#[test]
fn plugins_call_each_other_through_the_host_with_schema_checks() {
    let env = KoiEnv::new().with_hello().with_fixture("liar");
    let ok = env.run(&[
        "hello",
        "relay",
        "hello",
        "greet",
        "--params",
        r#"{"name":"Lin"}"#,
        "--json",
    ]);
    ok.expect_code(0);
    assert_eq!(
        ok.json(),
        json!({"result": {"greeting": "Hello, Lin!"}, "delivered": 0})
    );
    let bad_params = env.run(&[
        "hello",
        "relay",
        "hello",
        "greet",
        "--params",
        r#"{"nom":"Lin"}"#,
    ]);
    // A plugin's host/call the callee refuses is that plugin's bug (exit 3, docs/protocol.md §13),
    // even when, as with this relay, the params came from the command line.
    bad_params.expect_code(3);
    assert!(
        bad_params
            .stderr
            .contains("koi-hello made an invalid call to koi-hello `greet`")
            && bad_params
                .stderr
                .contains("params for `greet` of koi-hello"),
        "{}",
        bad_params.stderr
    );
    let bad_result = env.run(&["hello", "relay", "liar", "fib"]);
    bad_result.expect_code(3);
    assert!(
        bad_result.stderr.contains("result of `fib` of koi-liar")
            && bad_result.stderr.contains("/value"),
        "{}",
        bad_result.stderr
    );
    let missing = env.run(&["hello", "relay", "nothere", "x"]);
    missing.expect_code(3);
    assert!(
        missing
            .stderr
            .contains("no koi-nothere plugin is installed"),
        "{}",
        missing.stderr
    );
    env.assert_no_plugin_left();
}

#[test]
fn the_frame_limit_is_enforced_on_the_plugin_side_too() {
    let env = KoiEnv::new().with_hello();
    let long_name = "x".repeat(4000);
    let run = env
        .command(&["hello", "greet", &long_name])
        .env("KOI_MAX_FRAME_BYTES", "2048")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("over the 2048-byte frame limit"),
        "{stderr}"
    );
}

/// Starts `koi hello wait 60` and returns it with the plugin's pid once the wait has begun.
#[allow(
    clippy::zombie_processes,
    reason = "the caller signals and waits on the returned child"
)]
fn start_waiting(env: &KoiEnv) -> (std::process::Child, i32) {
    let pid_file = env.pids.join("hello.pid");
    let mut child = env
        .command(&[
            "hello",
            "wait",
            "60",
            "--pid-file",
            pid_file.to_str().expect("utf-8 path"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok(pid)) = std::fs::read_to_string(&pid_file).map(|s| s.trim().parse::<i32>()) {
            return (child, pid);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the plugin never started waiting");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        sig,
    )
    .expect("kill");
}

#[test]
fn ctrl_c_cancels_the_call_and_reaps_the_plugin() {
    let env = KoiEnv::new().with_hello();
    let (child, plugin_pid) = start_waiting(&env);
    signal(child.id(), rustix::process::Signal::INT);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("Cancelled."), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_process_gone(plugin_pid);
}

#[test]
fn plugins_exit_when_the_host_dies() {
    let env = KoiEnv::new().with_hello();
    let (mut child, plugin_pid) = start_waiting(&env);
    child.kill().expect("SIGKILL the host");
    let _ = child.wait();
    assert_process_gone(plugin_pid);
}

#[test]
fn plugins_exit_on_stdin_eof() {
    let out = std::process::Command::new(example("koi-hello"))
        .env("KOI_PLUGIN_COOKIE", "koi-stdio-jsonrpc")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout without a request");
}

#[test]
fn plugin_stderr_is_relayed_with_the_plugin_name() {
    let env = KoiEnv::new().with_fixture("crashy");
    let run = env.run(&["crashy", "boom"]);
    assert!(
        run.stderr.lines().any(|l| l.contains("crashy")
            && l.contains("WARN")
            && l.contains("about to divide by zero")),
        "{}",
        run.stderr
    );
}

#[test]
fn traces_show_error_codes_while_redacting_payloads() {
    let env = KoiEnv::new().with_hello();
    let run = env
        .command(&["hello", "greet", " "])
        .env("KOI_TRACE_PROTOCOL", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(r#""error":{"code":1,"#),
        "the error code is visible:\n{stderr}"
    );
}
