//! The member's heartbeat (issue 11, item 5) end to end, in a two-namespace lab with real
//! daemons and the debug-only `KOI_TEST_HEARTBEAT_SECS=2`: beats succeed and `status` shows the
//! last beat and the CA's roster version; when the CA's daemon stops, the member's `status` shows
//! the failure and a subscriber (fixture koi-beatwatch) receives `certmesh.heartbeat` with
//! `ok: false`; when the CA comes back the heartbeat recovers; and a CA of another mesh on the
//! same address fails the pin check with a reason naming both fingerprints.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::certmesh::{
    LabCa, ca_under_daemon, create, fresh_code, join_from_b, wait_for_api,
};
use crate::support::netlab::NetLab;
use crate::support::{DaemonProc, KoiEnv, fixture, root_or_skip};

/// Polls `sample` every 250 ms until it gives something, for at most `limit`.
#[track_caller]
fn poll_until<T>(what: &str, limit: Duration, mut sample: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = sample() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

const BEAT_ENV: (&str, &str) = ("KOI_TEST_HEARTBEAT_SECS", "2");

/// A CA on A, B joined, B's daemon beating every 2 s with koi-beatwatch subscribed.
fn mesh_with_beating_member(lab: &NetLab) -> (DaemonProc, LabCa, DaemonProc) {
    let (a, ca) = ca_under_daemon(lab, &["--no-trust", "--json"]);
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    lab.b.env.install(&fixture("koi-beatwatch"), "beatwatch");
    let b = lab.b.env.start_daemon(&[BEAT_ENV]);
    (a, ca, b)
}

/// `details.heartbeat` of B's `certmesh status`, with the whole answer.
fn heartbeat_of(env: &KoiEnv) -> (serde_json::Value, serde_json::Value) {
    let run = env.run(&["certmesh", "status", "--json"]);
    let json = run.json();
    (json["details"]["heartbeat"].clone(), json)
}

/// The `certmesh.heartbeat` deliveries the subscriber recorded so far.
fn events(env: &KoiEnv) -> Vec<serde_json::Value> {
    std::fs::read_to_string(env.pids.join("beatwatch.events"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect()
}

/// The audit sequence number A's roster records (what the CA reports as the roster version).
fn roster_version_on(home: &Path) -> u64 {
    let roster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("certmesh/roster.json")).expect("roster"))
            .expect("roster JSON");
    roster["mesh"]["audit_head"]["seq"]
        .as_u64()
        .expect("audit head")
}

#[test]
fn a_member_heartbeats_reports_the_ca_going_down_and_recovers_when_it_returns() {
    if !root_or_skip("a_member_heartbeats_reports_the_ca_going_down_and_recovers_when_it_returns") {
        return;
    }
    let lab = NetLab::new("hb");
    let (mut a, _ca, _b) = mesh_with_beating_member(&lab);
    let endpoint_host = lab.a.ip.clone();

    // Beats succeed: status shows the last beat and the CA's roster version.
    let version = roster_version_on(&lab.a.env.home);
    assert!(version >= 1, "create and join are audited");
    let (hb, status) = poll_until(
        "a successful heartbeat with the roster version",
        Duration::from_secs(30),
        || {
            let (hb, status) = heartbeat_of(&lab.b.env);
            (hb["ok"] == true && hb["roster_version"] == version).then_some((hb, status))
        },
    );
    assert!(
        hb["at"].is_string() && hb["last_ok_at"].is_string(),
        "{status}"
    );
    assert_eq!(hb["consecutive_failures"], 0, "{status}");
    assert!(
        hb["ca_endpoint"]
            .as_str()
            .is_some_and(|e| e.contains(&endpoint_host)),
        "{status}"
    );
    assert_eq!(status["state"], "ok", "{status}");
    poll_until("an ok event", Duration::from_secs(30), || {
        events(&lab.b.env)
            .iter()
            .any(|e| e["topic"] == "certmesh.heartbeat" && e["payload"]["ok"] == true)
            .then_some(())
    });

    // The CA's daemon stops: status shows the failure, the subscriber gets ok=false.
    a.terminate(Duration::from_secs(10));
    let (hb, status) = poll_until(
        "a failed heartbeat in status",
        Duration::from_secs(30),
        || {
            let (hb, status) = heartbeat_of(&lab.b.env);
            (hb["ok"] == false).then_some((hb, status))
        },
    );
    assert!(hb["consecutive_failures"].as_u64() >= Some(1), "{status}");
    assert!(
        hb["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&endpoint_host)),
        "the reason names the CA: {status}"
    );
    assert!(hb["last_ok_at"].is_string(), "{status}");
    assert_eq!(status["state"], "degraded", "{status}");
    assert!(
        status["summary"]
            .as_str()
            .is_some_and(|s| s.contains("HEARTBEAT FAILING")),
        "{status}"
    );
    let failed = poll_until("an ok=false event", Duration::from_secs(30), || {
        events(&lab.b.env)
            .into_iter()
            .find(|e| e["payload"]["ok"] == false)
    });
    assert_eq!(failed["topic"], "certmesh.heartbeat", "{failed}");
    let payload = &failed["payload"];
    assert!(
        payload["reason"].is_string() && payload["at"].is_string(),
        "{failed}"
    );
    assert_eq!(payload["host"], lab.b.hostname.as_str(), "{failed}");
    assert!(payload["roster_version"].is_null(), "{failed}");
    // Still failing: later beats are published too (health needs "still failing").
    poll_until("a second failed beat", Duration::from_secs(30), || {
        events(&lab.b.env)
            .iter()
            .any(|e| e["payload"]["consecutive_failures"].as_u64() >= Some(2))
            .then_some(())
    });

    // The CA comes back (locked: the roster is still served): the heartbeat recovers.
    let _a = lab.a.env.start_daemon(&[]);
    wait_for_api(&lab.a, &lab.a.ip);
    let before = events(&lab.b.env).len();
    let (hb, status) = poll_until("a recovered heartbeat", Duration::from_secs(30), || {
        let (hb, status) = heartbeat_of(&lab.b.env);
        (hb["ok"] == true).then_some((hb, status))
    });
    assert_eq!(hb["consecutive_failures"], 0, "{status}");
    assert_eq!(status["state"], "ok", "{status}");
    poll_until(
        "an ok event after the failures",
        Duration::from_secs(30),
        || {
            events(&lab.b.env)[before..]
                .iter()
                .any(|e| e["payload"]["ok"] == true)
                .then_some(())
        },
    );
}

#[test]
fn a_ca_of_another_mesh_on_the_same_address_fails_the_heartbeats_pin_check() {
    if !root_or_skip("a_ca_of_another_mesh_on_the_same_address_fails_the_heartbeats_pin_check") {
        return;
    }
    let lab = NetLab::new("hp");
    let (mut a, ca, _b) = mesh_with_beating_member(&lab);
    poll_until("a successful heartbeat", Duration::from_secs(30), || {
        (heartbeat_of(&lab.b.env).0["ok"] == true).then_some(())
    });

    // Another mesh on A's address: the first one's state moved aside, a new one created.
    a.terminate(Duration::from_secs(10));
    let home = &lab.a.env.home;
    for dir in ["certmesh", "certs"] {
        std::fs::rename(home.join(dir), home.join(format!("{dir}.first-mesh"))).expect("move");
    }
    let _a = lab.a.env.start_daemon(&[]);
    let created = create(&lab.a.env, &ca.pass_file, &["--no-trust", "--json"]);
    created.expect_code(0);
    let other = created.json()["mesh"]["ca_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_ne!(other, ca.fingerprint);
    wait_for_api(&lab.a, &lab.a.ip);

    let (hb, status) = poll_until("the pin check failing", Duration::from_secs(30), || {
        let (hb, status) = heartbeat_of(&lab.b.env);
        (hb["ok"] == false).then_some((hb, status))
    });
    let reason = hb["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&other) && reason.contains(&ca.fingerprint) && reason.contains("pinned"),
        "the reason names the CA's fingerprint and the pinned one: {status}"
    );
    poll_until(
        "an ok=false event for the pin",
        Duration::from_secs(30),
        || {
            events(&lab.b.env)
                .iter()
                .any(|e| {
                    e["payload"]["ok"] == false
                        && e["payload"]["reason"]
                            .as_str()
                            .is_some_and(|r| r.contains("pinned"))
                })
                .then_some(())
        },
    );
}
