//! Property tests of the request path: random bytes, hickory-encoded queries with random names,
//! types, flags, EDNS and sections, and the same mutated byte by byte, never panic and never get
//! an answer that is not a response to the same ID. The corpus in `fuzz-corpus/` (packets that
//! once broke DNS servers: compression loops, truncated labels, huge counts) is replayed too.

use crate::addrs::Cidr;
use crate::records::{self, Sources};
use crate::snapshot::Snapshot;
use crate::wire::{self, Acl, Verdict};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn table() -> Snapshot {
    let zone = Name::from_ascii("lan.").unwrap();
    let mut statics = BTreeMap::new();
    statics.insert(
        "nas".to_owned(),
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap(),
        ],
    );
    records::build(
        &zone,
        1,
        &Sources {
            statics: Some(&statics),
            ..Sources::default()
        },
    )
    .0
}

fn acl() -> Acl {
    Acl {
        local: vec!["10.0.0.0/8".parse::<Cidr>().unwrap()],
        ..Acl::default()
    }
}

fn run(packet: &[u8]) -> (Verdict, Vec<u8>) {
    let mut out = Vec::new();
    let v = wire::handle(
        &table(),
        &acl(),
        packet,
        "10.0.0.9".parse().unwrap(),
        true,
        0,
        || false,
        &mut out,
    );
    (v, out)
}

fn check(packet: &[u8]) {
    let mut fast_out = Vec::new();
    let _ = crate::fast::answer(&rich_table().fast, packet, 3, &mut fast_out);
    let (_, out) = run(packet);
    if !out.is_empty() {
        assert!(
            out.len() >= 12 && out[..2] == packet[..2] && out[2] & 0x80 != 0,
            "bad reply to {packet:?}"
        );
        assert!(
            out.len() <= usize::from(wire::EDNS_PAYLOAD),
            "oversized UDP reply"
        );
    }
}

fn query(name: &str, t: u16, rd: bool, edns: Option<(u16, u8)>, extra: usize) -> Option<Vec<u8>> {
    let name = Name::from_ascii(name).ok()?;
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = rd;
    for _ in 0..=extra {
        m.add_query(Query::query(name.clone(), RecordType::from(t)));
    }
    if let Some((size, version)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_version(version);
        m.set_edns(e);
    }
    m.to_vec().ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes);
    }

    #[test]
    fn encoded_queries_and_their_mutations_never_panic(
        labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6),
        t in any::<u16>(), rd in any::<bool>(),
        edns in proptest::option::of((any::<u16>(), 0u8..3)),
        extra in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let name = format!("{}.lan.", labels.join("."));
        if let Some(mut p) = query(&name, t, rd, edns, extra) {
            check(&p);
            for (at, b) in flips {
                let i = at % p.len();
                p[i] ^= b;
            }
            check(&p);
            let n = cut % (p.len() + 1);
            check(&p[..n]);
        }
    }
}

fn rich_table() -> Snapshot {
    let zone = Name::from_ascii("lan.").unwrap();
    let mut statics = BTreeMap::new();
    let many: Vec<IpAddr> = (1..=5u8)
        .map(|i| format!("10.0.2.{i}").parse().unwrap())
        .collect();
    statics.insert("multi".to_owned(), many);
    statics.insert("v6only".to_owned(), vec!["fd00::7".parse().unwrap()]);
    statics.insert(
        "nas".to_owned(),
        vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
    );
    records::build(
        &zone,
        7,
        &Sources {
            statics: Some(&statics),
            ..Sources::default()
        },
    )
    .0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The fast path answers exactly what the full path answers, byte for byte, or declines.
    #[test]
    fn the_fast_path_agrees_with_the_full_path(
        name in prop_oneof!["multi", "v6only", "nas", "nope", "[a-z]{1,8}"],
        aaaa in any::<bool>(), rd in any::<bool>(), cd in any::<bool>(),
        edns in proptest::option::of(any::<u16>()), rotation in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        let snap = rich_table();
        let Some(mut p) = query(&format!("{name}.lan."), if aaaa { 28 } else { 1 }, rd, edns.map(|s| (s, 0)), 0) else {
            return Ok(());
        };
        if cd {
            p[3] |= 0x10;
        }
        let mut fast_out = Vec::new();
        if crate::fast::answer(&snap.fast, &p, rotation, &mut fast_out).is_some() {
            let mut slow_out = Vec::new();
            wire::handle(&snap, &acl(), &p, "10.0.0.9".parse().unwrap(), true, rotation, || false, &mut slow_out);
            prop_assert_eq!(&fast_out, &slow_out);
        }
        for (at, b) in flips {
            let i = at % p.len();
            p[i] ^= b;
        }
        if crate::fast::answer(&snap.fast, &p, rotation, &mut fast_out).is_some() {
            prop_assert!(fast_out.len() >= 12 && fast_out[..2] == p[..2] && fast_out[2] & 0x80 != 0);
        }
    }
}

#[test]
fn the_fast_path_rotates_and_declines_what_it_does_not_know() {
    let snap = rich_table();
    let mut firsts = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in 0..5 {
        let q = query("MULTI.lan.", 1, true, Some((1232, 0)), 0).unwrap();
        assert!(crate::fast::answer(&snap.fast, &q, r, &mut out).is_some());
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers.len(), 5);
        assert_eq!(
            m.queries[0].name.to_ascii(),
            "MULTI.lan.",
            "the question as asked"
        );
        firsts.insert(m.answers[0].data.to_string());
    }
    assert_eq!(firsts.len(), 5, "each address first in turn");
    for (name, t) in [("nope.lan.", 1), ("nas.lan.", 16), ("example.com.", 1)] {
        let q = query(name, t, true, None, 0).unwrap();
        assert!(
            crate::fast::answer(&snap.fast, &q, 0, &mut out).is_none(),
            "{name}"
        );
    }
}

#[test]
fn the_corpus_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        check(&bytes);
        n += 1;
    }
    assert!(n >= 5, "the corpus in {} is missing", dir.display());
}

#[test]
fn answers_refusals_formerr_badvers_and_forwarding() {
    let q = query("nas.lan.", 1, true, None, 0).unwrap();
    assert!(matches!(run(&q).0, Verdict::Local(_)));
    let nx = query("nope.lan.", 1, true, None, 0).unwrap();
    let (v, out) = run(&nx);
    assert_eq!(v, Verdict::NxDomain);
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.authoritative && m.authorities.len() == 1);
    let fwd = query("example.com.", 1, true, None, 0).unwrap();
    assert_eq!(run(&fwd).0, Verdict::Forward);
    let mut out = Vec::new();
    let v = wire::handle(
        &table(),
        &acl(),
        &q,
        "203.0.113.7".parse().unwrap(),
        true,
        0,
        || false,
        &mut out,
    );
    assert_eq!(v, Verdict::Refused);
    let v = wire::handle(
        &table(),
        &acl(),
        &q,
        "10.1.1.1".parse().unwrap(),
        true,
        0,
        || true,
        &mut out,
    );
    assert_eq!(v, Verdict::RateLimited);
    let two = query("nas.lan.", 1, true, None, 1).unwrap();
    assert_eq!(run(&two).0, Verdict::Malformed);
    let badvers = query("nas.lan.", 1, true, Some((1232, 1)), 0).unwrap();
    let (v, out) = run(&badvers);
    assert_eq!(v, Verdict::Malformed);
    assert_eq!(
        u16::from(Message::from_vec(&out).unwrap().metadata.response_code),
        16,
        "BADVERS (16, shared with BADSIG)"
    );
    let garbage = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c];
    assert_eq!(run(&garbage).0, Verdict::Malformed);
}

#[test]
fn a_large_answer_over_udp_is_truncated_and_whole_over_tcp() {
    let zone = Name::from_ascii("lan.").unwrap();
    let mut statics = BTreeMap::new();
    let many: Vec<IpAddr> = (0..16u8)
        .flat_map(|i| {
            [
                format!("10.0.1.{i}").parse().unwrap(),
                format!("fd00::{i}").parse().unwrap(),
            ]
        })
        .collect();
    statics.insert("big".to_owned(), many);
    let snap = records::build(
        &zone,
        1,
        &Sources {
            statics: Some(&statics),
            ..Sources::default()
        },
    )
    .0;
    let q = query("big.lan.", 255, true, None, 0).unwrap();
    let mut out = Vec::new();
    wire::handle(
        &snap,
        &acl(),
        &q,
        "10.0.0.9".parse().unwrap(),
        true,
        0,
        || false,
        &mut out,
    );
    let m = Message::from_vec(&out).unwrap();
    assert!(m.metadata.truncation && m.answers.is_empty() && out.len() <= 512);
    wire::handle(
        &snap,
        &acl(),
        &q,
        "10.0.0.9".parse().unwrap(),
        false,
        0,
        || false,
        &mut out,
    );
    let m = Message::from_vec(&out).unwrap();
    assert!(!m.metadata.truncation && m.answers.len() == 32);
}
