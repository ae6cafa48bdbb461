//! Interoperability with a real Avahi, both ways, each Avahi in its own lab namespace with a
//! private D-Bus and `/run`: `avahi-publish` → `koi mdns discover` finds it (from the other host,
//! and from the same host while avahi-daemon holds port 5353 there, which proves the two stacks
//! share it); `koi mdns announce` → `avahi-browse -rtpk` shows it with the TXT intact.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Avahi, Lab, have_or_skip, root_or_skip};

fn avahi_ready(test: &str) -> bool {
    root_or_skip(test)
        && have_or_skip(test, "avahi-daemon")
        && have_or_skip(test, "avahi-publish")
        && have_or_skip(test, "avahi-browse")
        && have_or_skip(test, "dbus-daemon")
}

fn discovered(lab: &Lab, host: &support::Host) -> Vec<Value> {
    let out = lab.run(
        host,
        &["mdns", "discover", "_http._tcp", "--json", "--timeout", "2"],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["services"].as_array().cloned().unwrap_or_default()
}

#[test]
fn koi_discovers_what_avahi_publishes_and_shares_port_5353_with_it() {
    let test = "koi_discovers_what_avahi_publishes_and_shares_port_5353_with_it";
    if !avahi_ready(test) {
        return;
    }
    let lab = Lab::pair();
    let avahi = Avahi::start(&lab, lab.b(), "avahi-b");
    let publish = lab.spawn_in(
        lab.b(),
        "avahi-publish",
        &[
            "-s",
            "Avahi Web",
            "_http._tcp",
            "8081",
            "path=/y",
            "owner=lab b",
        ],
        &avahi.env(),
    );
    assert!(
        publish
            .wait_stderr(Duration::from_secs(10), |l| l.contains("Established"))
            .is_some(),
        "{}",
        publish.stderr_text()
    );
    for host in [lab.a(), lab.b()] {
        let services = discovered(&lab, host);
        let svc = services
            .iter()
            .find(|s| s["instance"] == "Avahi Web")
            .unwrap_or_else(|| panic!("{}: Avahi's service not found: {services:?}", host.ns));
        assert_eq!(svc["port"], 8081);
        assert_eq!(svc["host"], "avahi-b.local.");
        assert_eq!(svc["txt"]["path"], "/y");
        assert_eq!(svc["txt"]["owner"], "lab b");
        assert!(
            svc["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "10.77.0.2")),
            "{svc}"
        );
    }
}

#[test]
fn avahi_browse_sees_what_koi_announces_with_txt_intact() {
    let test = "avahi_browse_sees_what_koi_announces_with_txt_intact";
    if !avahi_ready(test) {
        return;
    }
    let lab = Lab::pair();
    let avahi = Avahi::start(&lab, lab.b(), "avahi-b");
    let announce = lab.announce(
        lab.a(),
        &[
            "koi web",
            "_http._tcp",
            "8080",
            "--txt",
            "path=/x",
            "--txt",
            "ca=SHA256 AB:CD",
            "--host",
            "lab-a",
        ],
        "",
    );
    let mut seen = String::new();
    for _ in 0..5 {
        let browse = lab.spawn_in(
            lab.b(),
            "avahi-browse",
            &["-rtpk", "_http._tcp"],
            &avahi.env(),
        );
        let line = browse.wait_stdout(Duration::from_secs(10), |l| {
            l.starts_with("=;veth0;IPv4;koi\\032web;_http._tcp;local;")
        });
        if let Some((_, line)) = line {
            seen = line;
            break;
        }
    }
    assert_eq!(
        seen,
        "=;veth0;IPv4;koi\\032web;_http._tcp;local;lab-a.local;10.77.0.1;8080;\"ca=SHA256 AB:CD\" \"path=/x\"",
        "avahi-browse did not resolve koi's announcement"
    );
    announce.interrupt();
}
