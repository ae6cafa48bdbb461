//! Building the answer table from the three sources, in priority order: static entries, then
//! certmesh members (host name and SANs inside the zone), then mDNS (hosts: `b.local` → `b.lan`;
//! service aliases: `_grafana._tcp` on b → `grafana.lan`, plus `grafana-b.lan` per instance, and
//! SRV/TXT at `_grafana._tcp.lan`). The first source with a name wins; within mDNS, host names
//! win over service aliases, and every instance of one service adds its host's addresses to the
//! alias. Overlaps are reported so the caller logs each once. Addresses that are not private are
//! dropped here (logged at debug), so no answer ever carries one.

use crate::addrs;
use crate::snapshot::{HostEntry, Instance, Snapshot, Source};
use hickory_proto::rr::Name;
use koi_mdns_api::ServiceRecord;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// TTL of static names.
pub const STATIC_TTL: u32 = 300;
/// TTL of certmesh names.
pub const CERTMESH_TTL: u32 = 300;
/// TTL of mDNS names (they come and go).
pub const MDNS_TTL: u32 = 30;

/// A certmesh roster member (contract: `certmesh/members`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Member {
    /// Host name (`stone-05`).
    pub host: String,
    /// Names on its certificate.
    #[serde(default)]
    pub names: Vec<String>,
    /// Its addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A service alias created from mDNS (what `dns.alias.created` reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Alias {
    /// The alias (`grafana.lan`).
    pub alias: String,
    /// The service type (`_grafana._tcp`).
    pub service_type: String,
    /// The hosts (first labels, `stone-05`) whose instances back it.
    pub hosts: Vec<String>,
}

/// The inputs.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// Static entries (name → addresses).
    pub statics: Option<&'a BTreeMap<String, Vec<IpAddr>>>,
    /// Certmesh members.
    pub members: &'a [Member],
    /// mDNS services by full name.
    pub services: Option<&'a BTreeMap<String, ServiceRecord>>,
    /// RFC 6598 allowed.
    pub cgnat: bool,
}

/// What a build produced besides the table.
#[derive(Debug, Default)]
pub struct Built {
    /// Names two sources (or two rules) both wanted: (name, kept source, dropped source).
    pub overlaps: Vec<(String, &'static str, &'static str)>,
    /// Service aliases by alias name.
    pub aliases: BTreeMap<String, Alias>,
    /// Addresses dropped because they are not private.
    pub dropped_public: usize,
}

/// Lower-case single label checked for DNS use.
pub fn label(s: &str) -> Option<String> {
    let l = s.to_ascii_lowercase();
    let ok = !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-');
    ok.then_some(l)
}

/// `name` as a name in `zone`: a single label gets the zone appended; a name already in the
/// zone is kept; anything else is `None`.
pub fn in_zone(name: &str, zone: &Name) -> Option<Name> {
    let t = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if t.is_empty() || t.len() > 250 || t.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    if !t.split('.').all(|l| label(l).is_some()) {
        return None;
    }
    let full = if t.contains('.') {
        Name::from_ascii(format!("{t}.")).ok()?
    } else {
        Name::from_ascii(format!("{t}."))
            .ok()?
            .append_domain(zone)
            .ok()?
    };
    (zone.zone_of(&full) && &full != zone).then_some(full)
}

/// Parses an address as mDNS or a roster gives it (link-local may carry `%scope`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.split('%')
        .next()?
        .trim()
        .parse::<IpAddr>()
        .ok()
        .map(addrs::canonical)
}

struct Acc {
    snap: Snapshot,
    built: Built,
    cgnat: bool,
}

impl Acc {
    fn keep(&mut self, ips: impl IntoIterator<Item = IpAddr>, what: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for ip in ips {
            if addrs::is_private(ip, self.cgnat) {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            } else {
                self.built.dropped_public += 1;
                tracing::debug!(
                    "dropped {ip} for {what}: local names resolve only to private addresses"
                );
            }
        }
        out
    }

    fn insert(
        &mut self,
        name: Name,
        source: Source,
        detail: String,
        ips: Vec<IpAddr>,
        ttl: u32,
        rule: &'static str,
    ) {
        if ips.is_empty() {
            return;
        }
        if let Some(e) = self.snap.hosts.get(&name) {
            if e.source != source || e.detail != detail {
                self.built
                    .overlaps
                    .push((name.to_ascii(), e.source.as_str(), rule));
            }
            return;
        }
        let entry = HostEntry {
            source,
            detail,
            v4: ips
                .iter()
                .filter_map(|i| match i {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            v6: ips
                .iter()
                .filter_map(|i| match i {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            ttl,
        };
        if source != Source::Mdns || !rule.contains("alias") {
            for ip in &ips {
                self.snap
                    .ptr
                    .entry(Name::from(*ip))
                    .or_insert_with(|| name.clone());
            }
        }
        self.snap.hosts.insert(name, entry);
    }
}

/// The mDNS host label of a service (`b.local.` → `b`).
pub fn mdns_host(host: &str) -> Option<String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let h = h.strip_suffix(".local").unwrap_or(&h);
    label(h)
}

/// The alias label of a service type (`_grafana._tcp` → `grafana`).
pub fn alias_label(service_type: &str) -> Option<String> {
    let first = service_type.split('.').next()?;
    label(first.strip_prefix('_')?)
}

/// Builds the table for `zone`.
pub fn build(zone: &Name, serial: u32, src: &Sources<'_>) -> (Snapshot, Built) {
    let mut acc = Acc {
        snap: Snapshot::empty(zone.clone(), serial),
        built: Built::default(),
        cgnat: src.cgnat,
    };
    if let Some(statics) = src.statics {
        for (name, ips) in statics {
            if let Some(n) = in_zone(name, zone) {
                let ips = acc.keep(ips.iter().copied(), name);
                acc.insert(
                    n,
                    Source::Static,
                    "static entry".into(),
                    ips,
                    STATIC_TTL,
                    "static",
                );
            }
        }
    }
    for m in src.members {
        let Some(host) = label(&m.host) else { continue };
        let ips = acc.keep(m.addresses.iter().filter_map(|a| parse_ip(a)), &m.host);
        let names = std::iter::once(host.clone()).chain(m.names.iter().cloned());
        for name in names.take(64) {
            if let Some(n) = in_zone(&name, zone) {
                acc.insert(
                    n,
                    Source::Certmesh,
                    format!("member {host}"),
                    ips.clone(),
                    CERTMESH_TTL,
                    "certmesh",
                );
            }
        }
    }
    let Some(services) = src.services else {
        acc.snap.fast = crate::fast::build(&acc.snap);
        return (acc.snap, acc.built);
    };
    // mDNS hosts first (all addresses of every service on the host), then aliases.
    let mut hosts: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for s in services.values() {
        let Some(h) = mdns_host(&s.host) else {
            continue;
        };
        let ips = acc.keep(s.addresses.iter().filter_map(|a| parse_ip(a)), &s.fullname);
        let e = hosts.entry(h).or_default();
        for ip in ips {
            if !e.contains(&ip) {
                e.push(ip);
            }
        }
    }
    for (h, ips) in &hosts {
        if let Some(n) = in_zone(h, zone) {
            acc.insert(
                n,
                Source::Mdns,
                format!("mDNS host {h}.local"),
                ips.clone(),
                MDNS_TTL,
                "mdns host",
            );
        }
    }
    let mut aliases: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut disambiguated: BTreeMap<String, (String, String)> = BTreeMap::new();
    for s in services.values() {
        let (Some(a), Some(h)) = (alias_label(&s.service_type), mdns_host(&s.host)) else {
            continue;
        };
        if hosts.get(&h).is_none_or(|ips| ips.is_empty()) {
            continue;
        }
        aliases
            .entry(a.clone())
            .or_insert_with(|| (s.service_type.clone(), BTreeSet::new()))
            .1
            .insert(h.clone());
        if let Some(d) = label(&format!("{a}-{h}")) {
            disambiguated.insert(d, (s.service_type.clone(), h.clone()));
        }
        let Ok(target) = Name::from_ascii(format!("{h}.")).and_then(|n| n.append_domain(zone))
        else {
            continue;
        };
        let Ok(svc) = Name::from_ascii(format!(
            "{}.",
            s.service_type.trim_end_matches('.').to_ascii_lowercase()
        ))
        .and_then(|n| n.append_domain(zone)) else {
            continue;
        };
        let txt = s
            .txt
            .iter()
            .take(32)
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let list = acc.snap.services.entry(svc).or_default();
        if list.len() < 64 {
            list.push(Instance {
                target,
                port: s.port,
                txt,
            });
        }
    }
    for (a, (service_type, backing)) in &aliases {
        let Some(n) = in_zone(a, zone) else { continue };
        let mut ips = Vec::new();
        for h in backing {
            for ip in hosts.get(h).into_iter().flatten() {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
        }
        let detail = format!("mDNS service {service_type}");
        let before = acc.snap.hosts.len();
        acc.insert(n.clone(), Source::Mdns, detail, ips, MDNS_TTL, "mdns alias");
        if acc.snap.hosts.len() > before {
            let alias = n.to_ascii().trim_end_matches('.').to_owned();
            acc.built.aliases.insert(
                alias.clone(),
                Alias {
                    alias,
                    service_type: service_type.clone(),
                    hosts: backing.iter().cloned().collect(),
                },
            );
        }
    }
    for (d, (service_type, h)) in &disambiguated {
        if let (Some(n), Some(ips)) = (in_zone(d, zone), hosts.get(h)) {
            acc.insert(
                n,
                Source::Mdns,
                format!("mDNS service {service_type} on {h}"),
                ips.clone(),
                MDNS_TTL,
                "mdns alias (instance)",
            );
        }
    }
    acc.snap.fast = crate::fast::build(&acc.snap);
    (acc.snap, acc.built)
}
