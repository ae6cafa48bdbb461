//! The request path, one packet in, one verdict out: parse with hickory-proto, refuse clients
//! outside the local subnets and allow list, apply the rate limit, answer from the snapshot
//! (authoritative, with SOA on negative answers), or say "forward". EDNS0 is honoured (payload
//! up to 1232 bytes, BADVERS for versions above 0); a UDP answer larger than the client's limit
//! is sent truncated (TC) so the client retries over TCP. A malformed packet gets FORMERR when
//! its header is readable and is dropped otherwise; nothing here panics on any input (the
//! property tests in `wire_tests.rs` feed it random and hickory-encoded packets).

use crate::addrs::Cidr;
use crate::snapshot::{Snapshot, Source};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use std::net::IpAddr;

/// The EDNS payload size we advertise and accept at most (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Who may ask.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Local subnets and loopback.
    pub local: Vec<Cidr>,
    /// Configured allow list.
    pub allow: Vec<Cidr>,
    /// Rate-limit exemptions.
    pub exempt: Vec<Cidr>,
}

impl Acl {
    /// Whether `ip` may use the server.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.local.iter().chain(&self.allow).any(|c| c.contains(ip))
    }
    /// Whether `ip` skips the rate limit.
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|c| c.contains(ip))
    }
}

/// What happened to a packet (for the counters, and for the caller to act on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answered from the table.
    Local(Option<Source>),
    /// Answered NXDOMAIN from the table.
    NxDomain,
    /// Not ours: the caller forwards the packet.
    Forward,
    /// Refused: client outside the local subnets and allow list.
    Refused,
    /// Refused: rate limit.
    RateLimited,
    /// FORMERR, NOTIMP or BADVERS.
    Malformed,
    /// Dropped without an answer.
    Dropped,
}

/// Handles one request. `limited` is asked only for allowed clients that are not exempt and
/// returns whether the client is over its limit. The answer, if any, is left in `out`.
#[allow(clippy::too_many_arguments)] // the hot path: no struct to build per packet
pub fn handle(
    snap: &Snapshot,
    acl: &Acl,
    packet: &[u8],
    client: IpAddr,
    udp: bool,
    rotation: usize,
    limited: impl FnOnce() -> bool,
    out: &mut Vec<u8>,
) -> Verdict {
    out.clear();
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Verdict::Dropped; // too short to answer, or a response (never answer those)
    }
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            header_only(packet, ResponseCode::FormErr, out);
            return Verdict::Malformed;
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return Verdict::Dropped;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    let limit = match &req.edns {
        Some(e) => {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            edns.set_version(0);
            resp.set_edns(edns);
            if e.version() > 0 {
                resp.metadata.response_code = ResponseCode::BADVERS;
                encode(&resp, udp, 512, out);
                return Verdict::Malformed;
            }
            e.max_payload().clamp(512, EDNS_PAYLOAD)
        }
        None => 512,
    };
    if !acl.allowed(client) {
        resp.metadata.response_code = ResponseCode::Refused;
        encode(&resp, udp, limit, out);
        return Verdict::Refused;
    }
    if !acl.exempt(client) && limited() {
        resp.metadata.response_code = ResponseCode::Refused;
        encode(&resp, udp, limit, out);
        return Verdict::RateLimited;
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        encode(&resp, udp, limit, out);
        return Verdict::Malformed;
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        encode(&resp, udp, limit, out);
        return Verdict::Malformed;
    };
    let Some(answer) = snap.answer(q, rotation) else {
        return Verdict::Forward;
    };
    resp.metadata.authoritative = true;
    let nx = answer.nxdomain;
    if nx {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    let source = answer.source;
    resp.answers = answer.answers;
    resp.authorities = answer.authority;
    resp.additionals = answer.additional;
    encode(&resp, udp, limit, out);
    if nx {
        Verdict::NxDomain
    } else {
        Verdict::Local(source)
    }
}

/// Encodes `resp` into `out`; over UDP, an answer above `limit` is replaced by its truncated form.
fn encode(resp: &Message, udp: bool, limit: u16, out: &mut Vec<u8>) {
    out.clear();
    match resp.to_vec() {
        Ok(bytes) if !udp || bytes.len() <= usize::from(limit) => out.extend_from_slice(&bytes),
        Ok(_) => {
            if let Ok(bytes) = resp.truncate().to_vec() {
                out.extend_from_slice(&bytes);
            }
        }
        Err(_) => {
            let mut fail = resp.truncate();
            fail.metadata.truncation = false;
            fail.metadata.response_code = ResponseCode::ServFail;
            if let Ok(bytes) = fail.to_vec() {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

/// A 12-byte answer with `rcode`, echoing the request's ID and opcode (for requests we cannot
/// parse, and for SERVFAIL after a failed forward).
pub fn header_only(packet: &[u8], rcode: ResponseCode, out: &mut Vec<u8>) {
    out.clear();
    if packet.len() < 12 {
        return;
    }
    let rc = u16::from(rcode);
    out.extend_from_slice(&packet[..2]);
    out.push(0x80 | (packet[2] & 0x79)); // QR, opcode, RD
    out.push(0x80 | u8::try_from(rc & 0x0f).unwrap_or(2)); // RA, rcode
    out.extend_from_slice(&[0; 8]);
}

/// SERVFAIL for a request we could not forward, with its question echoed when it parses.
pub fn servfail(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(req) = Message::from_vec(packet) {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.metadata.response_code = ResponseCode::ServFail;
        resp.add_queries(req.queries);
        if let Ok(bytes) = resp.to_vec() {
            return bytes;
        }
    }
    header_only(packet, ResponseCode::ServFail, &mut out);
    out
}
