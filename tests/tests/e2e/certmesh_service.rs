//! koi-certmesh's daemon-mode API as an SDK service (`Plugin::service`): when it cannot start
//! serving (its port is taken), the SDK restarts it with backoff and `koi certmesh status` shows
//! the service failing and why; once the port is free it serves without a daemon restart. At
//! shutdown the API stops accepting but finishes the request in flight within the plugin's grace.
//! Runs on loopback only (no lab, no koi-mdns: nothing is multicast).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::certmesh::{certmesh_pid, local_ca};
use crate::support::{KoiEnv, free_port, poll_until};

/// `koi certmesh status --json` from the daemon: its `details`.
fn details(env: &KoiEnv) -> serde_json::Value {
    let run = env.run(&["certmesh", "status", "--json"]);
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .map(|v| v["details"].clone())
        .unwrap_or_default()
}

/// Polls `details` until `ready` holds (within 30 s); returns the last answer.
fn wait_for(
    env: &KoiEnv,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll_until(what, Duration::from_millis(100), || details(env), ready)
}

#[test]
fn the_api_service_is_retried_with_backoff_while_its_port_is_taken_and_serves_once_it_is_free() {
    let (env, _pass) = local_ca();

    // Another program holds the API's port when the daemon starts.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let bind = squatter.local_addr().expect("address").to_string();
    let _daemon = env.start_daemon(&[("KOI_CERTMESH_API_BIND", bind.as_str())]);

    let failing = wait_for(
        &env,
        "the api service restarting after a failed start",
        |d| {
            d["daemon_services"]["api"]["state"] == "restarting"
                && d["daemon_services"]["api"]["restarts"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
        },
    );
    let why = failing["daemon_services"]["api"]["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(
        why.contains(&bind),
        "the failure names the port: {failing:#}"
    );
    assert!(
        failing["api"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&bind)),
        "details.api.error says why the API is not serving: {failing:#}"
    );

    // The port comes free: a later attempt serves, without restarting the daemon or the plugin.
    drop(squatter);
    let serving = wait_for(&env, "the api service serving once the port is free", |d| {
        d["daemon_services"]["api"]["state"] == "running" && d["api"]["listening"] == bind.as_str()
    });
    assert!(serving["api"]["error"].is_null(), "{serving:#}");
    TcpStream::connect(&bind).expect("the CA's API accepts connections on its port");
}

/// Whether a TCP connection to `port` on loopback is established, with nothing left unread on
/// either side (the server has taken in everything the client sent so far).
fn connection_settled(port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<(u64, u64)> = text
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{port}")))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    // Both ends of the one connection, each with empty receive and send queues.
    ours.len() == 2 && ours.iter().all(|&(recv, send)| recv == 0 && send == 0)
}

#[test]
fn shutdown_stops_accepting_but_answers_the_join_request_in_flight() {
    let (env, _pass) = local_ca();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let _daemon = env.start_daemon(&[("KOI_CERTMESH_API_BIND", bind.as_str())]);
    wait_for(&env, "the API serving", |d| {
        d["api"]["listening"] == bind.as_str()
    });

    // A join request whose body arrives in two parts: the head and the first part now, the rest
    // only once the plugin has been told to stop.
    let mut curl = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-T",
            "-",
            &format!("https://{bind}/v1/certmesh/join"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut body = curl.stdin.take().expect("curl stdin");
    body.write_all(br#"{"hostname": "late-member", "code": "000000", "#)
        .expect("first part");
    body.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connection_settled(port) {
        assert!(Instant::now() < deadline, "curl never connected to {bind}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the head and first part reach the server's HTTP layer (loopback: well within this).
    std::thread::sleep(Duration::from_millis(500));

    let pid = certmesh_pid(&env);
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .expect("SIGTERM koi-certmesh");
    // Stopping, it accepts no new connection...
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&bind).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the API still accepts connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...but the request it was reading is finished and answered.
    body.write_all(br#""csr_pem": "not a CSR"}"#)
        .expect("rest of the body");
    drop(body);
    let out = curl.wait_with_output().expect("curl");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        answer["reason"].is_string() && answer["error"].is_string(),
        "the join in flight at shutdown got its answer (curl {:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
}
