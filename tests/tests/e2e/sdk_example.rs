//! The SDK's example daemon plugin, `koi-tally` (sdk/examples/koi-tally.rs, shown whole in
//! docs/plugins.md), under a real `koi daemon` beside koi-hello: the events koi-hello publishes are
//! counted in order through an ordered subscription, the `checkpoint` service shows in `koi
//! status`, stopping the daemon leaves a valid versioned `tally.json` (the service's last save,
//! within its shutdown grace), and a new daemon starts from it.

use crate::support::{KoiEnv, example, poll_until};
use serde_json::Value;
use std::time::Duration;

/// `koi tally show --json`, polled until `done` holds (or 30 s pass, which fails the test).
fn show_until(env: &KoiEnv, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let show = || {
        let run = env.run(&["tally", "show", "--json"]);
        run.expect_code(0);
        run.json()
    };
    poll_until(what, Duration::from_millis(100), show, done)
}

fn ticks(shown: &Value) -> u64 {
    shown["by_topic"]["hello.tick"].as_u64().unwrap_or(0)
}

#[test]
fn tally_counts_events_saves_them_at_shutdown_and_restores_them_on_start() {
    let env = KoiEnv::new().with_hello();
    env.install(&example("koi-tally"), "tally");
    let mut daemon = env.start_daemon(&[]);

    let status = env.run(&["tally", "status", "--json"]);
    status.expect_code(0);
    let status = status.json();
    assert_eq!(
        status["details"]["daemon_services"]["checkpoint"]["state"], "running",
        "{status}"
    );

    env.run(&["hello", "publish", "--count", "25"])
        .expect_code(0);
    let shown = show_until(&env, "25 ticks counted", |s| ticks(s) == 25);
    assert_eq!(shown["by_source"]["hello"], 25, "{shown}");
    assert_eq!(shown["gaps"], 0, "{shown}");
    assert_eq!(shown["problem"], Value::Null, "{shown}");

    assert_eq!(
        daemon.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        daemon.log_text()
    );
    let file = env.home.join("tally/tally.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{} after shutdown: {e}", file.display()));
    let saved: Value = serde_json::from_str(&text).expect("tally.json is JSON");
    assert_eq!(saved["version"], 2, "{saved}");
    assert_eq!(saved["data"]["by_topic"]["hello.tick"], 25, "{saved}");
    assert_eq!(saved["data"]["by_source"]["hello"], 25, "{saved}");
    let leftovers: Vec<_> = std::fs::read_dir(env.home.join("tally"))
        .expect("tally dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "tally.json")
        .collect();
    assert!(leftovers.is_empty(), "stray files: {leftovers:?}");

    let _daemon = env.start_daemon(&[]);
    let restored = show_until(&env, "the saved tally restored", |s| ticks(s) == 25);
    assert_eq!(restored["by_source"]["hello"], 25, "{restored}");
    env.run(&["hello", "publish", "--count", "5"])
        .expect_code(0);
    show_until(&env, "counting to continue from the saved 25", |s| {
        ticks(s) == 30
    });
}
