//! Ordered events with gap reports, and no process left behind (issue 15, host side): a publisher
//! pipelining 10,000 appeared/removed pairs for the same keys reaches an ordered subscriber in
//! publication order; a slow subscriber whose events were dropped is told (`missed`, gap
//! markers), resyncs and ends with the publisher's state; and what a plugin spawned is killed
//! once the plugin is gone, however it went; and shutdown waits the grace a plugin asks for.

use crate::support::{KoiEnv, kill};
use serde_json::Value;
use std::time::{Duration, Instant};

const PAIRS: u64 = 10_000;
const KEYS: u64 = 16;

/// Polls `koi <moniker> view` until the subscriber has caught up with `snapshot` (same last
/// sequence number, no resync in flight), within 120 s.
fn caught_up(env: &KoiEnv, moniker: &str, snapshot: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = env.run(&[moniker, "view", "--json"]);
        if run.code == Some(0) {
            let view = run.json();
            if view["seq"] == snapshot["seq"] && view["pending"] == false {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "koi-{moniker} never caught up with {snapshot}: {view}"
            );
        } else {
            assert!(Instant::now() < deadline, "koi-{moniker} view: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pipelined_events_arrive_in_order_and_a_slow_subscriber_is_told_of_drops_and_resyncs() {
    let env = KoiEnv::new()
        .with_fixture("evpub")
        .with_fixture("evfast")
        .with_fixture("evslow");
    let daemon = env.start_daemon(&[
        ("KOI_PING_INTERVAL_SECS", "3600"),
        ("KOI_SUBSCRIBER_QUEUE", "2048"),
    ]);
    let pairs = PAIRS.to_string();
    let keys = KEYS.to_string();
    let burst = env.run(&[
        "evpub", "burst", "--pairs", &pairs, "--keys", &keys, "--json",
    ]);
    burst.expect_code(0);
    // The burst is answered once every publish was sent; the snapshot is the final state.
    let deadline = Instant::now() + Duration::from_secs(60);
    let snapshot = loop {
        let snapshot = env.run(&["evpub", "snapshot", "--json"]).json();
        if snapshot["seq"].as_u64() == Some(2 * PAIRS + KEYS.div_ceil(3) - 1) {
            break snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "evpub never finished: {snapshot}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let expected: Vec<u64> = (0..KEYS).step_by(3).collect();
    assert_eq!(snapshot["keys"], serde_json::json!(expected));
    // evslow has held its first event all along, so its queue overflowed: let it read now.
    std::fs::write(env.pids.join("evslow.gate"), b"").expect("open evslow's gate");

    let fast = caught_up(&env, "evfast", &snapshot);
    assert_eq!(fast["out_of_order"], 0, "{fast}");
    assert_eq!(fast["keys"], snapshot["keys"], "{fast}");

    let slow = caught_up(&env, "evslow", &snapshot);
    eprintln!("evfast: {fast}\nevslow: {slow}");
    assert_eq!(slow["out_of_order"], 0, "{slow}");
    assert!(
        slow["missed"].as_u64() > Some(0),
        "the slow subscriber was not told: {slow}"
    );
    assert!(slow["resyncs"].as_u64() > Some(0), "{slow}");
    assert_eq!(slow["keys"], snapshot["keys"], "{slow}");
    // `koi status` still counts the drops, and every one of them is reported to the subscriber
    // (reports still queued behind the snapshot arrive later: wait for them).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = env.daemon_status();
        let counters = status["daemon"]["events"]
            .as_array()
            .and_then(|e| e.iter().find(|s| s["subscriber"] == "evslow"))
            .cloned()
            .expect("evslow counters");
        let slow = env.run(&["evslow", "view", "--json"]).json();
        if counters["dropped"] == slow["missed"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drops counted and reported differ: {counters} vs {slow}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(daemon);
}

/// The pid the spawner fixture recorded for its `sleep 1000`.
fn spawned_child(env: &KoiEnv) -> i32 {
    let file = env.pids.join("spawner-child.pid");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "koi-spawner never recorded its child"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid koi-spawner recorded for itself.
fn spawner_pid(env: &KoiEnv) -> u32 {
    std::fs::read_to_string(env.pids.join("spawner.pid"))
        .expect("spawner.pid")
        .trim()
        .parse()
        .expect("a pid")
}

/// Waits up to 10 s for `pid` to be dead: gone, or a zombie waiting for whoever inherited it.
fn assert_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('Z') || state.starts_with('X') {
                    return;
                }
                if Instant::now() > deadline {
                    kill::kill9(pid as u32);
                    panic!("{what} ({pid}) outlived its plugin: {stat}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_child_a_plugin_spawned_is_killed_once_the_plugin_exits() {
    let env = KoiEnv::new().with_fixture("spawner");
    env.run(&["spawner", "noop", "--json"]).expect_code(0);
    let child = spawned_child(&env);
    let plugin = i32::try_from(spawner_pid(&env)).expect("pid");
    crate::support::assert_process_gone(plugin);
    assert_dead(child, "the `sleep 1000` koi-spawner started");
}

#[test]
fn a_child_of_a_plugin_killed_under_the_daemon_is_killed_too() {
    let env = KoiEnv::new().with_fixture("spawner");
    let daemon = env.start_daemon(&[("KOI_PING_INTERVAL_SECS", "3600")]);
    let child = spawned_child(&env);
    kill::kill9(spawner_pid(&env));
    assert_dead(
        child,
        "the `sleep 1000` koi-spawner started before it was killed",
    );
    drop(daemon);
}

#[test]
fn shutdown_waits_the_grace_a_plugin_asks_for_before_sigterm() {
    let env = KoiEnv::new().with_fixture("drainer");
    env.run(&["drainer", "noop", "--json"]).expect_code(0);
    assert!(
        env.pids.join("drained.ok").exists(),
        "koi-drainer was stopped before the 4 s grace its manifest asks for"
    );
    env.assert_no_plugin_left();
}
