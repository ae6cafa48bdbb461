//! Address rules: which addresses a local name may resolve to (private only: RFC 1918, IPv6 ULA,
//! link-local, and RFC 6598 shared space when configured), which clients count as local (the
//! subnets of the listening interfaces, loopback, and the allow list), and the default listeners
//! (port 53 on this machine's private LAN addresses, never a public one, never `0.0.0.0`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Whether `ip` may appear in a local answer. `cgnat` admits RFC 6598 (100.64.0.0/10).
pub fn is_private(ip: IpAddr, cgnat: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (cgnat && o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4), cgnat);
            }
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the block (IPv4-mapped IPv6 clients match IPv4 blocks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an address or address block: write e.g. 192.168.1.0/24, \
                 10.0.0.7 or fd00::/8"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One interface address with its prefix.
#[derive(Debug, Clone)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// The address.
    pub ip: IpAddr,
    /// The prefix length of its subnet.
    pub prefix: u8,
    /// Loopback interface.
    pub loopback: bool,
}

/// This machine's interface addresses (empty if the system cannot list them).
pub fn interfaces() -> Vec<IfAddr> {
    let Ok(list) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    list.into_iter()
        .map(|i| {
            let loopback = i.is_loopback();
            let (ip, prefix) = match &i.addr {
                if_addrs::IfAddr::V4(a) => {
                    (IpAddr::V4(a.ip), prefix_of(u32::from(a.netmask).into()))
                }
                if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), prefix_of(u128::from(a.netmask))),
            };
            IfAddr {
                name: i.name,
                ip,
                prefix,
                loopback,
            }
        })
        .collect()
}

fn prefix_of(mask: u128) -> u8 {
    u8::try_from(mask.count_ones()).unwrap_or(0)
}

/// The subnets clients may come from: those of the interfaces that carry a listening address
/// (every interface for an unspecified listener), plus loopback.
pub fn local_subnets(listeners: &[SocketAddr], ifs: &[IfAddr]) -> Vec<Cidr> {
    let any = listeners.iter().any(|l| l.ip().is_unspecified());
    let names: Vec<&str> = ifs
        .iter()
        .filter(|i| listeners.iter().any(|l| l.ip() == i.ip))
        .map(|i| i.name.as_str())
        .collect();
    let mut out = vec![
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            prefix: 8,
        },
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ];
    for i in ifs {
        if any || names.contains(&i.name.as_str()) {
            let c = Cidr {
                addr: i.ip,
                prefix: i.prefix,
            };
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The default listeners: port 53 on every private, non-loopback, non-link-local address.
pub fn default_listeners(ifs: &[IfAddr], port: u16) -> Vec<SocketAddr> {
    ifs.iter()
        .filter(|i| !i.loopback && is_private(i.ip, false) && !is_link_local(i.ip))
        .map(|i| SocketAddr::new(i.ip, port))
        .collect()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Parses `ADDR[:PORT]` (IPv6 as `[ADDR]:PORT`), with `port` when none is given.
pub fn parse_socket(s: &str, port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, port));
    }
    Err(format!(
        "`{s}` is not ADDR or ADDR:PORT: write e.g. 192.168.1.10:53, 10.0.0.1 or [fd00::1]:53"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_private_and_public_ones_are_not() {
        for ok in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ok.parse().unwrap(), false), "{ok}");
        }
        for bad in [
            "203.0.113.7",
            "198.51.100.7",
            "2001:db8::1",
            "100.64.0.1",
            "127.0.0.1",
        ] {
            assert!(!is_private(bad.parse().unwrap(), false), "{bad}");
        }
        assert!(is_private("100.64.0.1".parse().unwrap(), true));
        assert!(!is_private("100.128.0.1".parse().unwrap(), true));
    }

    #[test]
    fn blocks_contain_what_they_should() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let zero: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains("203.0.113.7".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
