//! Denial of service on the certmesh API (issue 9, finding 8), against a real daemon in a
//! two-namespace lab: one attacker address on B holds far more idle TCP connections than the API
//! serves at once, and a legitimate client on B's other address must still be answered; idle
//! sockets that never start a TLS handshake are closed; and the daemon's log does not get a line
//! per dropped connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::support::certmesh::{certmesh_bin, create, wait_for_api, write_passphrase};
use crate::support::netlab::{LabHost, NetLab};
use crate::support::root_or_skip;

/// Holds `n` TCP connections from `src` to `dst:5641` without ever sending a byte; each one the
/// server closes is reopened, until `seconds` pass. Prints `ready` once all `n` are connected,
/// then `closed C opened O` at the end.
const FLOOD: &str = r#"
import select, socket, sys, time
src, dst, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def connect():
    s = socket.socket()
    s.bind((src, 0))
    s.connect((dst, 5641))
    s.setblocking(False)
    return s
socks = [connect() for _ in range(n)]
print("ready", flush=True)
closed, opened, end = 0, n, time.time() + secs
while time.time() < end:
    readable, _, _ = select.select(socks, [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:
            closed += 1
            socks.remove(s)
            s.close()
            time.sleep(0.01)
            try:
                socks.append(connect())
                opened += 1
            except OSError:
                pass
print("closed", closed, "opened", opened, flush=True)
"#;

/// Opens `n` idle TCP connections from `src` and waits (up to `seconds`) until the server has
/// closed every one. Prints `closed C of N`.
const IDLE: &str = r#"
import select, socket, sys, time
src, dst, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.socket()
    s.bind((src, 0))
    s.connect((dst, 5641))
    socks.append(s)
closed, end = 0, time.time() + secs
while socks and time.time() < end:
    readable, _, _ = select.select(socks, [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:
            closed += 1
            socks.remove(s)
            s.close()
print("closed", closed, "of", n, flush=True)
"#;

fn python(host: &LabHost, script: &str, args: &[&str]) -> Child {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    host.command("python3", &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// `curl` for the health route from B's own (first) address. Returns (exit ok, body).
fn health(lab: &NetLab) -> (bool, String) {
    let out = lab
        .b
        .command(
            "curl",
            &[
                "-sSk",
                "--max-time",
                "10",
                "-w",
                "\ntime_total=%{time_total}s",
                &format!("https://{}:5641/v1/certmesh/health", lab.a.ip),
            ],
        )
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn idle_connections_from_one_address_do_not_starve_the_others() {
    if !root_or_skip("idle_connections_from_one_address_do_not_starve_the_others") {
        return;
    }
    let lab = NetLab::new("dos");
    lab.a.env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&lab.a.env);
    let daemon = lab.a.env.start_daemon(&[("KOI_LOG", "info")]);
    create(&lab.a.env, &pass_file, &["--no-trust", "--json"]).expect_code(0);
    wait_for_api(&lab.b, &lab.a.ip);

    // A second address on B's side of the link: the attacker.
    let (prefix, _) = lab.b.ip.rsplit_once('.').expect("dotted quad");
    let attacker = format!("{prefix}.3");
    let added = std::process::Command::new("ip")
        .args(["-n", &lab.b.ns, "addr", "add"])
        .arg(format!("{attacker}/24"))
        .args(["dev", "veth0"])
        .status()
        .expect("ip addr add");
    assert!(added.success(), "could not add {attacker} in {}", lab.b.ns);

    // 80 idle connections (more than the API's 64), held and reopened for 12 s.
    let mut flood = python(&lab.b, FLOOD, &[&attacker, &lab.a.ip, "80", "12"]);
    let mut lines = BufReader::new(flood.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "ready", "the flood did not connect");

    // The legitimate client, from B's own address, is answered every time.
    for attempt in 0..3 {
        let (ok, body) = health(&lab);
        eprintln!(
            "health during the flood: {}",
            body.lines().last().unwrap_or("")
        );
        assert!(
            ok && body.contains("\"status\":\"ok\""),
            "health attempt {attempt} during the flood failed: {body}"
        );
    }
    let summary = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = flood.wait();
    eprintln!("flood from {attacker}: {summary}");
    let counts: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.first().is_some_and(|closed| *closed > 0),
        "the server never closed a flood connection: {summary:?}"
    );

    // Sockets that never start a TLS handshake are closed by the server.
    let idle = python(&lab.b, IDLE, &[&attacker, &lab.a.ip, "8", "30"]);
    let out = idle.wait_with_output().expect("idle script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "closed 8 of 8",
        "idle handshakes stayed open: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(health(&lab).0, "health after the flood failed");

    // Thousands of drops, yet no line per dropped connection above debug.
    let log = daemon.log_text();
    let drop_lines = log
        .lines()
        .filter(|l| l.contains("certmesh API") && l.contains("dropped"))
        .count();
    assert!(
        drop_lines <= 1,
        "{drop_lines} log lines about dropped connections:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("certmesh API")),
        "a warn-level line about the API: {log}"
    );
}
