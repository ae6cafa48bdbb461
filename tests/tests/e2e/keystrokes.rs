//! `host/keystrokes` end to end, through the SDK example's `mash` verb: keystrokes typed at a real
//! pseudo-terminal (`script -qec … /dev/null`, fed from a pipe) are collected without echo and the
//! terminal is restored afterwards; without a terminal the call fails clearly; the byte Ctrl-C sends
//! in raw mode cancels like Ctrl-C (status 130, no plugin left); traces never show the keystrokes;
//! and under `koi daemon` the request reaches the CLI's terminal, while a REST call gets -32010.
//!
//! Keys are typed only once the prompt is on the terminal (which the host prints after switching to
//! raw mode), so nothing depends on timing. The deadlines (in `support::pty`) only stop a hung test.

use crate::support::pty::{Pty, result_line};
use crate::support::{KoiEnv, assert_process_gone, free_port};
use serde_json::json;
use std::process::Command;

/// What `koi-hello mash` shows when it asks for keystrokes.
const PROMPT: &str = "Type random keys until the bar is full";

/// Asserts the `stty -a` printed after the command shows a cooked terminal with echo.
fn assert_terminal_restored(output: &str) {
    let stty = output
        .lines()
        .find_map(|l| l.split_once("STTY:").map(|(_, s)| s.to_owned()))
        .unwrap_or_else(|| panic!("no stty output:\n{output}"));
    let flags: Vec<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "iexten", "icrnl", "ixon"] {
        assert!(
            flags.contains(&flag),
            "the terminal was left with `-{flag}`: {stty}"
        );
    }
}

/// The pid of the `koi-hello` started from `env`'s plugin directory.
fn hello_pid(env: &KoiEnv) -> i32 {
    let path = env.plugins.join("koi-hello");
    let wanted = path.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(wanted))
        })
        .expect("koi-hello is running")
}

#[test]
fn keystrokes_are_collected_at_a_terminal_without_echo_and_the_terminal_is_restored() {
    let env = KoiEnv::new().with_hello();
    let mut pty = Pty::start(&env, &["hello", "mash", "--count", "5", "--json"], &[]);
    pty.wait_for(PROMPT);
    pty.type_bytes(b"QZQZQ");
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    let result = result_line(&output);
    assert_eq!(result["collected"], json!(5), "{output}");
    assert!(result["span_ms"].is_u64(), "{output}");
    assert!(output.contains("] 5/5"), "no full progress bar:\n{output}");
    assert!(
        !output.contains("QZ"),
        "the keystrokes were echoed:\n{output}"
    );
    assert_terminal_restored(&output);
}

#[test]
fn keystrokes_without_a_terminal_are_a_clear_error() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["hello", "mash", "--count", "5"]);
    run.expect_code(1).expect_clean_error("hello");
    assert!(
        run.stderr.contains(&format!("koi-hello asked \"{PROMPT}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("keystrokes can only be typed at a terminal"),
        "{}",
        run.stderr
    );
}

#[test]
fn ctrl_c_while_typing_keystrokes_cancels_with_130_and_leaves_no_plugin() {
    let env = KoiEnv::new().with_hello();
    let mut pty = Pty::start(&env, &["hello", "mash", "--count", "50"], &[]);
    pty.wait_for(PROMPT);
    let plugin = hello_pid(&env);
    pty.type_bytes(b"ab\x03");
    let (code, output) = pty.finish();
    assert_eq!(code, Some(130), "{output}");
    assert!(output.contains("Cancelled."), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert_process_gone(plugin);
    assert_terminal_restored(&output);
}

#[test]
fn traces_never_show_the_keystrokes() {
    let env = KoiEnv::new().with_hello();
    let mut pty = Pty::start(
        &env,
        &["hello", "mash", "--count", "5", "--json"],
        &[("KOI_TRACE_PROTOCOL", "1")],
    );
    pty.wait_for(PROMPT);
    pty.type_bytes(b"QZQZQ");
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(result_line(&output)["collected"], json!(5), "{output}");
    assert!(
        output.contains(r#""method":"host/keystrokes""#),
        "the request was not traced:\n{output}"
    );
    // The answer is redacted whole: neither the bytes (81 = 'Q', 90 = 'Z') nor the timings show.
    assert!(
        output.contains(r#""result":"[redacted]""#),
        "no redacted answer in the trace:\n{output}"
    );
    for leak in [r#""keystrokes":["#, r#""byte""#, r#""nanos""#, "QZ"] {
        assert!(
            !output.contains(leak),
            "`{leak}` leaked into the trace:\n{output}"
        );
    }
}

#[test]
fn under_the_daemon_keystrokes_reach_the_cli_terminal_and_rest_gets_no_terminal() {
    let env = KoiEnv::new().with_hello();
    let bind = format!("127.0.0.1:{}", free_port());
    let _daemon = env.start_daemon(&[("KOI_REST_ENABLED", "true"), ("KOI_REST_BIND", &bind)]);
    let mut pty = Pty::start(&env, &["hello", "mash", "--count", "3", "--json"], &[]);
    pty.wait_for(PROMPT);
    pty.type_bytes(b"xyz");
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(result_line(&output)["collected"], json!(3), "{output}");
    assert_terminal_restored(&output);
    let rest = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-w", " %{http_code}"])
        .arg(format!("http://{bind}/v1/hello/mash?count=3"))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&rest.stdout);
    assert!(
        body.ends_with(" 409") && body.contains("no terminal is attached"),
        "{body}"
    );
}
