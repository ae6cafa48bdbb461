//! The answer table the hot path reads: every local name with its source, addresses and TTL,
//! the services' SRV/TXT data, the PTR names of the private addresses Koi knows, and the zone's
//! SOA. Built off the hot path by [`crate::records`] and swapped in whole (arc-swap), so a query
//! never takes a lock. [`Snapshot::answer`] turns one question into records or "forward it".

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// TTL of the SOA and of negative answers.
pub const NEGATIVE_TTL: u32 = 30;

/// Where a name came from, in priority order (the first source with the name wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `koi dns add`.
    Static,
    /// A certmesh member's host name or SAN.
    Certmesh,
    /// An mDNS host or service alias.
    Mdns,
}

impl Source {
    /// Its name in answers and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Certmesh => "certmesh",
            Self::Mdns => "mdns",
        }
    }
}

/// A name with addresses.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// Source.
    pub source: Source,
    /// What produced it (`static entry`, `member stone-05`, `service _grafana._tcp on b`).
    pub detail: String,
    /// IPv4 addresses.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub v6: Vec<Ipv6Addr>,
    /// TTL.
    pub ttl: u32,
}

/// One instance of a service, for SRV and TXT.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The target host name in the zone.
    pub target: Name,
    /// Port.
    pub port: u16,
    /// TXT strings `key=value`.
    pub txt: Vec<String>,
}

/// What one question gets.
#[derive(Debug, Default)]
pub struct Answer {
    /// Answer records.
    pub answers: Vec<Record>,
    /// Authority records (the SOA of a negative answer).
    pub authority: Vec<Record>,
    /// Additional records (SRV targets' addresses).
    pub additional: Vec<Record>,
    /// NXDOMAIN.
    pub nxdomain: bool,
    /// Which source produced it.
    pub source: Option<Source>,
}

/// The table.
#[derive(Debug)]
pub struct Snapshot {
    /// The zone.
    pub zone: Name,
    /// Its SOA record.
    pub soa: Record,
    /// Names with addresses.
    pub hosts: HashMap<Name, HostEntry>,
    /// Service names (`_grafana._tcp.lan.`) with instances.
    pub services: HashMap<Name, Vec<Instance>>,
    /// Reverse names of known private addresses.
    pub ptr: HashMap<Name, Name>,
    /// Prebuilt answers for the common queries ([`crate::fast`]).
    pub fast: crate::fast::Table,
}

impl Snapshot {
    /// An empty table for `zone`.
    pub fn empty(zone: Name, serial: u32) -> Self {
        let mname = zone.prepend_label("ns").unwrap_or_else(|_| zone.clone());
        let rname = zone
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| zone.clone());
        let soa = SOA::new(mname, rname, serial, 3600, 600, 86400, NEGATIVE_TTL);
        Self {
            soa: Record::from_rdata(zone.clone(), NEGATIVE_TTL, RData::SOA(soa)),
            zone,
            hosts: HashMap::new(),
            services: HashMap::new(),
            ptr: HashMap::new(),
            fast: HashMap::new(),
        }
    }

    /// Whether a name is in the zone.
    pub fn in_zone(&self, name: &Name) -> bool {
        self.zone.zone_of(name)
    }

    /// Answers a question from the table; `None` means it is not ours (forward it). `rotation`
    /// picks which address comes first when a name has several.
    pub fn answer(&self, q: &Query, rotation: usize) -> Option<Answer> {
        let name = &q.name;
        let qt = q.query_type;
        let mut out = Answer::default();
        if let Some(target) = self.ptr.get(name) {
            if matches!(qt, RecordType::PTR | RecordType::ANY) {
                out.answers.push(Record::from_rdata(
                    name.clone(),
                    NEGATIVE_TTL * 10,
                    RData::PTR(PTR(target.clone())),
                ));
            }
            return Some(out);
        }
        if !self.in_zone(name) {
            return None;
        }
        if name == &self.zone {
            if matches!(qt, RecordType::SOA | RecordType::ANY) {
                out.answers.push(self.soa.clone());
            } else {
                out.authority.push(self.soa.clone());
            }
            return Some(out);
        }
        if let Some(h) = self.hosts.get(name) {
            out.source = Some(h.source);
            if matches!(qt, RecordType::A | RecordType::ANY) {
                push_rotated(&mut out.answers, &h.v4, rotation, |a| {
                    Record::from_rdata(name.clone(), h.ttl, RData::A(A(a)))
                });
            }
            if matches!(qt, RecordType::AAAA | RecordType::ANY) {
                push_rotated(&mut out.answers, &h.v6, rotation, |a| {
                    Record::from_rdata(name.clone(), h.ttl, RData::AAAA(AAAA(a)))
                });
            }
        } else if let Some(instances) = self.services.get(name) {
            out.source = Some(Source::Mdns);
            for i in instances {
                if matches!(qt, RecordType::SRV | RecordType::ANY) {
                    let srv = SRV::new(0, 0, i.port, i.target.clone());
                    out.answers
                        .push(Record::from_rdata(name.clone(), 30, RData::SRV(srv)));
                    if let Some(h) = self.hosts.get(&i.target) {
                        for a in &h.v4 {
                            out.additional.push(Record::from_rdata(
                                i.target.clone(),
                                h.ttl,
                                RData::A(A(*a)),
                            ));
                        }
                        for a in &h.v6 {
                            out.additional.push(Record::from_rdata(
                                i.target.clone(),
                                h.ttl,
                                RData::AAAA(AAAA(*a)),
                            ));
                        }
                    }
                }
                if matches!(qt, RecordType::TXT | RecordType::ANY) {
                    out.answers.push(Record::from_rdata(
                        name.clone(),
                        30,
                        RData::TXT(TXT::new(i.txt.clone())),
                    ));
                }
            }
        } else {
            out.nxdomain = true;
        }
        if out.answers.is_empty() {
            out.authority.push(self.soa.clone());
        }
        Some(out)
    }
}

fn push_rotated<T: Copy>(
    out: &mut Vec<Record>,
    list: &[T],
    rotation: usize,
    make: impl Fn(T) -> Record,
) {
    if list.is_empty() {
        return;
    }
    let start = rotation % list.len();
    for k in 0..list.len() {
        out.push(make(list[(start + k) % list.len()]));
    }
}
