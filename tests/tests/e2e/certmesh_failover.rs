//! Failover, presence and takeover (issue 11 item 7): CA presence over mDNS, in a three-host lab (A the
//! primary, B a standby made with `promote`, C a plain koi with koi-mdns). A's `_certmesh._tcp`
//! advertisement carries `role=primary` and `term=1`; B advertises itself with `role=standby`;
//! B's standby watches A through koi-mdns's events and its heartbeat (`primary_watch` in
//! `status`): present while A runs; once A's interface goes down and its daemon is killed (no
//! goodbye reaches the LAN), koi-mdns's re-check removes A as `unanswered`, the heartbeat fails,
//! and B reports the primary unreachable by both signals, with the time it became so. Within the
//! grace period (3 s here) plus 10 s, B takes over: role primary, term 2, LOCKED (status says
//! so), advertised as primary with term 2 and no longer as a standby; unlocked with B's own
//! passphrase, B's audit log verifies and holds the `ca_failover` entry. C follows B (the
//! higher term), renews there and its heartbeat reads term 2. A comes back, sees term 2, and
//! becomes a standby of B without signing anything (its log, moved aside, has not grown); after
//! convergence only B advertises primary.

use crate::support::certmesh::join_host;
use std::time::{Duration, Instant};

use crate::support::certmesh::{
    ca_on, certmesh_status as status, fresh_code, install_mesh, promote_host,
};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::root_or_skip;

/// B's grace period.
const GRACE: Duration = Duration::from_secs(3);

/// B's re-check period (the lowest koi-mdns allows), heartbeat and grace period.
const B_ENV: [(&str, &str); 5] = [
    ("KOI_TEST_FAILOVER_GRACE_SECS", "3"),
    ("KOI_MDNS_RECHECK_SECS", "3"),
    ("KOI_TEST_HEARTBEAT_SECS", "2"),
    ("KOI_TEST_STANDBY_SYNC_SECS", "2"),
    ("KOI_LOG", "debug"),
];

use crate::support::wait_for;

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

use crate::support::KillOnDrop;

fn audit_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn the_standby_sees_the_primary_go_and_takes_over_locked_with_a_higher_term() {
    if !root_or_skip("the_standby_sees_the_primary_go_and_takes_over_locked_with_a_higher_term") {
        return;
    }
    let lab = SwitchLab::new("fo", 3);
    install_mesh(&lab);
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let (mut a_daemon, ca) = ca_on(a, &[], &["--no-trust", "--json"]);
    let (uri, fingerprint) = (ca.uri, ca.fingerprint);
    let mut last_step = i64::MIN;
    let code = fresh_code(&uri, &mut last_step);
    join_host(b, &a.ip, &fingerprint, &code).expect_code(0);
    let mut b_daemon = b.env.start_daemon(&B_ENV);
    let code = fresh_code(&uri, &mut last_step);
    join_host(c, &a.ip, &fingerprint, &code).expect_code(0);
    let c_daemon = c.env.start_daemon(&[("KOI_TEST_HEARTBEAT_SECS", "2")]);
    let standby_pass = b.env.dir.path().join("standby-pass");
    std::fs::write(&standby_pass, "standby passphrase 4411\n").expect("standby pass");
    let code = fresh_code(&uri, &mut last_step);
    promote_host(b, &code, &standby_pass.display().to_string()).expect_code(0);

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

    // Who may claim a higher term: A's roster lists B as its standby, and so does the roster C
    // last fetched from A over mutual TLS (its status shows it).
    assert_eq!(
        status(a)["details"]["standbys"],
        serde_json::json!([b.hostname])
    );
    wait_for("C knows B as a standby", Duration::from_secs(30), || {
        let s = status(c);
        if s["details"]["standbys"] == serde_json::json!([b.hostname]) {
            Ok(())
        } else {
            Err(s)
        }
    });

    // A forged advertisement (the fingerprint is public in TXT) claims term 99 from an address
    // with no CA behind it: A is not fenced, C does not move, B's term is not inflated.
    let forged = "koi certmesh CA on forged";
    c.env
        .run(&[
            "mdns",
            "announce",
            forged,
            "_certmesh._tcp",
            "5999",
            "--txt",
            &format!("fp={fingerprint}"),
            "--txt",
            "role=primary",
            "--txt",
            "term=99",
        ])
        .expect_code(0);
    wait_for("A ignores the forged term", Duration::from_secs(30), || {
        if a_daemon.log_text().contains("did not confirm it") {
            Ok(())
        } else {
            Err(serde_json::json!(
                "no word of the forged advertisement in A's log"
            ))
        }
    });
    let a_now = status(a);
    assert_eq!(a_now["details"]["role"], "primary", "{a_now}");
    assert_eq!(a_now["details"]["locked"], false, "{a_now}");
    assert_eq!(
        status(c)["details"]["ca_endpoint"],
        format!("{}:5641", a.ip).as_str()
    );
    c.env
        .run(&["mdns", "unannounce", forged, "_certmesh._tcp"])
        .expect_code(0);

    // A vanishes without a goodbye: interface down, then its daemon killed.
    let down = a
        .command("ip", &["link", "set", "veth0", "down"])
        .status()
        .expect("ip link");
    assert!(down.success());
    let gone_at = Instant::now();
    // Cut off, A still signs something: a partition entry B's copy does not have.
    a.env.run(&["certmesh", "close-enrollment"]).expect_code(0);
    let a_log_before = audit_lines(&a.env.home.join("certmesh/audit.log"));
    a_daemon.terminate(Duration::from_secs(10));
    // B sees A unreachable by both signals and takes over within grace + 10 s.
    let taken = wait_for("B takes over", GRACE + Duration::from_secs(10), || {
        let s = status(b);
        if s["details"]["role"] == "primary" {
            Ok(s)
        } else {
            Err(s)
        }
    });
    eprintln!("B took over {:?} after A went down", gone_at.elapsed());
    // Locked at takeover: the role, the new term, and the locked message.
    assert_eq!(taken["details"]["term"], 2, "{taken}");
    assert_eq!(taken["details"]["locked"], true, "{taken}");
    assert!(
        taken["summary"].as_str().unwrap_or("").contains("LOCKED"),
        "{taken}"
    );
    // B advertises as the primary with term 2, and no longer as a standby.
    wait_for("B advertises primary", Duration::from_secs(30), || {
        let services = certmesh_services(c);
        let b_primary = services.iter().any(|s| {
            s["txt"]["role"] == "primary"
                && s["txt"]["term"] == "2"
                && s["addresses"].to_string().contains(&b.ip)
        });
        let standbys = services
            .iter()
            .filter(|s| s["txt"]["role"] == "standby")
            .count();
        if b_primary && standbys == 0 {
            Ok(())
        } else {
            Err(serde_json::json!(services))
        }
    });
    // Unlocked with the standby's passphrase, B signs the failover into the log, which verifies.
    b.env
        .run(&[
            "certmesh",
            "unlock",
            "--passphrase-file",
            &standby_pass.display().to_string(),
        ])
        .expect_code(0);
    b.env.run(&["certmesh", "log", "--verify"]).expect_code(0);
    let failover = crate::support::certmesh::audit_entries(&b.env)
        .into_iter()
        .find(|e| e["event"] == "ca_failover")
        .expect("ca_failover in B's log");
    assert_eq!(failover["details"]["term"], 2, "{failover}");
    assert_eq!(failover["details"]["old_term"], 1, "{failover}");
    let reason = failover["details"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("mDNS: unanswered") && reason.contains("heartbeat: "),
        "{failover}"
    );
    assert_eq!(
        failover["details"]["old_primary"],
        a.hostname.as_str(),
        "{failover}"
    );

    // C follows the primary with the higher term (same root, so its pin holds) and renews there.
    let b_api = format!("{}:5641", b.ip);
    wait_for("C follows B", Duration::from_secs(30), || {
        let s = status(c);
        if s["details"]["ca_endpoint"] == b_api.as_str() {
            Ok(())
        } else {
            Err(s)
        }
    });
    let renewed = c.env.run(&["certmesh", "renew", "--now", "--json"]);
    renewed.expect_code(0);
    wait_for(
        "C's heartbeat reads term 2 from B",
        Duration::from_secs(30),
        || {
            let s = status(c);
            if s["details"]["heartbeat"]["ok"] == true && s["details"]["heartbeat"]["term"] == 2 {
                Ok(())
            } else {
                Err(s)
            }
        },
    );

    // A comes back (locked, as after any restart), sees term 2 and becomes a standby of B
    // without signing anything: its log, moved aside whole, has not grown. C watches the link
    // meanwhile: A never advertises itself as primary (it listens for a higher term first).
    let watch_out = c.env.dir.path().join("watch.ndjson");
    let watch = KillOnDrop(
        c.env
            .command(&["--json", "mdns", "discover", "_certmesh._tcp", "--watch"])
            .stdout(std::fs::File::create(&watch_out).expect("watch output"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("koi mdns discover --watch"),
    );
    let up = a
        .command("ip", &["link", "set", "veth0", "up"])
        .status()
        .expect("ip link");
    assert!(up.success());
    let a_daemon = a.env.start_daemon(&B_ENV);
    wait_for("A becomes a standby", Duration::from_secs(40), || {
        let s = status(a);
        if s["details"]["role"] == "standby" && s["details"]["term"] == 2 {
            Ok(())
        } else {
            Err(s)
        }
    });
    assert_eq!(
        audit_lines(&a.env.home.join("certmesh/demoted/audit.log")),
        a_log_before,
        "A signed something between coming back and stepping down"
    );
    // After convergence, one primary only (B), several looks in a row.
    let mut last = Vec::new();
    wait_for("one primary", Duration::from_secs(30), || {
        let services = certmesh_services(c);
        let primaries: Vec<String> = services
            .iter()
            .filter(|s| s["txt"]["role"] == "primary")
            .map(|s| s["addresses"].to_string())
            .collect();
        if primaries.len() == 1 && primaries[0].contains(&b.ip) {
            Ok(())
        } else {
            last = primaries.clone();
            Err(serde_json::json!(services))
        }
    });
    for _ in 0..3 {
        let services = certmesh_services(c);
        let primaries: Vec<&serde_json::Value> = services
            .iter()
            .filter(|s| s["txt"]["role"] == "primary")
            .collect();
        assert_eq!(
            primaries.len(),
            1,
            "two primaries after convergence: {services:?} (before: {last:?})"
        );
        assert!(
            primaries[0]["addresses"].to_string().contains(&b.ip),
            "{services:?}"
        );
    }
    drop(watch);
    let a_instance = format!("koi certmesh CA on {}", a.hostname);
    let a_as_primary: Vec<String> = std::fs::read_to_string(&watch_out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|item| {
            item["instance"] == a_instance.as_str()
                && item["action"] != "-"
                && item["txt"]["role"] == "primary"
        })
        .map(|item| item.to_string())
        .collect();
    assert!(
        a_as_primary.is_empty(),
        "A advertised itself as primary after its restart: {a_as_primary:?}"
    );
    // A's partition entry reaches B, carried verbatim in one signed entry; B's log verifies.
    let carried = wait_for(
        "B keeps A's partition entries",
        Duration::from_secs(60),
        || match crate::support::certmesh::audit_entries(&b.env)
            .into_iter()
            .find(|e| e["event"] == "partition_entries")
        {
            Some(e) => Ok(e),
            None => Err(serde_json::json!("no partition_entries in B's log yet")),
        },
    );
    assert_eq!(carried["details"]["from"], a.hostname.as_str(), "{carried}");
    let entries = carried["details"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        entries.iter().any(|l| l
            .as_str()
            .unwrap_or("")
            .contains("\"event\":\"enrollment_closed\"")),
        "{carried}"
    );
    b.env.run(&["certmesh", "log", "--verify"]).expect_code(0);

    // Term 3: B dies in turn, and A — demoted in this same daemon, now B's standby — takes over
    // again: a fence from term 2 does not stop it, its API serves again, and C, whose roster
    // (fetched from B) lists A as a standby, follows it.
    wait_for(
        "A is a synced standby watching B",
        Duration::from_secs(60),
        || {
            let s = status(a);
            let w = &s["details"]["primary_watch"];
            if s["details"]["standby"]["roster_version"]
                .as_u64()
                .unwrap_or(0)
                > 0
                && w["mdns"] == "present"
            {
                Ok(())
            } else {
                Err(s)
            }
        },
    );
    wait_for("C knows A as a standby", Duration::from_secs(30), || {
        let s = status(c);
        if s["details"]["standbys"] == serde_json::json!([a.hostname]) {
            Ok(())
        } else {
            Err(s)
        }
    });
    let down = b
        .command("ip", &["link", "set", "veth0", "down"])
        .status()
        .expect("ip link");
    assert!(down.success());
    b_daemon.terminate(Duration::from_secs(10));
    let again = wait_for("A takes over with term 3", Duration::from_secs(40), || {
        let s = status(a);
        if s["details"]["role"] == "primary" && s["details"]["term"] == 3 {
            Ok(s)
        } else {
            Err(s)
        }
    });
    assert_eq!(again["details"]["locked"], true, "{again}");
    let a_api = format!("{}:5641", a.ip);
    wait_for("C follows A (term 3)", Duration::from_secs(40), || {
        let s = status(c);
        if s["details"]["ca_endpoint"] == a_api.as_str() && s["details"]["heartbeat"]["term"] == 3 {
            Ok(())
        } else {
            Err(s)
        }
    });
    drop(a_daemon);
    drop(c_daemon);
}
