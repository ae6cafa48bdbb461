//! Host protocol bugs a plugin written from `docs/protocol.md` ran into (issue 10), one test each,
//! with the fixture `tests/fixtures/koi-protobugs`: a REST client's disconnect reaches the plugin
//! as `$/cancel`; forbidden or duplicate method names refuse the manifest; traces redact values,
//! not the manifest's schemas; one plugin's bad `host/call` is blamed on it (exit 3), not on the
//! user; `plugins list` does not trust a cached manifest; and the wording of two messages.

use crate::support::{KoiEnv, free_port};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits (up to `limit`) for `path` to exist.
fn wait_for(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn plugin_row(list: &Value, name: &str) -> Value {
    list["plugins"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no row for {name}: {list}"))
}

#[test]
fn a_rest_client_that_disconnects_cancels_its_long_running_call() {
    let env = KoiEnv::new().with_fixture("protobugs");
    let bind = format!("127.0.0.1:{}", free_port());
    let daemon = env.start_daemon(&[("KOI_REST_ENABLED", "true"), ("KOI_REST_BIND", &bind)]);
    let mut client = std::net::TcpStream::connect(&bind).expect("connect to the REST API");
    write!(
        client,
        "GET /v1/protobugs/follow HTTP/1.1\r\nHost: {bind}\r\n\r\n"
    )
    .expect("send request");
    assert!(
        wait_for(&env.pids.join("following"), Duration::from_secs(15)),
        "the call never reached the plugin:\n{}",
        daemon.log_text()
    );
    assert!(!env.pids.join("cancelled").exists());
    drop(client);
    assert!(
        wait_for(&env.pids.join("cancelled"), Duration::from_secs(15)),
        "the plugin kept streaming for a client that left: no $/cancel arrived\n{}",
        daemon.log_text()
    );
    // The plugin is still serving the daemon.
    env.run(&["protobugs", "greet", "--json"]).expect_code(0);
}

#[test]
fn forbidden_or_duplicate_method_names_refuse_the_manifest() {
    for names in [
        r#"["greet", "initialize"]"#,
        r#"["greet", "status"]"#,
        r#"["greet", "shutdown"]"#,
        r#"["greet", "host/x"]"#,
        r#"["greet", "$/x"]"#,
        r#"["greet", "Bad Name"]"#,
        r#"["greet", "greet"]"#,
    ] {
        let mut env = KoiEnv::new().with_fixture("protobugs");
        env.extra_env
            .push(("KOI_FIXTURE_METHODS".into(), names.into()));
        let run = env.run(&["protobugs", "greet"]);
        run.expect_code(3).expect_clean_error("protobugs");
        assert!(
            run.stderr
                .contains("invalid manifest: at /manifest/methods/1/name:"),
            "{names}: the first problem and its path are named\n{}",
            run.stderr
        );
        let list = env.run(&["plugins", "list", "--json"]);
        list.expect_code(3);
        assert_eq!(
            plugin_row(&list.json(), "protobugs")["state"],
            "failing",
            "{names}: {}",
            list.stdout
        );
        env.assert_no_plugin_left();
    }
}

#[test]
fn traces_redact_secret_values_but_show_the_manifest_schemas() {
    let env = KoiEnv::new().with_fixture("protobugs");
    let run = crate::support::Run::from(
        env.command(&[
            "protobugs",
            "login",
            "--password",
            "hunter2",
            "--code",
            "424242",
            "--json",
        ])
        .env("KOI_TRACE_PROTOCOL", "1")
        .output()
        .expect("run koi"),
    );
    run.expect_code(0);
    let manifest_line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("koi-trace protobugs <-") && l.contains("\"manifest\""))
        .unwrap_or_else(|| panic!("no traced handshake answer:\n{}", run.stderr));
    assert!(
        manifest_line.contains(r#""password":{"type":"string"}"#)
            && manifest_line.contains(r#""code":{"type":"string"}"#),
        "the schemas of `password` and `code` are declarations, not secrets: {manifest_line}"
    );
    assert!(
        run.stderr
            .contains(r#""params":{"password":"[redacted]","code":"[redacted]"}"#),
        "the values are still redacted:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("hunter2") && !run.stderr.contains("424242"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_plugin_that_sends_another_bad_params_is_blamed_not_the_user() {
    let env = KoiEnv::new().with_fixture("protobugs");
    env.install(&env.plugins.join("koi-protobugs"), "other");
    let check = |run: &crate::support::Run, what: &str| {
        run.expect_code(3).expect_clean_error("protobugs");
        assert!(
            run.stderr.contains(&format!(
                "koi-protobugs made an invalid call to koi-other `{what}`"
            )),
            "the calling plugin is named:\n{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("This is a bug in koi-protobugs, not in your command"),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("Check the arguments"),
            "{}",
            run.stderr
        );
    };
    let schema = env.run(&["protobugs", "relay"]);
    check(&schema, "login");
    assert!(
        schema
            .stderr
            .contains("the params for `login` of koi-other break its declared schema at /password"),
        "{}",
        schema.stderr
    );
    check(
        &env.run(&["protobugs", "relay", "--method", "nosuch"]),
        "nosuch",
    );
    env.assert_no_plugin_left();

    // The same under koi daemon, which answers `host/call` itself.
    let _daemon = env.start_daemon(&[]);
    check(&env.run(&["protobugs", "relay"]), "login");
    // With --json the same blame comes as the JSON error object on stderr.
    let json = env.run(&["protobugs", "relay", "--json"]);
    json.expect_code(3);
    assert_eq!(json.stdout, "", "no result on stdout");
    let line = json.stderr.lines().last().unwrap_or("");
    let error: serde_json::Value = serde_json::from_str(line).expect("a JSON error line");
    assert_eq!(error["error"]["plugin"], "protobugs", "{line}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("koi-protobugs made an invalid call to koi-other `login`")),
        "{line}"
    );
}

#[test]
fn plugins_list_does_not_trust_a_manifest_cached_before_the_plugin_began_failing() {
    let mut env = KoiEnv::new().with_fixture("protobugs");
    let list = env.run(&["plugins", "list", "--json"]);
    list.expect_code(0);
    assert_eq!(plugin_row(&list.json(), "protobugs")["state"], "ok");
    // Its file is unchanged (so the cache entry stays valid), but it no longer starts.
    env.extra_env.push(("KOI_FIXTURE_FAIL".into(), "1".into()));
    let list = env.run(&["plugins", "list", "--json"]);
    list.expect_code(3);
    let row = plugin_row(&list.json(), "protobugs");
    assert_eq!(row["state"], "failing", "{}", list.stdout);
    assert!(
        row["detail"]
            .as_str()
            .is_some_and(|d| d.contains("No module named 'yaml'")),
        "{row}"
    );
    env.assert_no_plugin_left();
}

#[test]
fn the_incompatible_plugin_warning_is_punctuated() {
    let env = KoiEnv::new().with_fixture("future");
    let list = env.run(&["plugins", "list", "--json"]);
    list.expect_code(3);
    let warnings = list.json()["warnings"].to_string();
    assert!(
        warnings.contains("is out of date. Upgrade koi"),
        "a full stop ends the message before the next step: {warnings}"
    );
}
