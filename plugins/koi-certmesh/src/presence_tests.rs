//! Unit tests of CA presence: reading advertisements, the standby's watch on the primary.

use super::*;
use std::collections::BTreeMap;

fn record(txt: &[(&str, &str)]) -> ServiceRecord {
    ServiceRecord {
        instance: "koi certmesh CA on a".into(),
        service_type: "_certmesh._tcp".into(),
        fullname: "x._certmesh._tcp.local.".into(),
        host: "a.local.".into(),
        addresses: vec!["10.0.0.1".into()],
        port: 5641,
        txt: txt
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        first_seen: String::new(),
        last_seen: String::new(),
    }
}

/// A present primary advertisement from `host` (`host.local.`, keyed `host`) with `term`, with
/// no TXT host or endpoint.
fn primary(host: &str, term: u64) -> Sighting {
    Sighting {
        role: PRIMARY,
        term,
        present: true,
        reason: None,
        host: None,
        endpoint: None,
        mdns_host: format!("{host}.local."),
        key: host.into(),
    }
}

#[test]
fn classify_reads_role_and_term_of_this_mesh_only() {
    let fp = "AB:CD";
    let primary = record(&[("fp", "ab:cd"), ("role", "primary"), ("term", "3")]);
    let s = classify("mdns.service.appeared", &primary, None, fp).unwrap();
    assert_eq!((s.role, s.term, s.present), (PRIMARY, 3, true));
    let gone = classify(REMOVED, &primary, Some("unanswered"), fp).unwrap();
    assert_eq!(
        (gone.present, gone.reason.as_deref()),
        (false, Some("unanswered"))
    );
    let bye = classify(REMOVED, &primary, Some("other"), fp).unwrap();
    assert_eq!(bye.reason.as_deref(), Some("goodbye"));
    let old = record(&[("fp", "AB:CD")]);
    assert_eq!(classify("x", &old, None, fp).unwrap().role, PRIMARY);
    let mut standby = record(&[("fp", "AB:CD"), ("role", "standby"), ("term", "1")]);
    assert!(
        classify("x", &standby, None, fp).is_none(),
        "no host in its name"
    );
    standby.instance = "koi certmesh standby on b-1".into();
    let s = classify("x", &standby, None, fp).unwrap();
    assert_eq!((s.role, s.host.as_deref()), (STANDBY, Some("b-1")));
    standby.instance = "koi certmesh standby on b\u{1b}[2J".into();
    assert!(classify("x", &standby, None, fp).is_none());
    // Another mesh, a bad role, a hostile term, another service type: ignored.
    assert!(classify("x", &record(&[("fp", "EE")]), None, fp).is_none());
    for bad in [
        ("role", "boss"),
        ("term", "-1"),
        ("term", "1e3"),
        ("term", ""),
    ] {
        assert!(classify("x", &record(&[("fp", "AB:CD"), bad]), None, fp).is_none());
    }
    let huge = "9".repeat(21);
    assert!(classify("x", &record(&[("fp", "AB:CD"), ("term", &huge)]), None, fp).is_none());
    let mut other = primary.clone();
    other.service_type = "_http._tcp".into();
    assert!(classify("x", &other, None, fp).is_none());
}

#[test]
fn unreachable_only_when_mdns_and_heartbeat_both_failed() {
    let watch = Watch::default();
    let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let mut s = primary("a", 2);
    watch.record(&s, t0);
    let failed = crate::heartbeat::Heartbeat {
        ok: false,
        last_ok_at: Some("1970-01-12T13:46:30Z".into()),
        ..Default::default()
    };
    assert_eq!(
        watch.unreachable_since(Some(&failed)),
        None,
        "mDNS still sees it"
    );
    s.present = false;
    let t1 = t0 + std::time::Duration::from_secs(10);
    watch.record(&s, t1);
    let ok = crate::heartbeat::Heartbeat {
        ok: true,
        ..Default::default()
    };
    assert_eq!(
        watch.unreachable_since(Some(&ok)),
        None,
        "the heartbeat still answers"
    );
    assert_eq!(watch.unreachable_since(None), None);
    // Last good beat (1_000_000 - 10 s) before the appearance at t0: the grace runs from
    // the last positive evidence (t0), not from the removal (t1).
    assert_eq!(watch.unreachable_since(Some(&failed)), Some(t0));
    // A standby's advertisement does not count as the primary.
    s.role = STANDBY;
    s.present = true;
    s.host = Some("b".into());
    watch.record(&s, t1);
    assert_eq!(watch.live_standbys(), vec!["b".to_owned()]);
    assert_eq!(watch.unreachable_since(Some(&failed)), Some(t0));
    assert_eq!(watch.highest_term(), 2);
    // Two primary advertisements: one leaving does not make the primary absent.
    let w2 = Watch::default();
    let mut p = Sighting {
        endpoint: Some("10.0.0.1:5641".into()),
        key: "real".into(),
        ..primary("a", 1)
    };
    w2.record(&p, t0);
    p.key = "forged".into();
    p.term = 99;
    p.endpoint = Some("10.0.0.9:5999".into());
    w2.record(&p, t0);
    assert_eq!(w2.primaries()[0].term, 99, "highest term first");
    p.present = false;
    w2.record(&p, t1);
    assert_eq!(w2.gone_since(), None);
    let left: Vec<(u64, String)> = w2
        .primaries()
        .into_iter()
        .map(|c| (c.term, c.endpoint))
        .collect();
    assert_eq!(left, vec![(1, "10.0.0.1:5641".to_owned())]);
}

#[test]
fn the_grace_runs_from_the_last_positive_evidence_not_from_the_detection() {
    let secs = std::time::Duration::from_secs;
    let t0 = SystemTime::UNIX_EPOCH + secs(2_000_000);
    let watch = Watch::default();
    let mut s = Sighting {
        host: Some("a".into()),
        endpoint: Some("10.0.0.1:5641".into()),
        ..primary("a", 1)
    };
    watch.record(&s, t0);
    // koi-mdns's re-check hears A at t0 + 20 s; another host's answer is no evidence.
    watch.host_seen("A.local.", t0 + secs(20));
    watch.host_seen("c.local.", t0 + secs(30));
    // A dies; the re-check sent at t0 + 40 s goes unanswered, removal at t0 + 56 s.
    s.present = false;
    s.reason = Some("unanswered".into());
    watch.record(&s, t0 + secs(56));
    let beat = |ok: bool, last_ok: Option<SystemTime>| crate::heartbeat::Heartbeat {
        ok,
        last_ok_at: last_ok.map(crate::schedule::rfc3339),
        ..Default::default()
    };
    // Both signals must have failed: a beat that answers means no takeover.
    assert_eq!(watch.unreachable_since(Some(&beat(true, None))), None);
    // The last good beat is older: the grace runs from the re-check it answered.
    assert_eq!(
        watch.unreachable_since(Some(&beat(false, Some(t0 + secs(5))))),
        Some(t0 + secs(20))
    );
    // A good beat after the last mDNS evidence is the later evidence.
    assert_eq!(
        watch.unreachable_since(Some(&beat(false, Some(t0 + secs(50))))),
        Some(t0 + secs(50))
    );
    // A host heard after its primary advertisement left is no longer evidence for it.
    watch.host_seen("a.local.", t0 + secs(60));
    assert_eq!(
        watch.unreachable_since(Some(&beat(false, None))),
        Some(t0 + secs(20))
    );
}

#[test]
fn an_advertisement_missed_by_the_events_is_learned_from_the_cache_once_without_fresh_evidence() {
    let secs = std::time::Duration::from_secs;
    let t0 = SystemTime::UNIX_EPOCH + secs(3_000_000);
    let watch = Watch::default();
    let mut b = Sighting {
        host: Some("b".into()),
        endpoint: Some("10.0.0.2:5641".into()),
        ..primary("b", 2)
    };
    // Its `appeared` event was missed: the cache teaches it, dated by the cache's last_seen.
    assert!(watch.learn_cached(&b, t0));
    assert_eq!(watch.primaries()[0].term, 2);
    assert_eq!(watch.highest_term(), 2);
    // Known now: the cache never overrides what the events said (a removal stays a removal).
    b.present = false;
    watch.record(&b, t0 + secs(30));
    b.present = true;
    assert!(!watch.learn_cached(&b, t0 + secs(40)));
    assert!(watch.primaries().is_empty());
    let failed = crate::heartbeat::Heartbeat::default();
    assert_eq!(watch.unreachable_since(Some(&failed)), Some(t0));
    // A standby's advertisement is learned once too.
    let mut s = b.clone();
    s.role = STANDBY;
    s.key = "s".into();
    s.host = Some("c".into());
    assert!(watch.learn_cached(&s, t0));
    assert!(!watch.learn_cached(&s, t0));
    assert_eq!(watch.live_standbys(), vec!["c".to_owned()]);
}

#[test]
fn a_primary_never_seen_is_absent_from_the_first_look_which_floors_the_grace() {
    let watch = Watch::default();
    let first = watch.gone_since().expect("never seen counts as gone");
    assert_eq!(watch.gone_since(), Some(first), "the first look stays");
    // A last good beat from long before this process started says nothing of the time since.
    let failed = crate::heartbeat::Heartbeat {
        ok: false,
        last_ok_at: Some("2020-01-01T00:00:00Z".into()),
        ..Default::default()
    };
    assert_eq!(watch.unreachable_since(Some(&failed)), Some(first));
    let ok = crate::heartbeat::Heartbeat {
        ok: true,
        ..Default::default()
    };
    assert_eq!(
        watch.unreachable_since(Some(&ok)),
        None,
        "the heartbeat answers"
    );
    let s = primary("a", 1);
    watch.record(&s, first);
    assert_eq!(watch.gone_since(), None, "seen now");
}
