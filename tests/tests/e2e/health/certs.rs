//! The certificate rule end to end (issue 14: "a certificate expiring within 7 days makes the
//! machine degraded; an expired certificate is a failure"), with real daemons in a two-host lab
//! (one bridge): host A is the CA, signing member certificates with the debug-only
//! `KOI_TEST_CERT_LIFETIME_SECS` (one minute); host B joins and keeps announcing on mDNS, while
//! nothing renews its certificate: its own renewal is off (`KOI_TEST_NO_PULL_RENEWAL`) and its push
//! endpoint is moved with `KOI_CERTMESH_PUSH_BIND`, so the CA's push cannot reach it
//! (docs/certmesh.md). koi-health on A (which hears B on mDNS and reads B's expiry from
//! `certmesh/members`) shows B degraded with a reason naming the expiry while the certificate is
//! valid, and down once it expired, each transition logged once; koi-health on B says the same of
//! B itself.

use crate::support::certmesh::join_host;
use crate::support::certmesh::{ca_on, cert_dir, fresh_code, install_mesh, serial_of};
use crate::support::netlab::SwitchLab;
use crate::support::{KoiEnv, bin_dir, root_or_skip};
use std::time::{Duration, Instant};

/// The member certificate's lifetime (seconds): long enough to join, be heard and be seen
/// degraded on a busy machine, short enough to see it expire.
const LIFETIME: u64 = 60;

fn machine(env: &KoiEnv, name: &str) -> Option<serde_json::Value> {
    let run = env.run(&["health", "state", "--json"]);
    run.expect_code(0);
    run.json()["machines"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

fn state_of(m: &Option<serde_json::Value>) -> &str {
    m.as_ref()
        .and_then(|m| m["state"].as_str())
        .unwrap_or_default()
}

/// Waits until `name` is `want` in `env`'s health; returns the machine as shown then.
#[track_caller]
fn wait_state(env: &KoiEnv, name: &str, want: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let m = machine(env, name);
        if state_of(&m) == want {
            return m.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "{name} not {want} within {limit:?}; last: {m:#?}\nlog: {:#?}",
            super::lines_of(env, name)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The log lines about `name` that enter `new`.
fn entering(env: &KoiEnv, name: &str, new: &str) -> Vec<String> {
    super::lines_of(env, name)
        .into_iter()
        .filter(|l| {
            l.split(" | ")
                .nth(2)
                .is_some_and(|t| t.ends_with(&format!("→ {new}")))
        })
        .collect()
}

/// One degraded transition naming the expiry, then one `degraded → down` naming the expired
/// certificate, and nothing else entering either state.
#[track_caller]
fn logged_once_each(env: &KoiEnv, name: &str, whose: &str) {
    let all = super::lines_of(env, name);
    let degraded = entering(env, name, "degraded");
    assert_eq!(degraded.len(), 1, "{whose}: {all:#?}");
    assert!(
        degraded[0].contains("its certificate expires in"),
        "{whose}: {all:#?}"
    );
    let down = entering(env, name, "down");
    assert_eq!(down.len(), 1, "{whose}: {all:#?}");
    assert!(
        down[0].contains("degraded → down") && down[0].contains("its certificate expired at"),
        "{whose}: {all:#?}"
    );
    assert_eq!(
        all.last(),
        Some(&down[0]),
        "{whose}: nothing after down: {all:#?}"
    );
}

#[test]
fn a_certificate_expiring_soon_is_degraded_and_an_expired_one_is_down_logged_once() {
    if !root_or_skip(
        "a_certificate_expiring_soon_is_degraded_and_an_expired_one_is_down_logged_once",
    ) {
        return;
    }
    let lab = SwitchLab::new("hx", 2);
    let (a, b) = (lab.host(0), lab.host(1));
    install_mesh(&lab);
    for h in [a, b] {
        h.env.install(&bin_dir().join("koi-health"), "health");
    }
    let lifetime = LIFETIME.to_string();
    let (_a, ca) = ca_on(
        a,
        &[
            ("KOI_TEST_CERT_LIFETIME_SECS", &lifetime),
            ("KOI_HEALTH_THRESHOLD", "30s"),
            ("KOI_MDNS_RECHECK_SECS", "3"),
        ],
        &["--no-trust", "--json"],
    );
    let (uri, fingerprint) = (ca.uri, ca.fingerprint);

    let mut last = i64::MIN;
    let code = fresh_code(&uri, &mut last);
    join_host(b, &a.ip, &fingerprint, &code).expect_code(0);
    let joined = Instant::now();
    let cert = cert_dir(b).join("cert.pem");
    let serial = serial_of(&cert);
    let _b = b.env.start_daemon(&[
        ("KOI_TEST_NO_PULL_RENEWAL", "1"),
        ("KOI_CERTMESH_PUSH_BIND", "0.0.0.0:15642"),
        ("KOI_TEST_HEARTBEAT_SECS", "2"),
        ("KOI_HEALTH_THRESHOLD", "30s"),
        ("KOI_MDNS_RECHECK_SECS", "3"),
    ]);
    b.env
        .run(&["mdns", "announce", "web", "_http._tcp", "8080"])
        .expect_code(0);
    let name = b.hostname.clone();

    // While the certificate is valid: degraded on A and on B, the reason naming the expiry.
    let valid_for = Duration::from_secs(LIFETIME).saturating_sub(joined.elapsed());
    for (env, whose) in [(&a.env, "A"), (&b.env, "B itself")] {
        let m = wait_state(env, &name, "degraded", valid_for);
        let reason = m["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("its certificate expires in"),
            "{whose}: {m:#?}"
        );
    }
    assert!(
        joined.elapsed() < Duration::from_secs(LIFETIME),
        "the checks above ran after the expiry: the lifetime is too short for this machine"
    );

    // Once it expired: down, on both.
    for (env, whose) in [(&a.env, "A"), (&b.env, "B itself")] {
        let m = wait_state(env, &name, "down", Duration::from_secs(LIFETIME + 30));
        let reason = m["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("its certificate expired at"),
            "{whose}: {m:#?}"
        );
    }
    // A few more ticks and roster re-reads (B's heartbeat now fails every 2 s): still logged once.
    std::thread::sleep(Duration::from_secs(6));
    logged_once_each(&a.env, &name, "A");
    logged_once_each(&b.env, &name, "B itself");
    assert_eq!(
        state_of(&machine(&a.env, &name)),
        "down",
        "A still has B down"
    );
    // Nothing rescued it: B holds the certificate it joined with.
    assert_eq!(serial_of(&cert), serial, "B's certificate was renewed");
}
