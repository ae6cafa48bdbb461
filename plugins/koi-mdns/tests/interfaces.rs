//! The interface rule on a real (namespaced) machine: the lab's veth is used by default, loopback,
//! a Docker-style bridge and a tun device are skipped with their reasons, and `--interface`
//! overrides the rule (or fails with the usable interfaces named).

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Lab, root_or_skip};

#[test]
fn the_veth_is_used_by_default_and_bridges_tunnels_and_loopback_are_not() {
    if !root_or_skip("the_veth_is_used_by_default_and_bridges_tunnels_and_loopback_are_not") {
        return;
    }
    let lab = Lab::pair();
    lab.sh(
        lab.a(),
        "ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up \
         && ip tuntap add tun0 mode tun && ip addr add 10.8.0.1/24 dev tun0 && ip link set tun0 up",
    );
    let out = lab.run(
        lab.a(),
        &["mdns", "state", "--json"],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |name: &str| -> Value {
        state["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} missing from {state}"))
    };
    assert_eq!(find("veth0")["used"], true, "{state}");
    assert_eq!(find("lo")["skipped_because"], "loopback");
    assert_eq!(find("docker0")["skipped_because"], "container/VM bridge");
    let tun = find("tun0");
    assert_eq!(tun["used"], false);
    assert!(
        tun["skipped_because"]
            .as_str()
            .is_some_and(|r| r.contains("point-to-point") || r.contains("tun")),
        "{tun}"
    );
    let veth_addresses = find("veth0")["addresses"].to_string();
    assert!(veth_addresses.contains("%veth0"), "{veth_addresses}");
}

#[test]
fn interface_flag_overrides_the_rule_and_unknown_names_fail_clearly() {
    if !root_or_skip("interface_flag_overrides_the_rule_and_unknown_names_fail_clearly") {
        return;
    }
    let lab = Lab::pair();
    let out = lab.run(
        lab.b(),
        &[
            "mdns",
            "discover",
            "_http._tcp",
            "--timeout",
            "0.5",
            "--interface",
            "nosuch0",
        ],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the interface `nosuch0` cannot be used for mDNS: no such interface (usable here: veth0)"),
        "{stderr}"
    );
    let out = lab.run(
        lab.b(),
        &[
            "mdns",
            "discover",
            "_http._tcp",
            "--timeout",
            "0.5",
            "--interface",
            "veth0",
            "--json",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
