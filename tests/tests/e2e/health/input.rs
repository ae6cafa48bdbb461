//! Bad input gets a clear error and loses nothing stored; checks survive a daemon restart, and the
//! transition log survives `kill -9` of the daemon and the plugin with every line whole.

use super::{TestServer, add, log_lines, state, wait_service};
use crate::support::{KoiEnv, assert_process_gone, wait_until};
use std::time::Duration;

#[test]
fn bad_inputs_each_get_a_clear_error_and_nothing_stored_is_lost() {
    let env = KoiEnv::new().with_health();
    add(
        &env,
        &["kept", "--http", "http://nas.lan/", "--interval", "30s"],
    );
    let file = env.home.join("health/checks.json");
    let before = std::fs::read(&file).expect("checks.json written");
    let cases: &[(&[&str], &[&str])] = &[
        (&["bad", "--http", "not a url"], &["invalid --http URL"]),
        (
            &["bad", "--http", "ftp://nas.lan/"],
            &["scheme must be http or https"],
        ),
        (
            &["bad", "--tcp", "nas.lan:70000"],
            &["port 70000 is out of range"],
        ),
        (&["bad", "--tcp", "nas.lan:0"], &["port 0 is out of range"]),
        (
            &[
                "bad",
                "--http",
                "http://nas.lan/",
                "--interval",
                "2s",
                "--timeout",
                "5s",
            ],
            &["interval (2s) must be longer than the timeout (5s)"],
        ),
        (
            &["kept", "--tcp", "nas.lan:22"],
            &["already exists", "koi health remove kept"],
        ),
        (
            &["bad", "--http", "http://203.0.113.7/"],
            &["not a LAN address", "--allow-remote"],
        ),
        (
            &["bad", "--tcp", "public.example:443"],
            &["not a LAN address", "--allow-remote"],
        ),
        (
            &["bad name", "--tcp", "nas.lan:22"],
            &["invalid check name"],
        ),
        (&["bad"], &["exactly one of --http URL or --tcp HOST:PORT"]),
        (
            &["bad", "--http", "http://nas.lan/", "--expect", "7xx"],
            &["invalid --expect"],
        ),
    ];
    for (args, wanted) in cases {
        let mut all = vec!["health", "add"];
        all.extend_from_slice(args);
        let run = env.run(&all);
        assert_ne!(run.code, Some(0), "{args:?} was accepted:\n{}", run.stdout);
        assert!(
            run.stderr.starts_with("error: health add: ") && !run.stderr.contains("panicked"),
            "{args:?}: not one clean error:\n{}",
            run.stderr
        );
        for w in *wanted {
            assert!(
                run.stderr.contains(w),
                "{args:?}: no {w:?} in:\n{}",
                run.stderr
            );
        }
        assert_eq!(
            std::fs::read(&file).expect("checks.json"),
            before,
            "{args:?} changed the stored checks"
        );
    }
    let run = env.run(&["health", "remove", "missing"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("no check named \"missing\""),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(&file).expect("checks.json"), before);
    // Allowed on purpose: a public address with --allow-remote.
    add(
        &env,
        &["remote", "--http", "http://203.0.113.7/", "--allow-remote"],
    );
}

fn plugin_pid(env: &KoiEnv) -> i32 {
    let status = env.daemon_status();
    status["plugins"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["moniker"] == "health" || p["name"] == "health")
        })
        .and_then(|p| p["supervision"]["pid"].as_i64())
        .unwrap_or_else(|| panic!("no koi-health pid in {status:#}")) as i32
}

#[test]
fn checks_survive_a_daemon_restart_and_the_log_survives_kill_9_intact() {
    let server = TestServer::start(200);
    let env = KoiEnv::new().with_health();
    let mut daemon = env.start_daemon(&[]);
    let url = server.url();
    add(
        &env,
        &[
            "web",
            "--http",
            &url,
            "--interval",
            "1s",
            "--fail-after",
            "1",
            "--recover-after",
            "1",
        ],
    );
    add(
        &env,
        &["other", "--tcp", "127.0.0.1:9", "--interval", "30s"],
    );
    wait_service(&env, "web", "up");
    let web_lines = super::lines_of(&env, "web");
    daemon
        .terminate(Duration::from_secs(10))
        .expect("daemon stops");
    let mut daemon = env.start_daemon(&[]);
    let names: Vec<String> = state(&env)["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["other", "web"], "checks lost across a restart");
    // The restarted daemon carries on from the saved state: web runs again, still up, and its
    // first result after the restart is not logged as a change.
    assert_eq!(super::service_state(&env, "web").as_deref(), Some("up"));
    wait_until(
        "web runs after the restart",
        Duration::from_secs(20),
        || {
            state(&env)["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "web"))
                .is_some_and(|s| {
                    s["signals"]
                        .as_str()
                        .is_some_and(|t| t.contains("last run"))
                })
        },
    );
    assert_eq!(
        super::lines_of(&env, "web"),
        web_lines,
        "a restart logged a change"
    );

    // Transitions keep coming (1 s interval, threshold 1), then SIGKILL the plugin and the daemon.
    for code in [502, 200, 502, 200] {
        server.set(code);
        wait_service(&env, "web", if code == 200 { "up" } else { "down" });
    }
    let plugin = plugin_pid(&env);
    let before = log_lines(&env);
    let kill = |pid: i32| {
        let pid = rustix::process::Pid::from_raw(pid).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
    };
    kill(plugin);
    kill(daemon.child.id() as i32);
    let _ = daemon.child.wait();
    assert_process_gone(plugin);
    let after = log_lines(&env);
    assert!(
        after.len() >= before.len(),
        "lines lost: {before:#?} → {after:#?}"
    );
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "lines changed by kill -9"
    );
    let raw = std::fs::read_to_string(env.home.join("health/transitions.log")).expect("log");
    assert!(raw.ends_with('\n'), "a torn last line:\n{raw}");
    let listed = env.run(&["health", "log", "--json"]);
    listed.expect_code(0);
    assert_eq!(
        listed.json()["transitions"].as_array().map(Vec::len),
        Some(after.len()),
        "a line of the log does not parse:\n{raw}"
    );
    let _daemon = env.start_daemon(&[]);
    wait_until("checks back after kill -9", Duration::from_secs(20), || {
        state(&env)["services"].as_array().map(Vec::len) == Some(2)
    });
}

#[test]
fn without_the_daemon_status_checks_once_and_says_the_daemon_is_needed() {
    let server = TestServer::start(200);
    let env = KoiEnv::new().with_health();
    let url = server.url();
    let closed = format!("127.0.0.1:{}", crate::support::free_port());
    add(&env, &["web", "--http", &url]);
    add(&env, &["gone", "--tcp", &closed]);
    let run = env.run(&["health", "status", "--json"]);
    run.expect_code(0);
    let status = run.json();
    let details = &status["details"];
    let state_of = |name: &str| {
        details["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .map(|s| s["state"].clone())
    };
    assert_eq!(state_of("web"), Some("up".into()), "{status:#}");
    assert_eq!(state_of("gone"), Some("down".into()), "{status:#}");
    assert!(
        details["notes"]
            .to_string()
            .contains("continuous checking and machine health need `koi daemon`"),
        "{status:#}"
    );
    assert_eq!(
        status["summary"],
        "1 up, 1 down, 0 pending (0 machines, 2 checks)"
    );
    // The one-shot dashboard stays quick: it runs nothing and says so.
    let dash = env.run(&["status", "--json"]);
    dash.expect_code(0);
    let dash = dash.json();
    let health = dash["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "health"))
        .cloned()
        .unwrap_or_else(|| panic!("no health line in {dash:#}"));
    assert!(
        health.to_string().contains("0 up, 0 down, 2 pending"),
        "{health:#}"
    );
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the dashboard ran a check"
    );
    // Nothing is logged by one-shot runs: no state was tracked before them.
    assert!(super::log_lines(&env).is_empty());
}
