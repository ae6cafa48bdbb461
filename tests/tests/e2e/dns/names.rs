//! Where names come from: static entries (live at once, kept across a daemon restart, with PTR,
//! and a large answer truncated over UDP and whole over TCP) and mDNS
//! (an alias within seconds, published as `dns.alias.created`, two instances rotating with
//! disambiguated names, SRV with the port, the goodbye removing the alias and publishing
//! `dns.alias.removed`, a public address never answered).

use super::lab::DnsLab;
use super::{SOON, addresses, dig, install, status};
use crate::support::{root_or_skip, wait_until};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn static_entries_answer_at_once_vanish_at_once_and_survive_a_daemon_restart() {
    if !root_or_skip("static_entries_answer_at_once_vanish_at_once_and_survive_a_daemon_restart") {
        return;
    }
    let mut dl = DnsLab::new(&["--upstream", "10.255.255.1"]);
    let (a, c) = (dl.lab.host(0), dl.lab.host(2));
    let at = dl.at_a();
    a.env.run(&["dns", "add", "nas", "10.1.2.3"]).expect_code(0);
    let out = dig(c, &[&at, "nas.lan"]);
    assert_eq!(addresses(&out), vec!["10.1.2.3"], "{out}");
    assert!(out.contains(" aa"), "authoritative: {out}");
    let ptr = dig(c, &[&at, "-x", "10.1.2.3", "+short"]);
    assert_eq!(ptr.trim(), "nas.lan.", "PTR for a known private address");
    // 16 IPv4 and 16 IPv6 addresses: ANY does not fit 512 bytes, so UDP says TC and dig retries
    // over TCP, where the whole answer comes.
    let mut big = vec!["dns".to_owned(), "add".to_owned(), "big".to_owned()];
    big.extend((1..=16).map(|i| format!("10.2.0.{i}")));
    big.extend((1..=16).map(|i| format!("fd00::{i}")));
    a.env
        .run(&big.iter().map(String::as_str).collect::<Vec<_>>())
        .expect_code(0);
    // (dig sends ANY over TCP unless told +notcp.)
    let udp = dig(c, &[&at, "+notcp", "+noedns", "+ignore", "ANY", "big.lan"]);
    let flags = udp
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_default();
    assert!(
        flags.contains(" tc ") && addresses(&udp).is_empty(),
        "UDP answer: {udp}"
    );
    // Without +ignore, dig retries the truncated answer over TCP and says so: "(TCP)".
    let out = dig(c, &[&at, "+notcp", "+noedns", "ANY", "big.lan"]);
    assert!(out.contains(") (TCP)"), "not retried over TCP: {out}");
    assert_eq!(addresses(&out).len(), 32, "{out}");
    a.env
        .run(&["dns", "add", "printer", "10.1.2.4"])
        .expect_code(0);
    a.env.run(&["dns", "remove", "nas"]).expect_code(0);
    let out = dig(c, &[&at, "nas.lan"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(
        out.contains("SOA"),
        "negative answer carries the SOA: {out}"
    );
    let listed = a.env.run(&["dns", "list", "--json"]);
    listed.expect_code(0);
    assert_eq!(
        listed.json()["names"][0]["source"],
        "static",
        "{}",
        listed.stdout
    );

    let mut old = dl.a_daemon.take().expect("daemon");
    old.terminate(Duration::from_secs(20))
        .expect("daemon stops");
    let a = dl.lab.host(0);
    let _again = a.env.start_daemon(&[]);
    wait_until("printer.lan answers after the restart", SOON, || {
        addresses(&dig(c, &[&at, "printer.lan"])) == vec!["10.1.2.4"]
    });
    let looked = a.env.run(&["dns", "lookup", "printer.lan", "--json"]);
    looked.expect_code(0);
    let v = looked.json();
    assert_eq!(
        (
            v["source"].as_str(),
            v["via"].as_str().map(|s| s.starts_with("udp"))
        ),
        (Some("static"), Some(true)),
        "{v}"
    );
}

#[test]
fn mdns_services_become_aliases_with_rotation_disambiguation_srv_and_goodbye() {
    if !root_or_skip("mdns_services_become_aliases_with_rotation_disambiguation_srv_and_goodbye") {
        return;
    }
    let dl = DnsLab::new(&["--upstream", "10.255.255.1"]);
    let (b, c) = (dl.lab.host(1), dl.lab.host(2));
    install(b, false);
    let _b_daemon = b.env.start_daemon(&[]);
    let at = dl.at_a();
    let b_ip = b.ip.clone();
    let c_ip = c.ip.clone();
    b.env
        .run(&["mdns", "announce", "Grafana", "_grafana._tcp", "3000"])
        .expect_code(0);
    wait_until("grafana.lan gives B's address", SOON, || {
        addresses(&dig(c, &[&at, "grafana.lan"])) == vec![b_ip.clone()]
    });
    wait_until("dns.alias.created reaches a subscriber", SOON, || {
        dl.alias_events()
            .lines()
            .any(|l| l.contains("dns.alias.created") && l.contains("\"grafana.lan\""))
    });
    let srv = dig(c, &[&at, "SRV", "_grafana._tcp.lan"]);
    assert!(srv.contains("3000 dns-b.lan."), "SRV with the port: {srv}");

    // A second instance on another host name, with C's address, and a public address alongside.
    b.env
        .run(&[
            "mdns",
            "announce",
            "Grafana 2",
            "_grafana._tcp",
            "3001",
            "--host",
            "other",
            "--ip",
            &c_ip,
            "--ip",
            "203.0.113.7",
        ])
        .expect_code(0);
    wait_until("grafana.lan gives both addresses", SOON, || {
        addresses(&dig(c, &[&at, "grafana.lan"])).len() == 2
    });
    let mut firsts = BTreeSet::new();
    for _ in 0..8 {
        let got = addresses(&dig(c, &[&at, "grafana.lan"]));
        assert!(
            !got.contains(&"203.0.113.7".to_owned()),
            "a public address in an answer: {got:?}"
        );
        firsts.insert(got[0].clone());
    }
    assert_eq!(
        firsts,
        BTreeSet::from([b_ip.clone(), c_ip.clone()]),
        "each address comes first in turn"
    );
    assert_eq!(
        addresses(&dig(c, &[&at, "grafana-other.lan"])),
        vec![c_ip.clone()]
    );
    assert_eq!(
        addresses(&dig(c, &[&at, "grafana-dns-b.lan"])),
        vec![b_ip.clone()]
    );
    assert_eq!(
        addresses(&dig(c, &[&at, "other.lan"])),
        vec![c_ip.clone()],
        "no public address"
    );

    b.env
        .run(&["mdns", "unannounce", "Grafana", "_grafana._tcp"])
        .expect_code(0);
    b.env
        .run(&["mdns", "unannounce", "Grafana 2", "_grafana._tcp"])
        .expect_code(0);
    wait_until("the goodbye removes grafana.lan", SOON, || {
        status(&dig(c, &[&at, "grafana.lan"])) == "NXDOMAIN"
    });
    wait_until("dns.alias.removed reaches a subscriber", SOON, || {
        dl.alias_events()
            .lines()
            .any(|l| l.contains("dns.alias.removed") && l.contains("\"grafana.lan\""))
    });
}
