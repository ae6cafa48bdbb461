//! Which network interfaces mDNS runs on.
//!
//! **The rule** (a pure function, [`rule`], over facts read from `/sys/class/net`): by default an
//! interface is used when it is up, has an address, is multicast-capable, and is none of:
//! loopback; a point-to-point link (`IFF_POINTOPOINT`: WireGuard, OpenVPN/tun, PPP); a layer-3
//! tunnel (ARP type none, IPIP, GRE, SIT); a tun/tap device; a VPN by well-known name
//! (`wg*`, `tun*`, `tap*`, `tailscale*`, `zt*`, `nordlynx*`, `ppp*`); a container or VM bridge by
//! well-known name (`docker*`, Docker's `br-` + 12 hex digits, `virbr*`, `lxcbr*`, `lxdbr*`,
//! `incusbr*`, `cni*`, `podman*`, `vboxnet*`, `vmnet*`); or a port of a bridge (its traffic goes
//! through the bridge, which is judged on its own).
//!
//! What is deliberately **used**: a veth that is not a bridge port (a container's or a network
//! namespace's own link — the test lab's hosts are exactly this), and bridges with other names
//! (`br0`, `vmbr0`: on hypervisor hosts the LAN often lives on such a bridge). IPv4 and IPv6 are
//! both used; IPv6 link-local addresses keep their scope (`fe80::1%eth0`).
//!
//! `--interface IF` (repeatable) replaces the rule: exactly the named interfaces are used, if they
//! exist and have an address.

use crate::error::MdnsError;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_POINTOPOINT: u32 = 0x10;
const IFF_MULTICAST: u32 = 0x1000;

const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 65534;
/// Layer-3 tunnels: IPIP, IP6IP6, SIT, GRE, IP6GRE.
const ARPHRD_TUNNELS: [u16; 5] = [768, 769, 776, 778, 823];

const VPN_PREFIXES: [&str; 7] = ["wg", "tun", "tap", "tailscale", "zt", "nordlynx", "ppp"];
const BRIDGE_PREFIXES: [&str; 9] = [
    "docker", "virbr", "lxcbr", "lxdbr", "incusbr", "cni", "podman", "vboxnet", "vmnet",
];

/// What the kernel says about one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// The interface name.
    pub name: String,
    /// `IFF_*` flags (`/sys/class/net/IF/flags`).
    pub flags: u32,
    /// ARP hardware type (`/sys/class/net/IF/type`).
    pub arp_type: u16,
    /// The link is a bridge (`/sys/class/net/IF/bridge` exists).
    pub is_bridge: bool,
    /// The link is a port of a bridge (`/sys/class/net/IF/brport` exists).
    pub is_bridge_port: bool,
    /// The link is a tun/tap device (`/sys/class/net/IF/tun_flags` exists).
    pub is_tun: bool,
    /// The link has at least one address.
    pub has_address: bool,
}

/// Whether the default rule uses an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Used.
    Use,
    /// Skipped, with the reason shown in `koi mdns status`.
    Skip(&'static str),
}

/// The default selection rule (see the module documentation).
pub fn rule(f: &LinkFacts) -> Verdict {
    let name = f.name.as_str();
    if f.flags & IFF_LOOPBACK != 0 || f.arp_type == ARPHRD_LOOPBACK {
        return Verdict::Skip("loopback");
    }
    if f.flags & IFF_UP == 0 {
        return Verdict::Skip("down");
    }
    if !f.has_address {
        return Verdict::Skip("no IP address");
    }
    if f.flags & IFF_POINTOPOINT != 0 {
        return Verdict::Skip("point-to-point link (VPN or tunnel)");
    }
    if f.arp_type == ARPHRD_NONE || ARPHRD_TUNNELS.contains(&f.arp_type) {
        return Verdict::Skip("layer-3 tunnel (VPN)");
    }
    if f.is_tun {
        return Verdict::Skip("tun/tap device (VPN or VM)");
    }
    if VPN_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Verdict::Skip("VPN by name");
    }
    if BRIDGE_PREFIXES.iter().any(|p| name.starts_with(p)) || is_docker_network_bridge(name) {
        return Verdict::Skip("container/VM bridge");
    }
    if f.is_bridge_port {
        return Verdict::Skip("bridge port (its bridge carries the traffic)");
    }
    if f.flags & IFF_MULTICAST == 0 {
        return Verdict::Skip("not multicast-capable");
    }
    Verdict::Use
}

/// Docker names user-defined networks' bridges `br-` + the first 12 hex digits of the network id.
fn is_docker_network_bridge(name: &str) -> bool {
    name.strip_prefix("br-")
        .is_some_and(|rest| rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads a link's facts from sysfs (the caller says whether it has an address).
pub fn read_facts(name: &str, has_address: bool) -> LinkFacts {
    let dir = Path::new("/sys/class/net").join(name);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let flags = u32::from_str_radix(read("flags").trim().trim_start_matches("0x"), 16).unwrap_or(0);
    let arp_type = read("type").trim().parse().unwrap_or(0);
    LinkFacts {
        name: name.to_owned(),
        flags,
        arp_type,
        is_bridge: dir.join("bridge").exists(),
        is_bridge_port: dir.join("brport").exists(),
        is_tun: dir.join("tun_flags").exists(),
        has_address,
    }
}

/// How the interfaces were chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selection {
    /// The default rule.
    Default,
    /// Exactly these interfaces (`--interface`).
    Named(Vec<String>),
}

impl Selection {
    /// From the `--interface` arguments: none means the default rule.
    pub fn from_args(names: &[String]) -> Self {
        let mut names: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            Self::Default
        } else {
            Self::Named(names)
        }
    }

    /// Whether the selection takes the interface named `name`, given its facts.
    pub fn takes(&self, facts: &LinkFacts) -> bool {
        match self {
            Self::Default => rule(facts) == Verdict::Use,
            Self::Named(names) => names.contains(&facts.name) && facts.has_address,
        }
    }
}

/// One interface as `koi mdns status` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
pub struct InterfaceReport {
    /// The interface name.
    pub name: String,
    /// Whether mDNS runs on it.
    pub used: bool,
    /// Why it is skipped (absent when used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<String>,
    /// Its addresses (IPv6 link-local with `%scope`).
    pub addresses: Vec<String>,
}

/// Lists the machine's (namespace's) interfaces and what the selection makes of each.
pub fn survey(selection: &Selection) -> Vec<InterfaceReport> {
    let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for intf in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = intf.ip();
        let shown = match ip {
            std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
                format!("{v6}%{}", intf.name)
            }
            other => other.to_string(),
        };
        addrs.entry(intf.name.clone()).or_default().push(shown);
    }
    // Links without any address still show up (as skipped) so users see why.
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            addrs.entry(name).or_default();
        }
    }
    addrs
        .into_iter()
        .map(|(name, addresses)| {
            let facts = read_facts(&name, !addresses.is_empty());
            let used = selection.takes(&facts);
            let skipped_because = if used {
                None
            } else {
                Some(match (selection, rule(&facts)) {
                    (Selection::Named(_), _) if !facts.has_address => "no IP address".to_owned(),
                    (Selection::Named(_), _) => "not named by --interface".to_owned(),
                    (Selection::Default, Verdict::Skip(reason)) => reason.to_owned(),
                    (Selection::Default, Verdict::Use) => "unknown".to_owned(),
                })
            };
            InterfaceReport {
                name,
                used,
                skipped_because,
                addresses,
            }
        })
        .collect()
}

/// The interfaces the selection uses, or an error that says what was found instead.
pub fn usable(selection: &Selection) -> Result<Vec<InterfaceReport>, MdnsError> {
    let all = survey(selection);
    if let Selection::Named(names) = selection {
        let usable_default: Vec<String> = survey(&Selection::Default)
            .into_iter()
            .filter(|i| i.used)
            .map(|i| i.name)
            .collect();
        let usable_default = if usable_default.is_empty() {
            "none".to_owned()
        } else {
            usable_default.join(", ")
        };
        for name in names {
            match all.iter().find(|i| &i.name == name) {
                None => {
                    return Err(MdnsError::UnusableInterface {
                        name: name.clone(),
                        reason: "no such interface".into(),
                        usable: usable_default,
                    });
                }
                Some(i) if !i.used => {
                    return Err(MdnsError::UnusableInterface {
                        name: name.clone(),
                        reason: i.skipped_because.clone().unwrap_or_default(),
                        usable: usable_default,
                    });
                }
                Some(_) => {}
            }
        }
    }
    let used: Vec<InterfaceReport> = all.iter().filter(|i| i.used).cloned().collect();
    if used.is_empty() {
        let detail = if all.is_empty() {
            "this machine has no network interfaces".to_owned()
        } else {
            all.iter()
                .map(|i| {
                    format!(
                        "{} ({})",
                        i.name,
                        i.skipped_because.as_deref().unwrap_or("used")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(MdnsError::NoUsableInterface { detail });
    }
    Ok(used)
}

/// Restricts an mdns-sd daemon to the selection: everything off, then the rule (or the names) on.
pub fn apply(daemon: &mdns_sd::ServiceDaemon, selection: &Selection) -> Result<(), MdnsError> {
    daemon.disable_interface(mdns_sd::IfKind::All)?;
    let selection = selection.clone();
    let predicate =
        mdns_sd::IfPredicate::new(move |intf| selection.takes(&read_facts(&intf.name, true)));
    daemon.enable_interface(mdns_sd::IfKind::Predicate(predicate))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            flags: IFF_UP | IFF_MULTICAST | 0x2, // UP, BROADCAST, MULTICAST
            arp_type: 1,
            has_address: true,
            ..LinkFacts::default()
        }
    }

    #[test]
    fn ordinary_ethernet_wifi_and_veth_are_used() {
        for name in ["eth0", "enp3s0", "wlan0", "veth0", "veth-a", "br0", "vmbr0"] {
            assert_eq!(rule(&link(name)), Verdict::Use, "{name}");
        }
        let mut lan_bridge = link("br0");
        lan_bridge.is_bridge = true;
        assert_eq!(rule(&lan_bridge), Verdict::Use);
    }

    #[test]
    fn loopback_vpns_and_tunnels_are_skipped() {
        let mut lo = link("lo");
        lo.flags |= IFF_LOOPBACK;
        lo.arp_type = ARPHRD_LOOPBACK;
        assert_eq!(rule(&lo), Verdict::Skip("loopback"));

        let mut wg = link("wg0");
        wg.flags = IFF_UP | IFF_POINTOPOINT | 0x80;
        wg.arp_type = ARPHRD_NONE;
        assert!(matches!(rule(&wg), Verdict::Skip(r) if r.contains("point-to-point")));

        let mut tun = link("mytunnel");
        tun.arp_type = ARPHRD_NONE;
        assert!(matches!(rule(&tun), Verdict::Skip(r) if r.contains("tunnel")));

        let mut tap = link("vpn-office");
        tap.is_tun = true;
        assert!(matches!(rule(&tap), Verdict::Skip(r) if r.contains("tun/tap")));

        for name in ["tailscale0", "zt7nnig26", "wg-home", "tun0", "ppp0"] {
            assert!(
                matches!(rule(&link(name)), Verdict::Skip(r) if r.contains("VPN")),
                "{name}"
            );
        }
    }

    #[test]
    fn container_and_vm_bridges_and_their_ports_are_skipped() {
        for name in [
            "docker0",
            "br-0123456789ab",
            "virbr0",
            "lxcbr0",
            "lxdbr0",
            "cni0",
            "podman0",
            "vboxnet0",
            "vmnet8",
        ] {
            assert_eq!(
                rule(&link(name)),
                Verdict::Skip("container/VM bridge"),
                "{name}"
            );
        }
        // `br-lan` is not Docker's pattern: used.
        assert_eq!(rule(&link("br-lan")), Verdict::Use);
        let mut port = link("veth1234567");
        port.is_bridge_port = true;
        assert!(matches!(rule(&port), Verdict::Skip(r) if r.contains("bridge port")));
    }

    #[test]
    fn down_addressless_and_non_multicast_links_are_skipped() {
        let mut down = link("eth1");
        down.flags &= !IFF_UP;
        assert_eq!(rule(&down), Verdict::Skip("down"));
        let mut bare = link("eth2");
        bare.has_address = false;
        assert_eq!(rule(&bare), Verdict::Skip("no IP address"));
        let mut nomc = link("eth3");
        nomc.flags &= !IFF_MULTICAST;
        assert_eq!(rule(&nomc), Verdict::Skip("not multicast-capable"));
    }

    #[test]
    fn named_selection_overrides_the_rule() {
        let sel = Selection::from_args(&["docker0".into(), " ".into()]);
        assert_eq!(sel, Selection::Named(vec!["docker0".into()]));
        assert!(sel.takes(&link("docker0")));
        assert!(!sel.takes(&link("eth0")));
        assert_eq!(Selection::from_args(&[]), Selection::Default);
    }
}
