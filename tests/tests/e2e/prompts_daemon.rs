//! Every interactive koi-certmesh path at a real pseudo-terminal, with `koi daemon` running and
//! without (issue 10 items 1 and 6): `create` with the profile question, a passphrase typed twice
//! and the keystroke mash; `unlock`; `issue` and `rotate-secret` asking for the passphrase
//! one-shot; `join` confirming the CA's fingerprint and asking for the code (two lab hosts). Also
//! what a call that cannot ask gets: a call from another plugin, or from a `koi` whose stdin is
//! not a terminal, fails with the documented "needs …, but …" error naming the flag to use. And
//! `create` checks a new passphrase when it is typed (too short, or a differing confirmation, is
//! asked again before the mash), and keys typed past the end of the mash are discarded instead of
//! reaching the shell. Underneath, the protocol: the per-call context's `interactive` for each
//! kind of caller, and `host/secret` with `confirm` asking again when the entries differ (the
//! raw-protocol fixture `koi-asker`).
//!
//! Each session runs `script` so `koi` has a terminal; the test types only once the prompt it
//! answers is on the screen. After `koi` exits, the same shell reads one line from the terminal
//! and prints it as `LEFTOVER:[…]` after the test types `END`: anything the command left in the
//! terminal's input shows up there. Deadlines only stop a hung test.

use std::process::Command;
use std::time::Duration;

use crate::support::certmesh::{
    LabCa, PASSPHRASE, audit_entries, ca_under_daemon, certmesh_bin, create, fresh_code,
    write_passphrase,
};
use crate::support::netlab::NetLab;
use crate::support::pty::{Pty, result_line};
use crate::support::{KoiEnv, example, free_port, root_or_skip};

/// How long a hung test may wait before it fails.
const FAILSAFE: Duration = Duration::from_secs(40);
/// What `create` shows when it wants keystrokes.
const MASH: &str = "Mash the keyboard";
/// `create`'s first passphrase prompt.
const NEW_PASS: &str = "Passphrase for the CA key";
/// `create`'s confirmation prompt.
const AGAIN: &str = "Passphrase again";
/// The passphrase prompt of `unlock`, `issue` and `rotate-secret`.
const CA_PASS: &str = "CA passphrase:";

/// The shell's trailer after `koi`: `KOI-DONE`, then the next line typed at the terminal as
/// `LEFTOVER:[…]`.
const LEFTOVER_TRAILER: &str = "echo; echo KOI-DONE; IFS= read -r rest; echo \"LEFTOVER:[$rest]\"";

/// `koi` at a pseudo-terminal whose shell reports what the command left in the terminal's input.
struct Term(Pty);

impl Term {
    /// Starts `koi <args>` (with `env`'s prefix and environment) under `script`.
    fn start(env: &KoiEnv, args: &[&str]) -> Term {
        Term(Pty::start_with(env, args, &[], LEFTOVER_TRAILER, FAILSAFE))
    }

    /// Waits for `koi` to end, types `END` for the shell's leftover check, and returns the exit
    /// status and everything the terminal showed.
    fn finish(mut self) -> (Option<i32>, String) {
        self.wait_for("KOI-DONE");
        self.type_text("END\n");
        self.0.finish()
    }
}

impl std::ops::Deref for Term {
    type Target = Pty;
    fn deref(&self) -> &Pty {
        &self.0
    }
}

impl std::ops::DerefMut for Term {
    fn deref_mut(&mut self) -> &mut Pty {
        &mut self.0
    }
}

/// A KoiEnv with only koi-certmesh (no mDNS: nothing multicasts), whose CA API, under a daemon,
/// listens on a loopback port of the system's choosing.
fn certmesh_env() -> KoiEnv {
    let mut env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    env.extra_env
        .push(("KOI_CERTMESH_API_BIND".into(), "127.0.0.1:0".into()));
    env
}

/// 128 keys for the mash and 12 more typed past its end.
fn mash_keys() -> String {
    (0..140u32)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect()
}

/// Asserts the command left nothing in the terminal's input: the shell's next line is `END`.
fn assert_nothing_left(output: &str) {
    assert!(
        output.contains("LEFTOVER:[END]"),
        "keys typed during the command reached the shell:\n{output}"
    );
}

fn the_audit_entropy(env: &KoiEnv) -> serde_json::Value {
    audit_entries(env)[0]["details"]["entropy"].clone()
}

#[test]
fn create_under_the_daemon_asks_the_profile_the_passphrase_and_for_keystrokes() {
    let env = certmesh_env();
    let _daemon = env.start_daemon(&[]);
    let mut term = Term::start(&env, &["certmesh", "create", "--no-trust", "--json"]);
    term.wait_for("Who is this mesh for?");
    term.wait_for("Choose 1-3");
    term.type_text("2\n");
    term.wait_for("Operator name");
    term.type_text("ana\n");
    term.wait_for(NEW_PASS);
    term.type_text(&format!("{PASSPHRASE}\n"));
    term.wait_for(AGAIN);
    term.type_text(&format!("{PASSPHRASE}\n"));
    term.wait_for(MASH);
    term.type_text(&mash_keys());
    let (code, output) = term.finish();
    assert_eq!(code, Some(0), "{output}");
    let result = result_line(&output);
    assert_eq!(result["mesh"]["profile"], "team", "{result}");
    assert_eq!(result["serving"], true, "{result}");
    assert_nothing_left(&output);
    assert_eq!(the_audit_entropy(&env), "mash");
    assert_eq!(audit_entries(&env)[0]["details"]["operator"], "ana");
}

#[test]
fn create_one_shot_re_asks_a_short_passphrase_and_a_mismatch_before_the_mash() {
    let env = certmesh_env();
    let mut term = Term::start(
        &env,
        &[
            "certmesh",
            "create",
            "--profile",
            "personal",
            "--no-trust",
            "--json",
        ],
    );
    term.wait_for_nth(NEW_PASS, 1);
    term.type_text("short\n");
    term.wait_for("it needs at least 8");
    term.wait_for_nth(NEW_PASS, 2);
    assert!(!term.text().contains(MASH), "{}", term.text());
    term.type_text(&format!("{PASSPHRASE}\n"));
    term.wait_for_nth(AGAIN, 1);
    term.type_text("not the same passphrase\n");
    term.wait_for("did not match");
    term.wait_for_nth(NEW_PASS, 3);
    term.type_text(&format!("{PASSPHRASE}\n"));
    term.wait_for_nth(AGAIN, 2);
    term.type_text(&format!("{PASSPHRASE}\n"));
    term.wait_for(MASH);
    term.type_text(&mash_keys());
    let (code, output) = term.finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        result_line(&output)["otpauth_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://")),
        "{output}"
    );
    assert_nothing_left(&output);
    assert_eq!(the_audit_entropy(&env), "mash");
    // The passphrase kept is the one typed twice.
    let pass_file = write_passphrase(&env);
    env.run(&["certmesh", "unlock", "--passphrase-file", &pass_file])
        .expect_code(0);
}

/// Runs `koi <args>` at a terminal, answers the CA passphrase prompt, and returns the result.
fn with_passphrase(env: &KoiEnv, args: &[&str]) -> serde_json::Value {
    let mut term = Term::start(env, args);
    term.wait_for(CA_PASS);
    term.type_text(&format!("{PASSPHRASE}\n"));
    let (code, output) = term.finish();
    assert_eq!(code, Some(0), "{args:?}:\n{output}");
    assert!(!output.contains(PASSPHRASE), "the passphrase was echoed");
    result_line(&output)
}

#[test]
fn unlock_issue_and_rotate_secret_prompt_at_a_terminal_with_and_without_the_daemon() {
    let env = certmesh_env();
    let pass_file = write_passphrase(&env);
    create(&env, &pass_file, &["--no-trust"]).expect_code(0);
    std::fs::remove_file(&pass_file).expect("the passphrase file goes");

    // One-shot: each command that needs the CA key asks for the passphrase.
    let rotated = with_passphrase(&env, &["certmesh", "rotate-secret", "--json"]);
    assert!(rotated["otpauth_uri"].is_string(), "{rotated}");
    let issued = with_passphrase(&env, &["certmesh", "issue", "printer.lan", "--json"]);
    assert_eq!(issued["name"], "printer.lan", "{issued}");

    // Under the daemon the CA starts locked; `unlock` at a terminal asks, and then
    // `rotate-secret` signs with the unlocked CA without asking.
    let _daemon = env.start_daemon(&[]);
    let unlocked = with_passphrase(&env, &["certmesh", "unlock", "--json"]);
    assert_eq!(unlocked["unlocked"], true, "{unlocked}");
    let (code, output) = Term::start(&env, &["certmesh", "rotate-secret", "--json"]).finish();
    assert_eq!(code, Some(0), "{output}");
    assert!(!output.contains(CA_PASS), "asked needlessly:\n{output}");
    let again = result_line(&output);
    assert_ne!(again["otpauth_uri"], rotated["otpauth_uri"], "{again}");
}

#[test]
fn calls_that_cannot_ask_get_the_documented_error_naming_the_caller_and_the_flag() {
    let env = certmesh_env();
    env.install(&example("koi-hello"), "hello");
    let pass_file = write_passphrase(&env);
    create(&env, &pass_file, &["--no-trust"]).expect_code(0);

    // One-shot at a terminal: koi-hello's call into certmesh is not the person's call, so
    // certmesh must not ask the person for the CA passphrase on its behalf.
    let term = Term::start(&env, &["hello", "relay", "certmesh", "unlock"]);
    let (code, output) = term.finish();
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(
            "The CA passphrase is needed, but this call came from plugin koi-hello, which has no terminal to ask at"
        ) && output.contains("--passphrase-file"),
        "{output}"
    );
    assert!(!output.contains(CA_PASS), "it asked:\n{output}");

    // Under the daemon: a plugin's call, and a CLI whose stdin is not a terminal.
    let _daemon = env.start_daemon(&[]);
    let relayed = env.run(&["hello", "relay", "certmesh", "unlock"]);
    relayed.expect_code(1);
    assert!(
        relayed
            .stderr
            .contains("this call came from plugin koi-hello"),
        "{}",
        relayed.stderr
    );
    let piped = env.run(&["certmesh", "unlock"]);
    piped.expect_code(1);
    assert!(
        piped
            .stderr
            .contains("The CA passphrase is needed, but no terminal is attached to this call")
            && piped.stderr.contains("--passphrase-file"),
        "{}",
        piped.stderr
    );
    let leave = env.run(&["certmesh", "leave"]);
    leave.expect_code(1);
    assert!(
        leave
            .stderr
            .contains("no terminal is attached to this call")
            && leave.stderr.contains("--yes"),
        "{}",
        leave.stderr
    );
}

/// `koi-asker context` / `koi-whoami forge` (a plugin-to-plugin call) at a terminal and piped:
/// what the context said about `interactive`.
fn interactive_seen(env: &KoiEnv) -> [serde_json::Value; 4] {
    let at_terminal = |args: &[&str]| {
        let (code, output) = Term::start(env, args).finish();
        assert_eq!(code, Some(0), "{args:?}:\n{output}");
        result_line(&output)["context"].clone()
    };
    let piped = |args: &[&str]| {
        let run = env.run(args);
        run.expect_code(0);
        run.json()["context"].clone()
    };
    let from_plugin = at_terminal(&["whoami", "forge", "--json"]);
    assert_eq!(from_plugin["caller"]["plugin"], "whoami", "{from_plugin}");
    [
        at_terminal(&["asker", "context", "--json"])["interactive"].clone(),
        piped(&["asker", "context", "--json"])["interactive"].clone(),
        from_plugin["interactive"].clone(),
        piped(&["whoami", "forge", "--json"])["interactive"].clone(),
    ]
}

#[test]
fn the_call_context_says_per_call_whether_a_person_can_be_asked() {
    use serde_json::json;
    let env = KoiEnv::new().with_fixture("asker").with_fixture("whoami");
    let expected = [json!(true), json!(false), json!(false), json!(false)];
    assert_eq!(interactive_seen(&env), expected, "one-shot");
    let bind = format!("127.0.0.1:{}", free_port());
    let _daemon = env.start_daemon(&[("KOI_REST_ENABLED", "true"), ("KOI_REST_BIND", &bind)]);
    assert_eq!(interactive_seen(&env), expected, "under koi daemon");
    let rest = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10"])
        .arg(format!("http://{bind}/v1/asker/context"))
        .output()
        .expect("curl");
    let body: serde_json::Value = serde_json::from_slice(&rest.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&rest.stdout)));
    assert_eq!(body["context"]["caller"]["kind"], "rest", "{body}");
    assert_eq!(body["context"]["interactive"], false, "{body}");
}

#[test]
fn a_confirmed_secret_whose_entries_differ_is_asked_again() {
    let env = KoiEnv::new().with_fixture("asker");
    let mut term = Term::start(&env, &["asker", "word", "--json"]);
    term.wait_for_nth("Secret word:", 1);
    term.type_text("alpha\n");
    term.wait_for_nth("Secret word (again):", 1);
    term.type_text("beta\n");
    term.wait_for("Type it again");
    term.wait_for_nth("Secret word:", 2);
    term.type_text("gamma\n");
    term.wait_for_nth("Secret word (again):", 2);
    term.type_text("gamma\n");
    let (code, output) = term.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(result_line(&output)["length"], 5, "{output}");

    // Bounded: after three mismatches the question fails with -32010's "no answer".
    let mut term = Term::start(&env, &["asker", "word"]);
    for n in 1..=3 {
        term.wait_for_nth("Secret word:", n);
        term.type_text("one\n");
        term.wait_for_nth("Secret word (again):", n);
        term.type_text("two\n");
    }
    let (code, output) = term.finish();
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("the two entries did not match 3 times"),
        "{output}"
    );
}

/// `join --ca A` at B's terminal: confirm the fingerprint, type the code.
fn join_at_a_terminal(lab: &NetLab, fingerprint: &str, uri: &str, last: &mut i64) {
    let mut term = Term::start(
        &lab.b.env,
        &["certmesh", "join", "--ca", &lab.a.ip, "--json"],
    );
    term.wait_for("Does it match");
    assert!(term.text().contains(fingerprint), "{}", term.text());
    term.wait_for("[y/N]");
    term.type_text("y\n");
    term.wait_for("Enrollment code");
    let code = fresh_code(uri, last);
    term.type_text(&format!("{code}\n"));
    let (status, output) = term.finish();
    assert_eq!(status, Some(0), "{output}");
    assert_eq!(
        result_line(&output)["mesh"]["ca_fingerprint"],
        fingerprint,
        "{output}"
    );
    assert!(!output.contains(&code), "the code was echoed:\n{output}");
}

#[test]
fn join_confirms_the_fingerprint_at_a_terminal_with_and_without_the_daemon() {
    if !root_or_skip("join_confirms_the_fingerprint_at_a_terminal_with_and_without_the_daemon") {
        return;
    }
    let lab = NetLab::new("pj");
    let (_ca, ca) = ca_under_daemon(&lab, &["--json"]);
    let LabCa {
        uri, fingerprint, ..
    } = ca;
    let mut last = 0;
    join_at_a_terminal(&lab, &fingerprint, &uri, &mut last);
    let _member = lab.b.env.start_daemon(&[]);
    join_at_a_terminal(&lab, &fingerprint, &uri, &mut last);
}
