//! The table built from the sources: priority (static > certmesh > mDNS host > mDNS alias),
//! aliases with every instance's addresses and disambiguated names, SRV/TXT, PTR, public
//! addresses dropped, and which aliases are due for a SAN request.

use crate::records::{self, Member, Sources};
use crate::snapshot::Source;
use hickory_proto::op::Query;
use hickory_proto::rr::{Name, RData, RecordType};
use koi_mdns_api::ServiceRecord;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn svc(instance: &str, t: &str, host: &str, addrs: &[&str], port: u16) -> ServiceRecord {
    ServiceRecord {
        instance: instance.into(),
        service_type: t.into(),
        fullname: format!("{instance}.{t}.local."),
        host: format!("{host}.local."),
        addresses: addrs.iter().map(|s| (*s).to_owned()).collect(),
        port,
        txt: BTreeMap::from([("path".to_owned(), "/".to_owned())]),
        first_seen: String::new(),
        last_seen: String::new(),
    }
}

fn zone() -> Name {
    Name::from_ascii("lan.").unwrap()
}

fn ask(
    snap: &crate::snapshot::Snapshot,
    name: &str,
    t: RecordType,
    rot: usize,
) -> crate::snapshot::Answer {
    snap.answer(&Query::query(Name::from_ascii(name).unwrap(), t), rot)
        .unwrap()
}

fn first_a(a: &crate::snapshot::Answer) -> String {
    match &a.answers[0].data {
        RData::A(x) => x.0.to_string(),
        other => panic!("not A: {other:?}"),
    }
}

#[test]
fn two_instances_give_both_addresses_rotating_plus_disambiguated_names_and_srv() {
    let services = BTreeMap::from([
        (
            "g1".to_owned(),
            svc("g1", "_grafana._tcp", "b", &["10.0.0.2"], 3000),
        ),
        (
            "g2".to_owned(),
            svc(
                "g2",
                "_grafana._tcp",
                "c",
                &["10.0.0.3", "203.0.113.7"],
                3001,
            ),
        ),
    ]);
    let (snap, built) = records::build(
        &zone(),
        1,
        &Sources {
            services: Some(&services),
            ..Sources::default()
        },
    );
    let firsts: std::collections::BTreeSet<String> = (0..4)
        .map(|r| first_a(&ask(&snap, "grafana.lan.", RecordType::A, r)))
        .collect();
    assert_eq!(firsts.len(), 2, "each address first in turn: {firsts:?}");
    assert_eq!(
        ask(&snap, "grafana.lan.", RecordType::A, 0).answers.len(),
        2,
        "public 203.0.113.7 dropped"
    );
    assert_eq!(built.dropped_public, 1);
    assert_eq!(
        first_a(&ask(&snap, "grafana-c.lan.", RecordType::A, 0)),
        "10.0.0.3"
    );
    assert_eq!(first_a(&ask(&snap, "b.lan.", RecordType::A, 0)), "10.0.0.2");
    let srv = ask(&snap, "_grafana._tcp.lan.", RecordType::SRV, 0);
    assert_eq!(srv.answers.len(), 2);
    assert!(
        srv.answers
            .iter()
            .any(|r| matches!(&r.data, RData::SRV(s) if s.port == 3000))
    );
    let ptr = ask(&snap, "2.0.0.10.in-addr.arpa.", RecordType::PTR, 0);
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "b.lan."));
    assert_eq!(
        built.aliases["grafana.lan"].hosts,
        vec!["b".to_owned(), "c".to_owned()]
    );
    assert!(ask(&snap, "nope.lan.", RecordType::A, 0).nxdomain);
}

#[test]
fn static_beats_certmesh_beats_mdns_and_overlaps_are_reported() {
    let statics = BTreeMap::from([(
        "grafana".to_owned(),
        vec!["10.9.9.9".parse::<IpAddr>().unwrap()],
    )]);
    let members = vec![Member {
        host: "b".into(),
        names: vec!["b.lan".into(), "grafana.lan".into(), "x.example.com".into()],
        addresses: vec!["10.0.0.22".into()],
    }];
    let services = BTreeMap::from([(
        "g1".to_owned(),
        svc("g1", "_grafana._tcp", "b", &["10.0.0.2"], 3000),
    )]);
    let (snap, built) = records::build(
        &zone(),
        1,
        &Sources {
            statics: Some(&statics),
            members: &members,
            services: Some(&services),
            cgnat: false,
        },
    );
    let g = ask(&snap, "grafana.lan.", RecordType::A, 0);
    assert_eq!(
        (g.source, first_a(&g)),
        (Some(Source::Static), "10.9.9.9".into())
    );
    let b = ask(&snap, "b.lan.", RecordType::A, 0);
    assert_eq!(
        (b.source, first_a(&b)),
        (Some(Source::Certmesh), "10.0.0.22".into())
    );
    assert!(
        built
            .overlaps
            .iter()
            .any(|(n, kept, _)| n == "grafana.lan." && *kept == "static")
    );
    assert!(
        snap.answer(
            &Query::query(Name::from_ascii("x.example.com.").unwrap(), RecordType::A),
            0
        )
        .is_none()
    );
}

#[test]
fn only_aliases_on_certmesh_members_are_due_for_a_san_request() {
    use crate::state::{Dns, lock};
    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::open(Ok(dir.path().to_owned()));
    *lock(&dns.services) = BTreeMap::from([
        (
            "g1".to_owned(),
            svc("g1", "_grafana._tcp", "stone-05", &["10.0.0.5"], 3000),
        ),
        (
            "p1".to_owned(),
            svc("p1", "_prom._tcp", "other", &["10.0.0.6"], 9090),
        ),
    ]);
    let diff = dns.rebuild();
    assert_eq!(diff.created.len(), 2);
    assert!(crate::sources::due_requests(&dns).is_empty(), "no mesh yet");
    lock(&dns.mesh).members = vec![Member {
        host: "stone-05".into(),
        names: vec![],
        addresses: vec!["10.0.0.5".into()],
    }];
    dns.rebuild();
    assert_eq!(
        crate::sources::due_requests(&dns),
        vec![("stone-05".to_owned(), vec!["grafana.lan".to_owned()])]
    );
    lock(&dns.requested).insert("stone-05 grafana.lan".into());
    assert!(crate::sources::due_requests(&dns).is_empty(), "asked once");
    lock(&dns.services).remove("g1");
    let diff = dns.rebuild();
    assert_eq!(
        diff.removed
            .iter()
            .map(|a| a.alias.as_str())
            .collect::<Vec<_>>(),
        vec!["grafana.lan"]
    );
}
