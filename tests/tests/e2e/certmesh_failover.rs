//! Failover, first step (issue 11 item 7): CA presence over mDNS, in a three-host lab (A the
//! primary, B a standby made with `promote`, C a plain koi with koi-mdns). A's `_certmesh._tcp`
//! advertisement carries `role=primary` and `term=1`; B advertises itself with `role=standby`;
//! B's standby watches A through koi-mdns's events and its heartbeat (`primary_watch` in
//! `status`): present while A runs; once A's interface goes down and its daemon is killed (no
//! goodbye reaches the LAN), koi-mdns's re-check removes A as `unanswered`, the heartbeat fails,
//! and B reports the primary unreachable by both signals, with the time it became so.

use std::time::{Duration, Instant};

use crate::support::certmesh::{
    certmesh_bin, create, fresh_code, mdns_bin, mesh_ids, wait_for_api, write_passphrase,
};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::root_or_skip;

/// B's re-check period (the lowest koi-mdns allows) and heartbeat.
const B_ENV: [(&str, &str); 4] = [
    ("KOI_MDNS_RECHECK_SECS", "3"),
    ("KOI_TEST_HEARTBEAT_SECS", "2"),
    ("KOI_TEST_STANDBY_SYNC_SECS", "2"),
    ("KOI_LOG", "debug"),
];

/// Polls `sample` every 250 ms until it gives `Ok`, for at most `limit`; shows the last `Err`.
#[track_caller]
fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut sample: impl FnMut() -> Result<T, serde_json::Value>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match sample() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last: {last:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn certmesh_services(host: &LabHost) -> Vec<serde_json::Value> {
    let run = host.env.run(&[
        "--json",
        "mdns",
        "discover",
        "_certmesh._tcp",
        "--timeout",
        "3",
    ]);
    run.expect_code(0);
    run.json()["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn status(host: &LabHost) -> serde_json::Value {
    let run = host.env.run(&["certmesh", "status", "--json"]);
    run.expect_code(0);
    run.json()
}

#[test]
fn primary_and_standby_advertise_their_roles_and_the_standby_sees_the_primary_go() {
    if !root_or_skip(
        "primary_and_standby_advertise_their_roles_and_the_standby_sees_the_primary_go",
    ) {
        return;
    }
    let lab = SwitchLab::new("fo", 3);
    for h in &lab.hosts {
        h.env.install(&certmesh_bin(), "certmesh");
        h.env.install(&mdns_bin(), "mdns");
    }
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let pass_file = write_passphrase(&a.env);
    let mut a_daemon = a.env.start_daemon(&[]);
    let created = create(&a.env, &pass_file, &["--no-trust", "--json"]);
    created.expect_code(0);
    let (uri, fingerprint) = mesh_ids(&created);
    wait_for_api(a, &a.ip);
    let mut last_step = i64::MIN;
    let code = fresh_code(&uri, &mut last_step);
    b.env
        .run(&[
            "certmesh",
            "join",
            "--ca",
            &a.ip,
            "--fingerprint",
            &fingerprint,
            "--code",
            &code,
            "--no-trust",
            "--json",
        ])
        .expect_code(0);
    let b_daemon = b.env.start_daemon(&B_ENV);
    let standby_pass = b.env.dir.path().join("standby-pass");
    std::fs::write(&standby_pass, "standby passphrase 4411\n").expect("standby pass");
    let code = fresh_code(&uri, &mut last_step);
    b.env
        .run(&[
            "certmesh",
            "promote",
            "--code",
            &code,
            "--passphrase-file",
            &standby_pass.display().to_string(),
            "--json",
        ])
        .expect_code(0);

    // Both advertise, each with its role and the term; the standby's is not a CA to join.
    let (primary, standby) = wait_for("A and B advertised", Duration::from_secs(30), || {
        let services = certmesh_services(c);
        let find = |role: &str| {
            services
                .iter()
                .find(|s| s["txt"]["role"] == role && s["txt"]["fp"] == fingerprint.as_str())
                .cloned()
        };
        match (find("primary"), find("standby")) {
            (Some(p), Some(s)) => Ok((p, s)),
            _ => Err(serde_json::json!(services)),
        }
    });
    assert_eq!(primary["txt"]["term"], "1", "{primary}");
    assert!(
        primary["addresses"].to_string().contains(&a.ip),
        "{primary}"
    );
    assert_eq!(standby["txt"]["term"], "1", "{standby}");
    assert!(
        standby["addresses"].to_string().contains(&b.ip),
        "{standby}"
    );

    // B watches A: present over mDNS with term 1, heartbeat ok, not unreachable.
    wait_for("B sees A present", Duration::from_secs(30), || {
        let s = status(b);
        let w = &s["details"]["primary_watch"];
        if w["mdns"] == "present" && w["mdns_term"] == 1 && w["heartbeat_ok"] == true {
            assert!(w["unreachable_since"].is_null(), "{s}");
            Ok(())
        } else {
            Err(s)
        }
    });

    // A vanishes without a goodbye: interface down, then its daemon killed.
    let down = a
        .command("ip", &["link", "set", "veth0", "down"])
        .status()
        .expect("ip link");
    assert!(down.success());
    a_daemon.terminate(Duration::from_secs(10));
    let watch = wait_for(
        "B sees A unreachable by mDNS and heartbeat",
        Duration::from_secs(40),
        || {
            let s = status(b);
            let w = s["details"]["primary_watch"].clone();
            if w["mdns"] == "absent"
                && w["heartbeat_ok"] == false
                && w["unreachable_since"].is_string()
            {
                Ok(w)
            } else {
                Err(s)
            }
        },
    );
    assert_eq!(watch["mdns_reason"], "unanswered", "{watch}");
    drop(b_daemon);
}
