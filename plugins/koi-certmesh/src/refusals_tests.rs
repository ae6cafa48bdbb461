//! Unit tests of refusal bounding and coalescing.

use super::*;

fn refused(peer: &str, reason: &'static str) -> Refused<'static> {
    Refused {
        peer: peer.parse().unwrap(),
        reason,
        detail: "nope",
        hostname: "h",
        operator: None,
    }
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
}

#[test]
fn control_characters_are_escaped_and_long_text_is_cut() {
    assert_eq!(bounded("a\u{1b}[31mb\u{7}", 64), "a\\e[31mb\\x07");
    assert_eq!(bounded("x\u{9b}y\u{7f}\\", 64), "x\\u{9b}y\\x7f\\\\");
    assert_eq!(bounded("\u{202e}txt\u{2028}", 64), "\\u{202e}txt\\u{2028}");
    let long = "\u{1b}".repeat(60_000);
    let cut = bounded(&long, MAX_NAME_CHARS);
    assert!(cut.chars().count() < MAX_NAME_CHARS + 24, "{cut}");
    assert!(!cut.contains('\u{1b}'));
    assert!(cut.ends_with("bytes]"), "{cut}");
}

#[test]
fn a_refusal_entry_stores_each_client_value_once_and_bounded() {
    let host = format!("{}\u{7}", "h".repeat(70_000));
    let op = "o\u{1b}".repeat(30_000);
    let r = Refused {
        peer: "10.0.0.9".parse().unwrap(),
        reason: "bad_request",
        detail: &host,
        hostname: &host,
        operator: Some(&op),
    }
    .record();
    let text = serde_json::to_string(&r.details).unwrap() + &r.actor;
    assert!(text.len() < 1000, "{} bytes", text.len());
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'));
    assert!(r.details.get("hostname").is_none());
}

#[test]
fn a_flood_from_one_peer_is_a_few_entries_then_one_counted_entry() {
    let mut c = Coalescer::default();
    let mut written = Vec::new();
    for i in 0..5000 {
        written.extend(c.admit(&refused("10.0.0.9", "bad_request"), at(i % 50)));
    }
    assert_eq!(written.len(), INDIVIDUAL_PER_PEER as usize);
    assert!(c.has_counts());
    let flushed = c.flush();
    assert_eq!(flushed.len(), 1);
    assert_eq!(
        flushed[0].details["count"],
        5000 - u64::from(INDIVIDUAL_PER_PEER)
    );
    assert_eq!(flushed[0].details["reason"], "bad_request");
    assert!(
        flushed[0].details["first_at"].is_string() && flushed[0].details["last_at"].is_string()
    );
    assert!(!c.has_counts());
    // The window's allowance is spent: still counted after a flush.
    assert!(
        c.admit(&refused("10.0.0.9", "bad_request"), at(55))
            .is_empty()
    );
}

#[test]
fn a_new_window_writes_the_old_counts_and_restores_the_allowance() {
    let mut c = Coalescer::default();
    for _ in 0..20 {
        c.admit(&refused("10.0.0.9", "bad_code"), at(0));
    }
    let next = c.admit(&refused("10.0.0.9", "bad_code"), at(61));
    assert_eq!(next.len(), 2, "{next:?}");
    assert_eq!(next[0].details["count"], 12);
    assert_eq!(next[1].details["reason"], "bad_code");
    assert!(next[1].details.get("count").is_none());
}

#[test]
fn peers_beyond_the_limit_and_ipv6_neighbours_share_counters() {
    let mut c = Coalescer::default();
    let mut written = 0;
    for i in 0..1000u32 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        written += c.admit(&refused(&ip, "bad_code"), at(1)).len();
    }
    assert_eq!(written, MAX_PEERS);
    let flushed = c.flush();
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].details["peer"], MANY_PEERS);
    assert_eq!(flushed[0].details["count"], 1000 - MAX_PEERS as u64);

    let mut c = Coalescer::default();
    let mut written = 0;
    for i in 0..100u32 {
        let ip = format!("fd00:1:2:3::{:x}", i + 1);
        written += c.admit(&refused(&ip, "bad_code"), at(1)).len();
    }
    assert_eq!(written, INDIVIDUAL_PER_PEER as usize);
    assert_eq!(c.flush()[0].details["peer"], "fd00:1:2:3::/64");
}

#[test]
fn old_unbounded_values_are_bounded_when_signed_in() {
    let v = json!({"hostname": "\u{1b}".repeat(100_000), "n": 3});
    let b = bounded_value(&v);
    assert!(serde_json::to_string(&b).unwrap().len() < 2000);
    assert_eq!(b["n"], 3);
}
