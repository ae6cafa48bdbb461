//! The fast path for the common query: one question, class IN, an uncompressed name, at most an
//! OPT record of version 0, asking A or AAAA of a name the table has. Its answer sections are
//! encoded by hickory-proto when the table is built (one copy per rotation, so several
//! addresses still take turns first); a query copies its header and question, appends them and
//! an OPT when the client sent one. Compression pointers in the prebuilt sections point into the
//! question at offset 12, whose length is the same for every spelling of the name. Anything else
//! — other types, NXDOMAIN, larger answers than the client takes, odd packets — takes the full
//! path in [`crate::wire`], which this path must agree with (see `wire_tests`).

use crate::snapshot::{Snapshot, Source};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use std::collections::HashMap;

/// Most rotations kept per name (a name with more addresses rotates among the first 16 starts).
pub const MAX_VARIANTS: usize = 16;

/// One prebuilt answer.
#[derive(Debug)]
pub struct Prebuilt {
    /// Header byte 3 without RA (the rcode) and the AA bit for byte 2.
    rcode: u8,
    /// Answer, authority, additional counts.
    counts: [u8; 6],
    /// The sections after the question, one per rotation.
    variants: Vec<Box<[u8]>>,
    /// Which source produced it.
    pub source: Option<Source>,
}

/// Prebuilt answers by lower-case wire name followed by the query type.
pub type Table = HashMap<Box<[u8]>, Prebuilt>;

/// The lower-case wire form of `name` followed by `qtype`.
fn key(name: &Name, qtype: RecordType) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    for label in name.iter() {
        k.push(u8::try_from(label.len()).unwrap_or(63));
        k.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    k.push(0);
    k.extend_from_slice(&u16::from(qtype).to_be_bytes());
    k
}

/// Builds the table for every name with addresses.
pub fn build(snap: &Snapshot) -> Table {
    let mut table = Table::new();
    for (name, host) in &snap.hosts {
        for (qtype, count) in [
            (RecordType::A, host.v4.len()),
            (RecordType::AAAA, host.v6.len()),
        ] {
            let mut variants = Vec::new();
            let mut head = None;
            for r in 0..count.clamp(1, MAX_VARIANTS) {
                let Some(answer) = snap.answer(&Query::query(name.clone(), qtype), r) else {
                    break;
                };
                let mut m = Message::new(0, MessageType::Response, OpCode::Query);
                m.metadata.authoritative = true;
                m.add_query(Query::query(name.clone(), qtype));
                m.answers = answer.answers;
                m.authorities = answer.authority;
                m.additionals = answer.additional;
                let Ok(bytes) = m.to_vec() else { break };
                let qlen = key(name, qtype).len() + 2;
                let Some(rest) = bytes.get(12 + qlen..) else {
                    break;
                };
                head = Some((
                    bytes[3] & 0x0f,
                    [bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11]],
                ));
                variants.push(rest.to_vec().into_boxed_slice());
            }
            if let Some((rcode, counts)) = head {
                let source = Some(host.source);
                table.insert(
                    key(name, qtype).into_boxed_slice(),
                    Prebuilt {
                        rcode,
                        counts,
                        variants,
                        source,
                    },
                );
            }
        }
    }
    table
}

/// The client's OPT record, if any: (payload size).
fn opt(packet: &[u8], at: usize) -> Option<Option<u16>> {
    if at == packet.len() {
        return Some(None);
    }
    let o = packet.get(at..at + 11)?;
    // root name, type 41, version 0 (the extended rcode byte must be 0 in a query)
    if o[0] != 0 || o[1..3] != [0, 41] || o[5] != 0 || o[6] != 0 {
        return None;
    }
    let rdlen = usize::from(u16::from_be_bytes([o[9], o[10]]));
    (at + 11 + rdlen == packet.len()).then_some(Some(u16::from_be_bytes([o[3], o[4]])))
}

/// Answers `packet` from `table` into `out` if it is the common case; `None` sends it down
/// the full path. The caller has already applied the ACL and the rate limit.
pub fn answer(
    table: &Table,
    packet: &[u8],
    rotation: usize,
    out: &mut Vec<u8>,
) -> Option<Option<Source>> {
    let h = packet.get(..12)?;
    // a query, opcode QUERY, not truncated; one question, no answers or authority, ≤ 1 additional
    if h[2] & 0xfa != 0 || h[4..10] != [0, 1, 0, 0, 0, 0] || h[10] != 0 || h[11] > 1 {
        return None;
    }
    let mut k = [0u8; 260];
    let mut at = 12;
    let mut len = 0;
    loop {
        let l = usize::from(*packet.get(at)?);
        if l > 63 || len + l + 1 > 255 {
            return None; // a compression pointer, or too long
        }
        k[len] = l as u8;
        for i in 0..l {
            k[len + 1 + i] = packet.get(at + 1 + i)?.to_ascii_lowercase();
        }
        len += l + 1;
        at += l + 1;
        if l == 0 {
            break;
        }
    }
    let qt = packet.get(at..at + 4)?;
    if qt[2..4] != [0, 1] {
        return None; // class IN only
    }
    k[len] = qt[0];
    k[len + 1] = qt[1];
    let question_end = at + 4;
    let edns = opt(packet, question_end)?;
    if h[11] == 1 && edns.is_none() || h[11] == 0 && edns.is_some() {
        return None;
    }
    let pre = table.get(&k[..len + 2])?;
    let body = pre.variants.get(rotation % pre.variants.len().max(1))?;
    let limit = edns.map_or(512, |s| {
        usize::from(s.clamp(512, crate::wire::EDNS_PAYLOAD))
    });
    let total = question_end + body.len() + if edns.is_some() { 11 } else { 0 };
    if total > limit {
        return None;
    }
    out.clear();
    out.extend_from_slice(&h[..2]);
    out.push(0x80 | 0x04 | (h[2] & 0x01)); // QR, AA, RD as asked
    out.push(0x80 | (h[3] & 0x10) | pre.rcode); // RA, CD as asked, rcode
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&pre.counts[..4]);
    let ar = u16::from_be_bytes([pre.counts[4], pre.counts[5]]) + u16::from(edns.is_some());
    out.extend_from_slice(&ar.to_be_bytes());
    out.extend_from_slice(&packet[12..question_end]);
    out.extend_from_slice(body);
    if edns.is_some() {
        let size = crate::wire::EDNS_PAYLOAD.to_be_bytes();
        out.extend_from_slice(&[0, 0, 41, size[0], size[1], 0, 0, 0, 0, 0, 0]);
    }
    Some(pre.source)
}
