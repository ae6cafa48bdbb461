//! Service checks under the daemon: HTTP thresholds with exactly the transitions they allow, a
//! flapping server, TCP open and closed, a server that never answers (timeout, daemon still
//! responsive), and HTTPS against a server holding a certificate from the mesh CA.

use super::{ALTERNATE, HANG, TestServer, add, daemon_env, lines_of, service_state, wait_service};
use crate::support::wait_until;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn http_goes_down_after_fail_after_and_up_after_recover_after_with_two_log_lines() {
    let server = TestServer::start(200);
    // A subscriber of health.changed, to see each transition published as an event too.
    let env = crate::support::KoiEnv::new()
        .with_health()
        .with_fixture("healthwatch");
    let _daemon = env.start_daemon(&[]);
    let url = server.url();
    add(
        &env,
        &[
            "web",
            "--http",
            &url,
            "--interval",
            "1s",
            "--timeout",
            "500ms",
            "--fail-after",
            "3",
            "--recover-after",
            "2",
        ],
    );
    wait_service(&env, "web", "up");
    server.set(502);
    wait_service(&env, "web", "down");
    server.set(200);
    wait_service(&env, "web", "up");
    let lines = lines_of(&env, "web");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].contains("pending → up"), "{lines:#?}");
    assert!(
        lines[1].contains("up → down")
            && lines[1].contains("HTTP 502")
            && lines[1].contains("3 failures in a row"),
        "{lines:#?}"
    );
    assert!(
        lines[2].contains("down → up") && lines[2].contains("2 successes in a row"),
        "{lines:#?}"
    );
    // The same two changes in `koi health log`.
    let log = env.run(&["health", "log", "--name", "web", "--last", "2", "--json"]);
    log.expect_code(0);
    let t = log.json()["transitions"].clone();
    assert_eq!(t.as_array().map(Vec::len), Some(2), "{t:#}");
    assert_eq!(t[0]["new"], "down");
    assert_eq!(t[1]["new"], "up");
    // The same three transitions as health.changed events.
    let events = env.pids.join("healthwatch.events");
    wait_until(
        "three health.changed events",
        Duration::from_secs(10),
        || std::fs::read_to_string(&events).is_ok_and(|s| s.lines().count() >= 3),
    );
    let seen: Vec<(String, String)> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|e| e["topic"] == "health.changed" && e["payload"]["name"] == "web")
        .map(|e| {
            let p = &e["payload"];
            (
                p["old"].as_str().unwrap_or_default().to_owned(),
                p["new"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want = [("pending", "up"), ("up", "down"), ("down", "up")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(seen, want, "health.changed events");
}

#[test]
fn a_flapping_server_never_makes_more_transitions_than_the_thresholds_allow() {
    let server = TestServer::start(ALTERNATE);
    let (env, _daemon) = daemon_env();
    let url = server.url();
    add(
        &env,
        &[
            "flap",
            "--http",
            &url,
            "--interval",
            "1s",
            "--timeout",
            "500ms",
            "--fail-after",
            "2",
            "--recover-after",
            "2",
        ],
    );
    wait_until("ten alternating answers", Duration::from_secs(40), || {
        server.hits.load(Ordering::SeqCst) >= 10
    });
    let lines = lines_of(&env, "flap");
    // Only the first settling out of pending: 200/502/200/… never reaches 2 in a row.
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("pending → up"), "{lines:#?}");
}

#[test]
fn tcp_open_is_up_and_closed_is_down() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let open_port = open.local_addr().expect("addr").port();
    let closed_port = crate::support::free_port();
    let (env, _daemon) = daemon_env();
    let open_target = format!("127.0.0.1:{open_port}");
    let closed_target = format!("127.0.0.1:{closed_port}");
    add(
        &env,
        &[
            "open",
            "--tcp",
            &open_target,
            "--interval",
            "1s",
            "--fail-after",
            "1",
        ],
    );
    add(
        &env,
        &[
            "closed",
            "--tcp",
            &closed_target,
            "--interval",
            "1s",
            "--fail-after",
            "1",
        ],
    );
    wait_service(&env, "open", "up");
    wait_service(&env, "closed", "down");
    let closed = lines_of(&env, "closed");
    assert!(
        closed[0].contains("pending → down") && closed[0].contains("refused"),
        "{closed:#?}"
    );
    drop(open);
}

#[test]
fn a_server_that_never_answers_times_out_and_the_daemon_stays_responsive() {
    let server = TestServer::start(HANG);
    let (env, _daemon) = daemon_env();
    let url = server.url();
    add(
        &env,
        &[
            "slow",
            "--http",
            &url,
            "--interval",
            "2s",
            "--timeout",
            "700ms",
            "--fail-after",
            "1",
        ],
    );
    wait_service(&env, "slow", "down");
    let lines = lines_of(&env, "slow");
    assert!(lines[0].contains("no answer within 700ms"), "{lines:#?}");
    // While checks hang on the server, every call is still answered.
    for _ in 0..5 {
        assert_eq!(service_state(&env, "slow").as_deref(), Some("down"));
        env.run(&["status"]).expect_code(0);
    }
}

#[test]
fn https_against_a_server_with_a_mesh_certificate_passes() {
    if !crate::support::root_or_skip("https_against_a_server_with_a_mesh_certificate_passes") {
        return;
    }
    // In a namespace, so the certificate can name a LAN address inside the mesh scope.
    let lab = crate::support::netlab::SwitchLab::new("hh", 1);
    let host = lab.host(0);
    let env = &host.env;
    env.install(&crate::support::certmesh::certmesh_bin(), "certmesh");
    let pass = crate::support::certmesh::write_passphrase(env);
    crate::support::certmesh::create(env, &pass, &["--no-trust"]).expect_code(0);
    // The CA's own certificate names its host and its lab address.
    let dir = crate::support::certmesh::cert_dir(host);
    assert!(
        dir.join("ca.pem").exists(),
        "certmesh wrote no ca.pem in {}",
        dir.display()
    );
    env.install(&crate::support::bin_dir().join("koi-health"), "health");
    let port = crate::support::free_port();
    let script = format!(
        "import http.server, ssl\n\
         s = http.server.HTTPServer(('{}', {port}), http.server.SimpleHTTPRequestHandler)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('{}', '{}')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()\n",
        host.ip,
        dir.join("fullchain.pem").display(),
        dir.join("key.pem").display()
    );
    let mut py = host
        .command("python3", &["-c", &script])
        .current_dir(env.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 https server");
    wait_until("the https server listens", Duration::from_secs(20), || {
        host.command(
            "python3",
            &[
                "-c",
                &format!(
                    "import socket; socket.create_connection(('{}', {port}), 1)",
                    host.ip
                ),
            ],
        )
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    });
    let _daemon = env.start_daemon(&[]);
    let url = format!("https://{}:{port}/", host.ip);
    add(
        env,
        &[
            "tls",
            "--http",
            &url,
            "--interval",
            "1s",
            "--fail-after",
            "1",
        ],
    );
    wait_until("the https check settles", Duration::from_secs(30), || {
        service_state(env, "tls").as_deref() != Some("pending")
    });
    let _ = py.kill();
    let _ = py.wait();
    let lines = lines_of(env, "tls");
    assert!(
        lines[0].contains("pending → up") && lines[0].contains("HTTP 200"),
        "{lines:#?}"
    );
}

/// `/etc/netns/<ns>/hosts` for one lab namespace (`ip netns exec` mounts it over /etc/hosts);
/// removed when dropped.
struct NetnsHosts(std::path::PathBuf);

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_lan_name_that_resolves_to_a_public_address_is_refused_at_run_time() {
    if !crate::support::root_or_skip(
        "a_lan_name_that_resolves_to_a_public_address_is_refused_at_run_time",
    ) {
        return;
    }
    let lab = crate::support::netlab::SwitchLab::new("hr", 1);
    let host = lab.host(0);
    let dir = std::path::Path::new("/etc/netns").join(&host.ns);
    std::fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
    let _hosts = NetnsHosts(dir.clone());
    // 203.0.113.5 is TEST-NET-3: public, and never contacted (the check refuses first).
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.1 localhost\n203.0.113.5 evil.lan\n",
    )
    .expect("hosts");
    let env = &host.env;
    env.install(&crate::support::bin_dir().join("koi-health"), "health");
    let _daemon = env.start_daemon(&[]);
    add(
        env,
        &[
            "tcp",
            "--tcp",
            "evil.lan:80",
            "--interval",
            "1s",
            "--fail-after",
            "1",
        ],
    );
    add(
        env,
        &[
            "web",
            "--http",
            "http://evil.lan/",
            "--interval",
            "1s",
            "--fail-after",
            "1",
        ],
    );
    wait_service(env, "tcp", "down");
    wait_service(env, "web", "down");
    for name in ["tcp", "web"] {
        let lines = lines_of(env, name);
        assert!(
            lines[0].contains("evil.lan resolves to no LAN address")
                && lines[0].contains("--allow-remote"),
            "{lines:#?}"
        );
    }
}
