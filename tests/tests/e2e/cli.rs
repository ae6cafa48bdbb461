//! The host's command line against a conforming plugin (the SDK example `koi-hello`): dispatch,
//! `--json`, help from manifests, the manifest cache, completions, discovery and built-ins.

use crate::support::{KoiEnv, example};
use serde_json::json;

#[test]
fn version_and_plugins_list_print_valid_json() {
    let env = KoiEnv::new().with_hello();
    let version = env.run(&["version", "--json"]);
    version.expect_code(0);
    let v = version.json();
    assert_eq!(v["koi"]["protocol"], "1.1");
    assert!(v["koi"]["git_hash"].is_string());
    assert_eq!(v["plugins"][0]["name"], "hello");
    assert_eq!(v["plugins"][0]["protocol"], "1.1");
    let list = env.run(&["plugins", "list", "--json"]);
    list.expect_code(0);
    assert_eq!(list.json()["plugins"][0]["state"], "ok");
}

#[test]
fn a_verb_runs_and_json_is_the_result_exactly() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["hello", "greet", "Ada", "--json"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "{\"greeting\":\"Hello, Ada!\"}\n");
    let human = env.run(&["hello", "greet", "Ada", "--shout"]);
    human.expect_code(0);
    assert!(human.stdout.contains("HELLO, ADA!"), "{}", human.stdout);
    assert!(
        !human.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    env.assert_no_plugin_left();
}

#[test]
fn method_errors_and_usage_errors_have_distinct_exit_codes() {
    let env = KoiEnv::new().with_hello();
    let failed = env.run(&["hello", "greet", " "]);
    failed.expect_code(1);
    assert!(
        failed.stderr.contains("hello greet: the name is empty"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("Pass a name"),
        "hint shown: {}",
        failed.stderr
    );
    env.run(&["hello", "greet"]).expect_code(2);
    let bad_number = env.run(&["hello", "wait", "soon"]);
    bad_number.expect_code(2);
    assert!(
        bad_number.stderr.contains("expected a whole number"),
        "{}",
        bad_number.stderr
    );
    let out_of_range = env.run(&["hello", "wait", "100000"]);
    out_of_range.expect_code(2);
    // In the user's words (issue 10); the schema path is shown with -v.
    assert!(
        out_of_range.stderr.contains("<SECONDS> must be 0–86400"),
        "argument and range named: {}",
        out_of_range.stderr
    );
}

#[test]
fn help_comes_from_the_manifest() {
    let env = KoiEnv::new().with_hello();
    let top = env.run(&["help"]);
    top.expect_code(0);
    assert!(
        top.stdout.contains("hello") && top.stdout.contains("Example plugin"),
        "{}",
        top.stdout
    );
    let plugin = env.run(&["help", "hello"]);
    assert!(
        plugin.stdout.contains("greet") && plugin.stdout.contains("Greet someone by name"),
        "{}",
        plugin.stdout
    );
    let verb = env.run(&["help", "hello", "greet"]);
    assert!(
        verb.stdout.contains("Who to greet") && verb.stdout.contains("--shout"),
        "{}",
        verb.stdout
    );
    assert!(
        verb.stdout.contains("koi hello greet Ada --shout"),
        "examples shown: {}",
        verb.stdout
    );
    let flag = env.run(&["hello", "greet", "--help"]);
    flag.expect_code(0);
    assert!(flag.stdout.contains("Who to greet"), "{}", flag.stdout);
}

#[test]
fn unknown_commands_get_did_you_mean() {
    let env = KoiEnv::new().with_hello();
    let root = env.run(&["helo"]);
    root.expect_code(2);
    assert!(root.stderr.contains("`koi hello`"), "{}", root.stderr);
    let verb = env.run(&["hello", "gret"]);
    verb.expect_code(2);
    assert!(verb.stderr.contains("'greet'"), "{}", verb.stderr);
    let help = env.run(&["help", "hello", "gret"]);
    help.expect_code(2);
    assert!(
        help.stderr.contains("Did you mean `greet`?"),
        "{}",
        help.stderr
    );
}

#[test]
fn help_and_completion_spawn_nothing_once_the_cache_is_warm() {
    let env = KoiEnv::new().with_fixture("noisy");
    env.run(&["help"]).expect_code(0);
    assert_eq!(
        env.fixture_starts(),
        1,
        "the first help inspects the plugin once"
    );
    env.run(&["help"]).expect_code(0);
    env.run(&["help", "noisy"]).expect_code(0);
    env.run(&["noisy", "--help"]).expect_code(0);
    let bash = env.run(&["completions", "bash"]);
    bash.expect_code(0);
    assert!(bash.stdout.contains("chat"), "plugin verbs in completions");
    assert_eq!(
        env.fixture_starts(),
        1,
        "help and completions used the manifest cache"
    );
    // Changing the plugin file invalidates its cache entry.
    let path = env.plugins.join("koi-noisy");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("\n# changed\n");
    std::fs::write(&path, text).expect("write");
    env.run(&["help"]).expect_code(0);
    assert_eq!(
        env.fixture_starts(),
        2,
        "a changed plugin is inspected again"
    );
}

#[test]
fn completions_cover_bash_zsh_and_fish_with_plugin_verbs() {
    let env = KoiEnv::new().with_hello();
    env.run(&["plugins", "list"]).expect_code(0); // warms the cache
    for shell in ["bash", "zsh", "fish"] {
        let run = env.run(&["completions", shell]);
        run.expect_code(0);
        assert!(
            run.stdout.contains("greet") && run.stdout.contains("status"),
            "{shell}: {}",
            run.stdout
        );
    }
}

#[test]
fn discovery_order_shadowing_and_builtins() {
    let env = KoiEnv::new().with_hello();
    let later = env.dir.path().join("later");
    std::fs::create_dir_all(&later).expect("mkdir");
    std::os::unix::fs::symlink(example("koi-hello"), later.join("koi-hello")).expect("symlink");
    std::os::unix::fs::symlink(example("koi-hello"), env.plugins.join("koi-status"))
        .expect("symlink");
    std::fs::write(env.plugins.join("koi-lazy"), "#!/bin/sh\n").expect("write");
    let path = format!("{}:{}", env.plugins.display(), later.display());
    let run = env
        .command(&["plugins", "list", "--json"])
        .env("KOI_PLUGIN_PATH", &path)
        .output()
        .expect("run");
    let list: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    let rows = list["plugins"].as_array().expect("rows");
    let state_of = |path: std::path::PathBuf| {
        rows.iter()
            .find(|r| r["path"] == json!(path))
            .map(|r| r["state"].clone())
    };
    assert_eq!(state_of(env.plugins.join("koi-hello")), Some("ok".into()));
    assert_eq!(state_of(later.join("koi-hello")), Some("shadowed".into()));
    assert_eq!(
        state_of(env.plugins.join("koi-status")),
        Some("shadowed".into())
    );
    assert_eq!(
        state_of(env.plugins.join("koi-lazy")),
        Some("not_executable".into())
    );
    let warnings = list["warnings"].as_array().expect("warnings").len();
    assert_eq!(warnings, 3, "{list}");
    // The built-in still answers `koi status`.
    let status = env
        .command(&["status", "--json"])
        .env("KOI_PLUGIN_PATH", &path)
        .output()
        .expect("run");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(status["plugins"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_plugin_run_by_hand_explains_itself_instead_of_waiting() {
    let out = std::process::Command::new(example("koi-hello"))
        .stdin(std::process::Stdio::inherit())
        .output()
        .expect("run koi-hello");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("This is a Koi plugin") && stderr.contains("koi hello --help"),
        "{stderr}"
    );
}

#[test]
fn deprecated_root_alias_warns_then_behaves_like_the_verb() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["greet", "Bob", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json(), json!({"greeting": "Hello, Bob!"}));
    assert!(
        run.stderr
            .contains("`koi greet` is deprecated. Use `koi hello greet`"),
        "{}",
        run.stderr
    );
}

#[test]
fn status_dashboard_renders_for_people() {
    let env = KoiEnv::new().with_hello();
    let run = env.run(&["status"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("hello")
            && run.stdout.contains("ok")
            && run.stdout.contains("ready to greet"),
        "{}",
        run.stdout
    );
}

#[test]
fn status_and_plugins_list_start_each_plugin_once_on_a_cold_cache() {
    let env = KoiEnv::new().with_fixture("noisy");
    env.run(&["status"]).expect_code(0);
    assert_eq!(
        env.fixture_starts(),
        1,
        "`koi status` started the plugin once"
    );
    let fresh = KoiEnv::new().with_fixture("noisy");
    fresh.run(&["plugins", "list"]).expect_code(0);
    assert_eq!(
        fresh.fixture_starts(),
        1,
        "`koi plugins list` started the plugin once"
    );
}
