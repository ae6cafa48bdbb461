//! The three-host lab itself: every host reaches every other over the bridge, and the namespaces
//! are gone once the lab is dropped (the dns, health and failover tests rely on both).

use crate::support::netlab::SwitchLab;
use crate::support::root_or_skip;

#[test]
fn three_hosts_on_one_bridge_reach_each_other_and_vanish_when_dropped() {
    if !root_or_skip("three_hosts_on_one_bridge_reach_each_other_and_vanish_when_dropped") {
        return;
    }
    let names: Vec<String>;
    {
        let lab = SwitchLab::new("sw", 3);
        names = lab.hosts.iter().map(|h| h.ns.clone()).collect();
        for from in &lab.hosts {
            for to in &lab.hosts {
                let out = from
                    .command("ping", &["-c", "1", "-W", "5", &to.ip])
                    .output()
                    .expect("ping");
                assert!(
                    out.status.success(),
                    "{} cannot reach {}: {}",
                    from.hostname,
                    to.ip,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let out = lab
            .host(2)
            .command("hostname", &[])
            .output()
            .expect("hostname");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sw-c");
    }
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in names {
        assert!(!listed.contains(&ns), "namespace {ns} left behind");
    }
}
