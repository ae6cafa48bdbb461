//! The mesh scope: which DNS names and IP addresses this CA may certify. The same [`Scope`] is
//! written into the root certificate as X.509 name constraints (so every verifier enforces it,
//! even if the CA key leaked) and checked again by [`Scope::check_dns`] / [`Scope::check_ip`]
//! before anything is signed. Rules:
//!
//! - `domains` (from `--domain D`): DNS SANs must equal a domain or be below it.
//! - `subnets` (from `--subnet CIDR`): IP SANs must fall inside one of them.
//! - With domains but no subnets, IP SANs are constrained to the private LAN ranges
//!   ([`PRIVATE_RANGES`]) — otherwise a DNS-only constraint would leave IP names unconstrained.
//! - With no subnets at all, issuance still accepts only private LAN addresses.
//! - Without `--domain`, a new mesh gets [`Scope::mesh_default`]: the zone `lan`, `home.arpa`
//!   (RFC 8375) and `local` (mDNS), with IP SANs in the private ranges — so `localhost`, public
//!   names and public addresses are refused and the root is name-constrained. Only
//!   `create --unconstrained` makes a root without DNS constraints ([`Scope::dns_unconstrained`]).
//! - Names are compared in canonical form ([`crate::names::canonical_name`]: lower case, no
//!   trailing dot, IDNA A-labels). Wildcards, underscores and names that are really IP addresses
//!   are refused.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use rcgen::{CidrSubnet, GeneralSubtree, NameConstraints};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::canonical;

/// Private LAN ranges: RFC 1918, IPv4 link-local, IPv6 unique-local and link-local.
pub const PRIVATE_RANGES: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// The DNS domains of a mesh created without `--domain`: the default zone first (it names
/// members' `host.<zone>` certificates), then `home.arpa` (RFC 8375's home-network domain) and
/// `local` (mDNS names).
pub const DEFAULT_DOMAINS: [&str; 3] = ["lan", "home.arpa", "local"];

/// Refuses `local` and any name under it as a `--domain`: the first domain becomes the mesh's
/// unicast zone (`host.<zone>` names), and `.local` belongs to multicast DNS (RFC 6762), where a
/// unicast zone would collide with every machine's own mDNS name. The default scope already
/// certifies members' `host.local` names.
pub fn refuse_mdns_domain(domain: &str) -> Result<()> {
    let lower = domain.trim().trim_matches('.').to_ascii_lowercase();
    if lower == "local" || lower.ends_with(".local") {
        return Err(Error::InvalidScope {
            input: domain.to_owned(),
            reason: "`.local` names belong to mDNS (RFC 6762), so no unicast zone may be there; \
                     leave out --domain to get the default scope, which already certifies every \
                     member's host.local name, or pick a unicast domain such as lab.example"
                .into(),
        });
    }
    Ok(())
}

/// The private LAN ranges as parsed networks.
pub fn private_ranges() -> Vec<IpNet> {
    PRIVATE_RANGES
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .collect()
}

/// What the CA may certify. Empty lists mean "not constrained by the user".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Permitted DNS suffixes, lower-case, without leading or trailing dot.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Permitted IP networks, normalised to their network address.
    #[serde(default)]
    pub subnets: Vec<IpNet>,
}

impl Scope {
    /// No user constraint: any valid host name, any private LAN address.
    pub fn unrestricted() -> Self {
        Scope::default()
    }

    /// Builds and validates a scope from `--domain` and `--subnet` values.
    pub fn new<D: AsRef<str>, S: AsRef<str>>(domains: &[D], subnets: &[S]) -> Result<Self> {
        let mut out = Scope::default();
        for d in domains {
            let raw = d.as_ref();
            let norm = canonical(raw.trim().trim_start_matches('.')).map_err(|reason| {
                Error::InvalidScope {
                    input: raw.to_owned(),
                    reason,
                }
            })?;
            if !out.domains.contains(&norm) {
                out.domains.push(norm);
            }
        }
        for s in subnets {
            let raw = s.as_ref();
            let net: IpNet = raw.trim().parse().map_err(|_| Error::InvalidScope {
                input: raw.to_owned(),
                reason: "not a CIDR block such as 192.168.1.0/24 or fd00::/64".into(),
            })?;
            if net.trunc() != net {
                return Err(Error::InvalidScope {
                    input: raw.to_owned(),
                    reason: format!(
                        "{} is an address inside a network, not the network; did you mean {}?",
                        net.addr(),
                        net.trunc()
                    ),
                });
            }
            if net.prefix_len() == 0 {
                return Err(Error::InvalidScope {
                    input: raw.to_owned(),
                    reason: "a /0 block permits every address, which is no scope at all".into(),
                });
            }
            if !out.subnets.contains(&net) {
                out.subnets.push(net);
            }
        }
        Ok(out)
    }

    /// The scope of a mesh created without `--domain` (and without `--unconstrained`):
    /// [`DEFAULT_DOMAINS`], plus the given subnets (or, when none, the private ranges).
    pub fn mesh_default<S: AsRef<str>>(subnets: &[S]) -> Result<Self> {
        Scope::new(&DEFAULT_DOMAINS, subnets)
    }

    /// The scope `create` writes: `--unconstrained` gives an unrestricted root (and may not be
    /// combined with `--domain`/`--subnet`); no `--domain` gives [`Scope::mesh_default`].
    pub fn for_create<D: AsRef<str>, S: AsRef<str>>(
        domains: &[D],
        subnets: &[S],
        unconstrained: bool,
    ) -> Result<Self> {
        if unconstrained {
            if let Some(given) = domains
                .iter()
                .map(|d| d.as_ref())
                .chain(subnets.iter().map(|s| s.as_ref()))
                .next()
            {
                return Err(Error::InvalidScope {
                    input: given.to_owned(),
                    reason: "--unconstrained means no scope; pass either --unconstrained or --domain/--subnet".into(),
                });
            }
            return Ok(Scope::unrestricted());
        }
        for d in domains {
            refuse_mdns_domain(d.as_ref())?;
        }
        if domains.is_empty() {
            Scope::mesh_default(subnets)
        } else {
            Scope::new(domains, subnets)
        }
    }

    /// True when the root does not constrain DNS names: a leaked CA key could then sign for any
    /// website. Meshes created by builds before the default scope, and `--unconstrained` ones.
    pub fn dns_unconstrained(&self) -> bool {
        self.domains.is_empty()
    }

    /// True when the user gave neither domains nor subnets.
    pub fn is_unrestricted(&self) -> bool {
        self.domains.is_empty() && self.subnets.is_empty()
    }

    /// The IP networks that IP SANs must fall in: the user's subnets, or else the private ranges.
    pub fn permitted_ip_ranges(&self) -> Vec<IpNet> {
        if self.subnets.is_empty() {
            private_ranges()
        } else {
            self.subnets.clone()
        }
    }

    /// The name-constraints extension for the root certificate, or `None` when unrestricted.
    ///
    /// When DNS names are constrained, IP addresses are constrained too (to the subnets, or to
    /// the private ranges), so a DNS-only constraint cannot be sidestepped with an IP SAN.
    pub fn name_constraints(&self) -> Option<NameConstraints> {
        if self.is_unrestricted() {
            return None;
        }
        let mut permitted: Vec<GeneralSubtree> = self
            .domains
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .collect();
        for net in self.permitted_ip_ranges() {
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                net.network(),
                net.prefix_len(),
            )));
        }
        Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        })
    }

    /// Checks one DNS SAN: syntax, then the domain constraint. Returns the normalised name.
    pub fn check_dns(&self, name: &str) -> Result<String> {
        let trimmed = name.trim();
        if trimmed.parse::<IpAddr>().is_ok() {
            return Err(Error::InvalidName {
                name: name.to_owned(),
                reason: "this is an IP address; pass it as an address, not a DNS name".into(),
            });
        }
        let norm = canonical(trimmed).map_err(|reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        if self.domains.is_empty() {
            return Ok(norm);
        }
        let inside = self.domains.iter().any(|d| {
            norm == *d
                || (norm.len() > d.len() + 1
                    && norm.ends_with(d.as_str())
                    && norm.as_bytes()[norm.len() - d.len() - 1] == b'.')
        });
        if inside {
            Ok(norm)
        } else {
            Err(Error::OutOfScope {
                name: name.to_owned(),
                scope: self.to_string(),
            })
        }
    }

    /// Checks one IP SAN against the permitted ranges.
    pub fn check_ip(&self, ip: IpAddr) -> Result<()> {
        let ip = canonical_ip(ip);
        if self.permitted_ip_ranges().iter().any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(Error::OutOfScope {
                name: ip.to_string(),
                scope: self.to_string(),
            })
        }
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) to IPv4 so they meet the IPv4 rules.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains = if self.domains.is_empty() {
            "any host name".to_owned()
        } else {
            format!("names under {}", self.domains.join(", "))
        };
        let ips = if self.subnets.is_empty() {
            "private LAN addresses".to_owned()
        } else {
            let v: Vec<String> = self.subnets.iter().map(|n| n.to_string()).collect();
            format!("addresses in {}", v.join(", "))
        };
        write!(f, "{domains}; {ips}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_scope_matches_on_label_boundaries() {
        let s = Scope::new(&["Lab.Example"], &[] as &[&str]).unwrap();
        assert_eq!(s.check_dns("lab.example").unwrap(), "lab.example");
        assert_eq!(s.check_dns("Host.LAB.example").unwrap(), "host.lab.example");
        assert!(matches!(
            s.check_dns("evillab.example"),
            Err(Error::OutOfScope { .. })
        ));
        assert!(matches!(
            s.check_dns("host.local"),
            Err(Error::OutOfScope { .. })
        ));
        assert!(matches!(
            s.check_dns("example"),
            Err(Error::OutOfScope { .. })
        ));
    }

    #[test]
    fn domain_only_scope_constrains_ips_to_private_ranges() {
        let s = Scope::new(&["lab.example"], &[] as &[&str]).unwrap();
        assert!(s.check_ip("192.168.1.4".parse().unwrap()).is_ok());
        assert!(s.check_ip("203.0.113.8".parse().unwrap()).is_err());
        let nc = s.name_constraints().unwrap();
        let ip_subtrees = nc
            .permitted_subtrees
            .iter()
            .filter(|t| matches!(t, GeneralSubtree::IpAddress(_)))
            .count();
        assert_eq!(ip_subtrees, PRIVATE_RANGES.len());
    }

    #[test]
    fn subnet_scope_and_mapped_addresses() {
        let e = Scope::new(&[] as &[&str], &["10.77.0.9/24"]).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.77.0.0/24?"), "{e}");
        let s = Scope::new(&[] as &[&str], &["10.77.0.0/24"]).unwrap();
        assert_eq!(s.subnets[0].to_string(), "10.77.0.0/24");
        assert!(s.check_ip("10.77.0.200".parse().unwrap()).is_ok());
        assert!(s.check_ip("::ffff:10.77.0.5".parse().unwrap()).is_ok());
        assert!(s.check_ip("10.78.0.1".parse().unwrap()).is_err());
        assert!(s.check_ip("192.168.1.1".parse().unwrap()).is_err());
    }

    #[test]
    fn a_domain_under_local_is_refused_but_the_default_scope_keeps_local() {
        for bad in ["local", "LOCAL.", ".local", "lab.local"] {
            let e = Scope::for_create(&[bad], &[] as &[&str], false).unwrap_err();
            assert!(e.to_string().contains("belong to mDNS"), "{bad}: {e}");
        }
        assert!(Scope::for_create(&["localnet.example"], &[] as &[&str], false).is_ok());
        let default = Scope::for_create(&[] as &[&str], &[] as &[&str], false).unwrap();
        assert!(default.check_dns("stone-b.local").is_ok());
    }

    #[test]
    fn unrestricted_scope_still_refuses_public_ips_and_bad_names() {
        let s = Scope::unrestricted();
        assert!(s.name_constraints().is_none());
        assert!(s.check_ip("198.51.100.1".parse().unwrap()).is_err());
        assert!(s.check_ip("127.0.0.1".parse().unwrap()).is_err());
        assert!(s.check_ip("fd00::1".parse().unwrap()).is_ok());
        for bad in [
            "*.lan", "a..b", "-x.lan", "x_y.lan", "host..", "", "10.0.0.1",
        ] {
            assert!(s.check_dns(bad).is_err(), "{bad} accepted");
        }
        assert!(s.check_dns("stone-01").is_ok());
        // Canonical forms, not refusals: a trailing dot, upper case, an international name.
        assert_eq!(s.check_dns("Host.").unwrap(), "host");
        assert_eq!(s.check_dns("é.lan").unwrap(), "xn--9ca.lan");
    }

    #[test]
    fn default_scope_is_the_zone_home_arpa_local_and_private_addresses() {
        let s = Scope::for_create(&[] as &[&str], &[] as &[&str], false).unwrap();
        assert_eq!(s.domains, DEFAULT_DOMAINS);
        assert!(!s.dns_unconstrained());
        for ok in ["nas.lan", "NAS.LAN.", "x.home.arpa", "stone-a.local", "lan"] {
            assert!(s.check_dns(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "localhost",
            "www.example.com",
            "google.com",
            "stone-a",
            "evil-lan",
        ] {
            assert!(
                matches!(s.check_dns(bad), Err(Error::OutOfScope { .. })),
                "{bad} accepted"
            );
        }
        assert!(s.check_ip("203.0.113.7".parse().unwrap()).is_err());
        assert!(s.check_ip("127.0.0.1".parse().unwrap()).is_err());
        assert!(s.check_ip("192.168.7.7".parse().unwrap()).is_ok());
        // The root carries it: 3 DNS subtrees and the private IP ranges.
        let nc = s.name_constraints().unwrap();
        assert_eq!(nc.permitted_subtrees.len(), 3 + PRIVATE_RANGES.len());
        // --subnet alone keeps the default domains.
        let sub = Scope::for_create(&[] as &[&str], &["10.9.0.0/16"], false).unwrap();
        assert_eq!(sub.domains, DEFAULT_DOMAINS);
        assert_eq!(sub.subnets.len(), 1);
    }

    #[test]
    fn unconstrained_is_explicit_and_exclusive() {
        let s = Scope::for_create(&[] as &[&str], &[] as &[&str], true).unwrap();
        assert!(s.dns_unconstrained() && s.name_constraints().is_none());
        assert!(Scope::for_create(&["lan"], &[] as &[&str], true).is_err());
        assert!(Scope::for_create(&[] as &[&str], &["10.0.0.0/8"], true).is_err());
        let given = Scope::for_create(&["lab.example"], &[] as &[&str], false).unwrap();
        assert_eq!(given.domains, ["lab.example"]);
    }

    #[test]
    fn invalid_scope_inputs_are_refused_with_guidance() {
        let e = Scope::new(&[] as &[&str], &["10.0.0.0/33"]).unwrap_err();
        assert!(e.to_string().contains("--subnet"));
        assert!(Scope::new(&[] as &[&str], &["0.0.0.0/0"]).is_err());
        assert!(Scope::new(&["*.lan"], &[] as &[&str]).is_err());
    }
}
