//! koi-mdns under `koi daemon`, between two hosts of the namespace lab: on host A the daemon
//! supervises koi-mdns, `koi mdns announce` registers persistently and returns at once, and host B
//! keeps seeing the service after the announcing CLI has exited. `--no-daemon` status on A shows
//! a fresh one-shot plugin without the registration while the forwarded status shows it. SIGTERM
//! stops the daemon promptly, leaves no koi-mdns behind, and the goodbye reaches B's `--watch`.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{Lab, Proc, root_or_skip};

/// The TTL of the records mdns-sd announces for a service (SRV/TXT: 120 s). A removal seen well
/// before it comes from goodbye packets, not expiry.
const SHORTEST_TTL: Duration = Duration::from_secs(120);

fn has_web(line: &str, action: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| {
        v["action"] == action && v["instance"] == "web" && v["service_type"] == "_http._tcp"
    })
}

/// The announcements a `koi mdns status --json` report lists (`details.registrations`), and
/// the mode of the plugin that answered.
fn registrations(report: &Value) -> (&str, &[Value]) {
    let details = &report["details"];
    let list = details["registrations"]
        .as_array()
        .unwrap_or_else(|| panic!("no details.registrations in {report}"));
    (details["mode"].as_str().unwrap_or("?"), list.as_slice())
}

fn is_web(r: &Value) -> bool {
    r["instance"] == "web" && r["service_type"] == "_http._tcp"
}

/// Output of a finished command, for assertion messages.
fn describe(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `koi daemon` on `host` and waits until its control socket answers.
fn start_daemon(lab: &Lab, host: &support::Host) -> Proc {
    let daemon = lab.spawn_with_env(
        host,
        &["daemon"],
        &[
            // A fresh namespace has its own loopback, so the default port is free there.
            ("KOI_REST_BIND", "127.0.0.1:7240"),
            ("KOI_LOG", "info"),
        ],
    );
    // The banner comes before the plugins are up, and a forwarded command that arrives before
    // koi-mdns's handshake fails at once (the daemon's `daemon/manifest` does not wait), so wait
    // for the `koi daemon ready` log line (KOI_LOG=info), which follows every plugin's first start.
    let ready = daemon.wait_stderr(Duration::from_secs(20), |l| l.contains("koi daemon ready"));
    assert!(
        ready.is_some(),
        "koi daemon did not become ready:\n{}",
        daemon.stderr_text()
    );
    let socket = host.home.join("run").join("koi.sock");
    assert!(socket.exists(), "no control socket at {}", socket.display());
    daemon
}

#[test]
fn daemon_holds_the_announcement_after_the_cli_exits_and_says_goodbye_on_sigterm() {
    if !root_or_skip(
        "daemon_holds_the_announcement_after_the_cli_exits_and_says_goodbye_on_sigterm",
    ) {
        return;
    }
    let lab = Lab::pair();
    let mut daemon = start_daemon(&lab, lab.a());

    // Daemon mode: announce registers persistently and returns instead of waiting for Ctrl-C.
    let started = Instant::now();
    let out = lab.run(
        lab.a(),
        &[
            "mdns",
            "announce",
            "web",
            "_http._tcp",
            "8080",
            "--txt",
            "path=/x",
        ],
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    assert!(out.status.success(), "announce: {}", describe(&out));
    assert!(
        took < Duration::from_secs(15),
        "announce under the daemon must return, not hold: took {took:?}"
    );
    eprintln!("forwarded announce returned in {took:?}");

    // B sees it although the CLI that announced it is gone.
    let mut web = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while web.is_none() && Instant::now() < deadline {
        let out = lab.run(
            lab.b(),
            &["mdns", "discover", "_http._tcp", "--json", "--timeout", "2"],
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "discover on B: {}", describe(&out));
        let result: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("discover JSON: {e}: {}", describe(&out)));
        web = result["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["instance"] == "web").cloned());
    }
    let web = web.unwrap_or_else(|| {
        panic!(
            "B never saw `web` after the CLI exited; daemon log:\n{}",
            daemon.stderr_text()
        )
    });
    assert_eq!(web["port"], 8080, "{web}");
    assert_eq!(web["txt"]["path"], "/x", "{web}");
    assert!(
        web["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "10.77.0.1")),
        "{web}"
    );

    // A one-shot plugin (`--no-daemon`) holds nothing; the daemon's plugin holds `web`.
    let direct = lab.run(
        lab.a(),
        &["--no-daemon", "mdns", "status", "--json"],
        Duration::from_secs(20),
    );
    assert!(direct.status.success(), "{}", describe(&direct));
    let direct_json: Value = serde_json::from_slice(&direct.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", describe(&direct)));
    let (mode, held) = registrations(&direct_json);
    assert_eq!(mode, "one_shot", "{direct_json}");
    assert!(
        !held.iter().any(is_web),
        "a one-shot koi-mdns must not hold the daemon's registration: {direct_json}"
    );
    let forwarded = lab.run(
        lab.a(),
        &["mdns", "status", "--json"],
        Duration::from_secs(20),
    );
    assert!(forwarded.status.success(), "{}", describe(&forwarded));
    let forwarded_json: Value = serde_json::from_slice(&forwarded.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", describe(&forwarded)));
    let (mode, held) = registrations(&forwarded_json);
    assert_eq!(mode, "daemon", "{forwarded_json}");
    assert!(
        held.iter().any(is_web),
        "the daemon's koi-mdns must report `web`: {forwarded_json}"
    );

    // B watches; SIGTERM on A's daemon must end in goodbye packets, not expiry.
    let watch = lab.spawn(
        lab.b(),
        &["mdns", "discover", "_http._tcp", "--watch", "--json"],
    );
    assert!(
        watch
            .wait_stdout(Duration::from_secs(15), |l| has_web(l, "+"))
            .is_some(),
        "watch on B did not report `+`: {}\n{}",
        watch.stdout_text(),
        watch.stderr_text()
    );
    let stopped = Instant::now();
    daemon.terminate();
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "koi daemon did not exit within 5 s of SIGTERM:\n{}",
        daemon.stderr_text()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "koi daemon: {status:?}\n{}",
        daemon.stderr_text()
    );
    // The plugin is stopped with the daemon, not orphaned.
    let mut left = lab.processes(lab.a());
    let settle = Instant::now() + Duration::from_secs(2);
    while left.iter().any(|(_, c)| c == "koi-mdns") && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
        left = lab.processes(lab.a());
    }
    assert!(
        !left.iter().any(|(_, c)| c == "koi-mdns"),
        "koi-mdns outlived the daemon: {left:?}"
    );
    let (seen, _) = watch
        .wait_stdout(Duration::from_secs(30), |l| has_web(l, "-"))
        .unwrap_or_else(|| {
            panic!(
                "watch on B never reported `-`:\n{}\ndaemon log:\n{}",
                watch.stdout_text(),
                daemon.stderr_text()
            )
        });
    let latency = seen.duration_since(stopped);
    eprintln!("removal seen {latency:?} after SIGTERM on A (record TTL {SHORTEST_TTL:?})");
    assert!(
        latency < Duration::from_secs(15),
        "removal took {latency:?}: that is expiry, not the goodbye"
    );
    watch.interrupt();
}
