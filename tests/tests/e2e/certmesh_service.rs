//! koi-certmesh's daemon-mode API as an SDK service (`Plugin::service`): when it cannot start
//! serving (its port is taken), the SDK restarts it with backoff and `koi certmesh status` shows
//! the service failing and why; once the port is free it serves without a daemon restart. Runs on
//! loopback only (no lab, no koi-mdns: nothing is multicast).

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::KoiEnv;
use crate::support::certmesh::{certmesh_bin, create, write_passphrase};

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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = details(env);
        if ready(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s; last status details: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_api_service_is_retried_with_backoff_while_its_port_is_taken_and_serves_once_it_is_free() {
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(&env);
    create(&env, &pass, &["--no-trust"]).expect_code(0);

    // Another program holds the API's port when the daemon starts.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let bind = squatter.local_addr().expect("address").to_string();
    let _daemon = env.start_daemon(&[("KOI_CERTMESH_API_BIND", bind.as_str())]);

    let failing = wait_for(
        &env,
        "the api service restarting after a failed start",
        |d| {
            d["services"]["api"]["state"] == "restarting"
                && d["services"]["api"]["restarts"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
        },
    );
    let why = failing["services"]["api"]["last_error"]
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
        d["services"]["api"]["state"] == "running" && d["api"]["listening"] == bind.as_str()
    });
    assert!(serving["api"]["error"].is_null(), "{serving:#}");
    TcpStream::connect(&bind).expect("the CA's API accepts connections on its port");
}
