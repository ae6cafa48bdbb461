//! Machine health in a two-host lab (one bridge, its own namespaces): A runs koi-mdns and
//! koi-health under its daemon, B runs koi-mdns under its daemon and announces a service. B killed
//! with SIGKILL (no goodbye) is down on A after the threshold and not before the threshold minus
//! one re-check period, logged once, and up again when it returns; B shut down cleanly (goodbye)
//! is down at once, long before the threshold. And a certmesh member whose heartbeat to its CA
//! fails is degraded in its own health.

use crate::support::certmesh::mdns_bin;
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::{DaemonProc, KoiEnv, bin_dir, root_or_skip, wait_until};
use std::time::{Duration, SystemTime};

/// The re-check period on A (`KOI_MDNS_RECHECK_SECS`).
const PERIOD_SECS: u64 = 3;

fn observer(host: &LabHost, threshold: &str) -> DaemonProc {
    host.env.install(&mdns_bin(), "mdns");
    host.env.install(&bin_dir().join("koi-health"), "health");
    host.env.start_daemon(&[
        ("KOI_HEALTH_THRESHOLD", threshold),
        ("KOI_MDNS_RECHECK_SECS", "3"),
    ])
}

fn announcer(host: &LabHost) -> DaemonProc {
    if !host.env.plugins.join("koi-mdns").exists() {
        host.env.install(&mdns_bin(), "mdns");
    }
    let daemon = host.env.start_daemon(&[]);
    host.env
        .run(&["mdns", "announce", "web", "_http._tcp", "8080"])
        .expect_code(0);
    daemon
}

fn machine(env: &KoiEnv, name: &str) -> Option<serde_json::Value> {
    let run = env.run(&["health", "state", "--json"]);
    run.expect_code(0);
    run.json()["machines"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

fn machine_state(env: &KoiEnv, name: &str) -> Option<String> {
    machine(env, name).map(|m| m["state"].as_str().unwrap_or_default().to_owned())
}

/// SIGKILL to everything in the host's namespace (its koi daemon and koi-mdns): no goodbye. All
/// are stopped first: killed one by one, koi-mdns could see its daemon's pipe close and send
/// goodbyes in between.
fn kill_all(host: &LabHost) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &host.ns])
        .output()
        .expect("ip netns pids");
    let pids: Vec<rustix::process::Pid> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter_map(rustix::process::Pid::from_raw)
        .collect();
    for signal in [rustix::process::Signal::STOP, rustix::process::Signal::KILL] {
        for pid in &pids {
            let _ = rustix::process::kill_process(*pid, signal);
        }
    }
}

fn line_time(line: &str) -> SystemTime {
    let stamp = line.split(" | ").next().expect("a timestamp");
    // 2026-11-30T01:02:03.456Z
    let out = std::process::Command::new("date")
        .args(["-u", "-d", stamp, "+%s%3N"])
        .output()
        .expect("date");
    let ms: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("ms");
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn a_machine_killed_without_goodbye_is_down_after_the_threshold_and_up_when_it_returns() {
    if !root_or_skip(
        "a_machine_killed_without_goodbye_is_down_after_the_threshold_and_up_when_it_returns",
    ) {
        return;
    }
    let lab = SwitchLab::new("hm", 2);
    let (a, b) = (lab.host(0), lab.host(1));
    let threshold = Duration::from_secs(9);
    let _a = observer(a, "9s");
    let b_daemon = announcer(b);
    let name = b.hostname.clone();
    wait_until("A sees B up", Duration::from_secs(30), || {
        machine_state(&a.env, &name).as_deref() == Some("up")
    });
    // Still up well past the threshold: the re-check keeps "last heard" current.
    std::thread::sleep(threshold * 2);
    assert_eq!(
        machine_state(&a.env, &name).as_deref(),
        Some("up"),
        "{:?}",
        machine(&a.env, &name)
    );

    let killed = SystemTime::now();
    kill_all(b);
    drop(b_daemon);
    wait_until("A marks B down", Duration::from_secs(30), || {
        machine_state(&a.env, &name).as_deref() == Some("down")
    });
    let lines = super::lines_of(&a.env, &name);
    let downs: Vec<&String> = lines.iter().filter(|l| l.contains("up → down")).collect();
    assert_eq!(downs.len(), 1, "{lines:#?}");
    assert!(
        downs[0].contains("not heard on mDNS for"),
        "not the threshold rule: {lines:#?}"
    );
    let after = line_time(downs[0])
        .duration_since(killed)
        .unwrap_or_default();
    assert!(
        after + Duration::from_secs(PERIOD_SECS) >= threshold,
        "down {after:?} after the kill, before threshold {threshold:?} minus one period: {lines:#?}"
    );

    let _b_again = announcer(b);
    wait_until("A sees B up again", Duration::from_secs(30), || {
        machine_state(&a.env, &name).as_deref() == Some("up")
    });
    let lines = super::lines_of(&a.env, &name);
    assert_eq!(
        lines.iter().filter(|l| l.contains("up → down")).count(),
        1,
        "{lines:#?}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("down → up")),
        "{lines:#?}"
    );
}

#[test]
fn a_goodbye_marks_the_machine_down_at_once() {
    if !root_or_skip("a_goodbye_marks_the_machine_down_at_once") {
        return;
    }
    let lab = SwitchLab::new("hg", 2);
    let (a, b) = (lab.host(0), lab.host(1));
    // A threshold far beyond the test's deadline: only the goodbye can make B down in time.
    let _a = observer(a, "1h");
    let mut b_daemon = announcer(b);
    let name = b.hostname.clone();
    wait_until("A sees B up", Duration::from_secs(30), || {
        machine_state(&a.env, &name).as_deref() == Some("up")
    });
    b_daemon
        .terminate(Duration::from_secs(15))
        .expect("B stops cleanly");
    wait_until(
        "A marks B down on its goodbye",
        Duration::from_secs(20),
        || machine_state(&a.env, &name).as_deref() == Some("down"),
    );
    let lines = super::lines_of(&a.env, &name);
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("up → down") && l.contains("said goodbye")),
        "{lines:#?}"
    );
}

#[test]
fn a_member_whose_heartbeat_fails_is_degraded_in_its_own_health() {
    if !root_or_skip("a_member_whose_heartbeat_fails_is_degraded_in_its_own_health") {
        return;
    }
    use crate::support::certmesh::{ca_under_daemon, fresh_code, join_from_b};
    let lab = crate::support::netlab::NetLab::new("hhb");
    let (mut ca_daemon, ca) = ca_under_daemon(&lab, &["--no-trust", "--json"]);
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(&lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    lab.b.env.install(&bin_dir().join("koi-health"), "health");
    let _b = lab.b.env.start_daemon(&[("KOI_TEST_HEARTBEAT_SECS", "2")]);
    let name = lab.b.hostname.clone();
    wait_until("B up in its own health", Duration::from_secs(30), || {
        machine_state(&lab.b.env, &name).as_deref() == Some("up")
    });
    ca_daemon.terminate(Duration::from_secs(10));
    wait_until(
        "B degraded by its failing heartbeat",
        Duration::from_secs(30),
        || machine_state(&lab.b.env, &name).as_deref() == Some("degraded"),
    );
    let lines = super::lines_of(&lab.b.env, &name);
    assert!(
        lines.last().is_some_and(
            |l| l.contains("up → degraded") && l.contains("heartbeat to the CA failing")
        ),
        "{lines:#?}"
    );
}
