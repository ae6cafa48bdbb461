//! The SDK runtime over the real protocol: a Rust fixture plugin (`koi-sdkrt`, built from
//! tests/fixtures/rust) driven through its stdin/stdout by a minimal host written here. It proves
//! that a plugin keeps answering `status` while CPU-heavy `Method::blocking` calls run (and that a
//! plain async method doing the same work starves it), that a failing service is restarted with
//! backoff and shown in `status`, and that shutdown gives services their declared grace, stops
//! one that overruns it, and leaves no process behind.

use crate::support::rawhost::RawHost;
use crate::support::{assert_process_gone, example, poll_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The daemon supervisor's ping deadline: a ping not answered within it restarts the plugin.
const PING_DEADLINE: Duration = Duration::from_secs(5);

/// A running `koi-sdkrt` with the test as its host.
struct Fixture {
    host: RawHost,
    /// The manifest from the handshake.
    manifest: Value,
}

impl Fixture {
    /// Starts the fixture with `env` and performs the handshake in `mode` (`daemon`/`one_shot`).
    fn start(mode: &str, env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        env.push(("KOI_LOG", "warn"));
        let mut host = RawHost::spawn(&example("koi-sdkrt"), &env);
        let result = host.initialize(mode, &[]);
        Self {
            host,
            manifest: result["manifest"].clone(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.host.home().join("sdkrt")
    }
}

/// What happened to the pings sent every 200 ms while three 3-second spins ran.
struct Pings {
    sent: usize,
    /// Pings answered while none of the three spins had answered yet.
    answered_while_all_spins_ran: usize,
    /// Pings that got no answer within the supervisor's deadline.
    missed: usize,
}

/// Starts three concurrent 3-second CPU-bound calls of `method` (more than the plugin's two
/// workers) and pings `status` every 200 ms until all three have answered.
fn ping_during_spins(fixture: &mut Fixture, method: &str, ping_limit: Duration) -> Pings {
    let spins: Vec<u64> = (0..3)
        .map(|_| fixture.host.request(method, json!({"ms": 3000})))
        .collect();
    let mut spins_done = 0;
    let mut pings = Pings {
        sent: 0,
        answered_while_all_spins_ran: 0,
        missed: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while spins_done < spins.len() {
        assert!(Instant::now() < deadline, "the spins never finished");
        let ping = fixture.host.request("status", json!({}));
        pings.sent += 1;
        let ping_deadline = Instant::now() + ping_limit;
        let mut answered = false;
        while !answered {
            let left = ping_deadline.saturating_duration_since(Instant::now());
            let Some(frame) = fixture.host.next_frame(left) else {
                pings.missed += 1;
                break;
            };
            let id = frame["id"].as_u64();
            if id == Some(ping) {
                answered = true;
                if spins_done == 0 {
                    pings.answered_while_all_spins_ran += 1;
                }
            } else if id.is_some_and(|id| spins.contains(&id)) {
                assert!(frame.get("error").is_none(), "a spin failed: {frame}");
                spins_done += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pings
}

#[test]
fn status_is_answered_every_200_ms_while_three_blocking_cpu_bound_calls_run() {
    let mut fixture = Fixture::start("daemon", &[]);
    let pings = ping_during_spins(&mut fixture, "spin", PING_DEADLINE);
    assert_eq!(
        pings.missed, 0,
        "of {} pings, some went unanswered",
        pings.sent
    );
    // Three seconds of spinning leave room for about fifteen pings; most must be answered while
    // the spins still hold their threads.
    assert!(
        pings.answered_while_all_spins_ran >= 3,
        "only {} of {} pings were answered while the spins ran",
        pings.answered_while_all_spins_ran,
        pings.sent
    );
    assert!(
        !fixture
            .host
            .stderr_text()
            .contains("held a protocol worker"),
        "the watchdog reported a stall: {}",
        fixture.host.stderr_text()
    );
}

/// The same CPU work in a plain async method holds both protocol workers: no ping is answered
/// until a spin ends, and the debug-build watchdog names the method.
#[test]
fn a_plain_async_cpu_bound_method_starves_status_and_the_watchdog_names_it() {
    let mut fixture = Fixture::start("daemon", &[]);
    let pings = ping_during_spins(&mut fixture, "spin_async", Duration::from_secs(30));
    assert!(
        pings.answered_while_all_spins_ran < 3,
        "{} pings were answered while async spins held the workers",
        pings.answered_while_all_spins_ran
    );
    let stderr = fixture.host.stderr_text();
    assert!(
        stderr.contains("`spin_async` held a protocol worker for")
            && stderr.contains("ctx.blocking / Method::blocking"),
        "no watchdog report in: {stderr}"
    );
}

/// Polls `status` until `ready` accepts the report (within 30 s).
fn status_until(fixture: &mut Fixture, ready: impl Fn(&Value) -> bool) -> Value {
    poll_until(
        "status to show it",
        Duration::from_millis(50),
        || fixture.host.call("status", json!({}), PING_DEADLINE),
        ready,
    )
}

#[test]
fn a_failing_service_is_restarted_with_backoff_and_shown_in_status() {
    let env = [("SDKRT_FLAKY", "1"), ("SDKRT_BACKOFF_MS", "100")];
    let mut fixture = Fixture::start("daemon", &env);
    let report = status_until(&mut fixture, |r| {
        let flaky = &r["details"]["daemon_services"]["flaky"];
        flaky["state"] == "restarting" && flaky["restarts"].as_u64().is_some_and(|n| n >= 3)
    });
    let flaky = &report["details"]["daemon_services"]["flaky"];
    assert!(
        flaky["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("flaky broke on attempt ")),
        "{report}"
    );
    // Backoff 100 ms doubling, capped at 4 × 100 ms.
    assert!(
        flaky["next_attempt_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 400),
        "{report}"
    );
    assert_eq!(report["state"], "degraded", "{report}");
    assert!(
        report["summary"]
            .as_str()
            .is_some_and(|s| s.contains("`flaky`")),
        "{report}"
    );

    // Services run only under the daemon.
    let mut one_shot = Fixture::start("one_shot", &env);
    let report = one_shot.host.call("status", json!({}), PING_DEADLINE);
    assert_eq!(report["state"], "ok", "{report}");
    assert!(report["details"].get("services").is_none(), "{report}");
}

/// Starts a fixture whose `drain` service needs `drain_ms` after cancellation, with a grace of
/// `grace_ms`, and waits until the service runs.
fn draining(drain_ms: &str, grace_ms: &str) -> Fixture {
    let env = [("SDKRT_DRAIN_MS", drain_ms), ("SDKRT_GRACE_MS", grace_ms)];
    let fixture = Fixture::start("daemon", &env);
    let started = fixture.data_dir().join("started");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the drain service never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    fixture
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn shutdown_gives_a_service_its_declared_grace_to_drain() {
    let mut fixture = draining("1500", "3000");
    assert_eq!(fixture.manifest["shutdown_grace_ms"], 3000);
    assert_eq!(mode_of(&fixture.data_dir()), 0o700);
    fixture
        .host
        .call("shutdown", json!({}), Duration::from_secs(30));
    let pid = fixture.host.pid();
    assert!(
        fixture.host.exited_within(Duration::from_secs(30)),
        "koi-sdkrt did not exit"
    );
    assert_process_gone(i32::try_from(pid).expect("pid"));
    assert!(
        fixture.data_dir().join("drained").exists(),
        "the service was stopped before it drained"
    );
}

#[test]
fn a_service_still_running_after_the_grace_is_stopped_and_no_process_is_left() {
    let mut fixture = draining("20000", "1000");
    // 1 s is the default grace, so the manifest leaves the field out.
    assert!(
        fixture
            .manifest
            .get("shutdown_grace_ms")
            .is_none_or(Value::is_null)
    );
    let pid = fixture.host.pid();
    // SIGTERM, as the host sends after the grace it waited.
    let target = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(target, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(
        fixture.host.exited_within(Duration::from_secs(15)),
        "koi-sdkrt kept running after its grace"
    );
    assert_process_gone(i32::try_from(pid).expect("pid"));
    assert!(!fixture.data_dir().join("drained").exists());
    assert!(
        fixture.host.stderr_text().contains("stopping them"),
        "no log line about stopping the overrunning service: {}",
        fixture.host.stderr_text()
    );
}
