//! Recording refused joins without letting a LAN client grow the audit log at will.
//!
//! Every refusal is audited, but not every one gets its own entry:
//! - **Bounded fields.** Client-supplied text (host name, operator) and the refusal's detail are
//!   stored once each, control characters (C0, DEL, C1, and bidirectional overrides) replaced by
//!   visible escapes (`\e`, `\x07`, `\u{202e}`), and cut to [`MAX_NAME_CHARS`] / [`MAX_DETAIL_CHARS`].
//!   An entry is at most about 1.5 KB whatever the request held.
//! - **Coalescing.** Within a [`WINDOW`], the first [`INDIVIDUAL_PER_PEER`] refusals from one peer
//!   (an IPv4 address, or an IPv6 /64, since a host can pick any address in its /64) are written
//!   as they happen; later ones only bump a per-reason counter, written as one `enrollment_refused`
//!   entry with `count`, `first_at` and `last_at` when the window ends, when the operator reads
//!   the log, at unlock and when the plugin stops. At most [`MAX_PEERS`] peers are tracked per
//!   window; refusals from further peers are counted together under `peer: "many peers"`.
//!   So a flood costs at most about `MAX_PEERS × (INDIVIDUAL_PER_PEER + reasons) × 1.5 KB`
//!   (under 1 MB) a minute, however fast it is.
//! - **While locked** the same records go to `audit-pending.jsonl`, which stops growing at
//!   [`PENDING_MAX_BYTES`]; refusals beyond it are counted in memory and signed in at unlock.
//!   Counts not yet written are lost if the process is killed (the first refusals of every peer
//!   are always on disk).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// Length of a coalescing window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals from one peer written individually per window.
pub const INDIVIDUAL_PER_PEER: u32 = 8;
/// Peers tracked per window; further peers share one counter.
pub const MAX_PEERS: usize = 32;
/// Host names and operator names are cut to this many characters (after escaping).
pub const MAX_NAME_CHARS: usize = 64;
/// A refusal's detail text is cut to this many characters (after escaping).
pub const MAX_DETAIL_CHARS: usize = 300;
/// `audit-pending.jsonl` is not appended to beyond this size.
pub const PENDING_MAX_BYTES: u64 = 256 * 1024;
/// Pending lines signed in at one unlock (a file written before the cap existed can be larger).
pub const MAX_PENDING_LINES: usize = 2048;
/// The `peer` of the counter shared by peers beyond [`MAX_PEERS`].
pub const MANY_PEERS: &str = "many peers";

/// `text` with control characters escaped (the host's rule, `koi_protocol::terminal`; a
/// backslash is doubled so an escape in the input cannot pass for one of ours) and cut to `max`
/// characters (a cut is marked with `…[+N bytes]`). Safe to print on any terminal.
pub fn bounded(text: &str, max: usize) -> String {
    use koi_sdk::protocol::terminal;
    let mut out = String::new();
    let mut piece = String::new();
    let mut chars = 0usize;
    for (i, c) in text.char_indices() {
        piece.clear();
        match c {
            '\\' => piece.push_str("\\\\"),
            c if terminal::must_escape(c) => terminal::push_escaped(&mut piece, c),
            c => piece.push(c),
        }
        let width = piece.chars().count();
        if chars + width > max {
            out.push_str(&format!("…[+{} bytes]", text.len() - i));
            return out;
        }
        chars += width;
        out.push_str(&piece);
    }
    out
}

/// A value bounded for storage: strings escaped and cut to [`MAX_DETAIL_CHARS`], objects to
/// their first 16 keys, arrays to their first 16 items. Used for refusals recorded by earlier
/// versions, which stored client text as it came.
pub fn bounded_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(bounded(s, MAX_DETAIL_CHARS)),
        Value::Array(a) => Value::Array(a.iter().take(16).map(bounded_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .take(16)
                .map(|(k, v)| (bounded(k, MAX_NAME_CHARS), bounded_value(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

/// The `'static` form of a reason read back from a record (unknown ones become "other").
pub fn static_reason(reason: &str) -> &'static str {
    const KNOWN: [&str; 10] = [
        "bad_request",
        "not_a_ca",
        "ca_locked",
        "enrollment_closed",
        "bad_code",
        "locked_out",
        "not_permitted",
        "internal",
        "not_a_member",
        "certificate_expired",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("other")
}

/// One audit entry to write: `enrollment_refused` by `actor` with `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Who: the (bounded) host name the client gave, or "system" for counters.
    pub actor: String,
    /// What.
    pub details: Value,
}

/// A refusal as the API saw it (raw, unbounded client text).
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// Connection source.
    pub peer: IpAddr,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// What the refusal said.
    pub detail: &'a str,
    /// Host name the client sent.
    pub hostname: &'a str,
    /// Operator the client sent.
    pub operator: Option<&'a str>,
}

impl Refused<'_> {
    /// The entry for this refusal alone: each client-supplied value once, bounded.
    pub fn record(&self) -> Record {
        Record {
            actor: bounded(self.hostname, MAX_NAME_CHARS),
            details: json!({
                "reason": self.reason,
                "detail": bounded(self.detail, MAX_DETAIL_CHARS),
                "peer": self.peer.to_string(),
                "operator": self.operator.map(|o| bounded(o, MAX_NAME_CHARS)),
            }),
        }
    }
}

/// The key refusals are grouped by: an IPv4 address, or an IPv6 /64.
pub fn peer_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[derive(Debug)]
struct Counter {
    count: u64,
    first_at: OffsetDateTime,
    last_at: OffsetDateTime,
}

#[derive(Debug, Default)]
struct PeerWindow {
    written: u32,
    counters: BTreeMap<&'static str, Counter>,
}

/// The coalescing state of one CA process.
#[derive(Debug, Default)]
pub struct Coalescer {
    window_start: Option<OffsetDateTime>,
    peers: BTreeMap<String, PeerWindow>,
    many: BTreeMap<&'static str, Counter>,
    /// Refusals not written because the pending file was full, by reason.
    unstored: BTreeMap<&'static str, Counter>,
}

fn bump(map: &mut BTreeMap<&'static str, Counter>, reason: &'static str, now: OffsetDateTime) {
    let c = map.entry(reason).or_insert(Counter {
        count: 0,
        first_at: now,
        last_at: now,
    });
    c.count += 1;
    c.last_at = now;
}

fn summaries(
    map: &mut BTreeMap<&'static str, Counter>,
    peer: &str,
    note: &str,
    out: &mut Vec<Record>,
) {
    for (reason, c) in std::mem::take(map) {
        out.push(Record {
            actor: "system".into(),
            details: json!({
                "reason": reason,
                "peer": peer,
                "count": c.count,
                "first_at": crate::names::rfc3339(c.first_at),
                "last_at": crate::names::rfc3339(c.last_at),
                "coalesced": note,
            }),
        });
    }
}

impl Coalescer {
    /// Decides what a refusal at `now` writes: the entries of a window that just ended (if any),
    /// then this refusal's own entry if its peer still has individual entries left.
    pub fn admit(&mut self, refused: &Refused<'_>, now: OffsetDateTime) -> Vec<Record> {
        let mut out = Vec::new();
        let expired = self
            .window_start
            .is_some_and(|start| now - start >= WINDOW || now < start);
        if expired {
            out = self.flush();
            self.peers.clear();
            self.window_start = None;
        }
        self.window_start.get_or_insert(now);
        let key = peer_key(refused.peer);
        let tracked = self.peers.contains_key(&key) || self.peers.len() < MAX_PEERS;
        if !tracked {
            bump(&mut self.many, refused.reason, now);
            return out;
        }
        let peer = self.peers.entry(key).or_default();
        if peer.written < INDIVIDUAL_PER_PEER {
            peer.written += 1;
            out.push(refused.record());
        } else {
            bump(&mut peer.counters, refused.reason, now);
        }
        out
    }

    /// Notes a refusal that could not be stored (the pending file is full).
    pub fn unstored(&mut self, reason: &'static str, now: OffsetDateTime) {
        bump(&mut self.unstored, reason, now);
    }

    /// The counted entries so far, as records; the counters restart (the window and each peer's
    /// individual allowance do not).
    pub fn flush(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        for (key, peer) in &mut self.peers {
            summaries(
                &mut peer.counters,
                key,
                "further refusals from this peer in the window",
                &mut out,
            );
        }
        summaries(
            &mut self.many,
            MANY_PEERS,
            "refusals from peers beyond the tracked limit",
            &mut out,
        );
        summaries(
            &mut self.unstored,
            "any",
            "refusals while locked that did not fit in audit-pending.jsonl",
            &mut out,
        );
        out
    }

    /// Whether anything is counted and not yet written.
    pub fn has_counts(&self) -> bool {
        !self.many.is_empty()
            || !self.unstored.is_empty()
            || self.peers.values().any(|p| !p.counters.is_empty())
    }
}

#[cfg(test)]
#[path = "refusals_tests.rs"]
mod tests;
