//! The serve configuration: listeners, zone, upstreams, allow and exemption lists, rate limit.
//! `koi dns serve` validates it here; under `koi daemon` it is saved in `$KOI_HOME/dns/serve.json`
//! (atomically, with `koi_sdk::store`) so the server comes back after a daemon restart, and
//! `koi dns stop` removes it. Zone rules: `lan` by default, `home.arpa` and custom zones allowed,
//! never `local` (nor anything under it: that is mDNS's).

use crate::addrs::{self, Cidr};
use hickory_proto::rr::Name;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// The default zone.
pub const DEFAULT_ZONE: &str = "lan";
/// Default sustained queries per second per client.
pub const DEFAULT_RATE: u32 = 200;
/// Default burst per client.
pub const DEFAULT_BURST: u32 = 400;
/// Default time an upstream gets before the client is answered SERVFAIL.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 1500;
/// Most listeners, upstreams, allow and exemption entries each.
pub const MAX_LIST: usize = 32;

/// Params of `serve` (and what `serve.json` holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeParams {
    /// Listen address `ADDR:PORT` (repeatable; default: port 53 on this machine's private LAN
    /// addresses). `0.0.0.0:53` listens everywhere, only when written out.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The zone answered authoritatively (default `lan`; `home.arpa` or your own; never `local`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Upstream resolver `ADDR[:PORT]` for names outside the zone (repeatable; default: the
    /// nameservers of /etc/resolv.conf, minus this machine's addresses and loopback stubs).
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Extra client blocks allowed besides the listening interfaces' subnets (repeatable).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Clients exempt from the rate limit, e.g. a router that forwards for everyone (repeatable).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Sustained queries per second per client (default 200; 0 turns the limit off).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// Queries a client may send at once above the rate (default 400).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Also allow RFC 6598 shared addresses (100.64.0.0/10) in local answers.
    #[serde(default)]
    pub allow_cgnat: bool,
    /// Milliseconds an upstream gets before the client gets SERVFAIL (default 1500, 100 to 10000).
    #[serde(default)]
    pub upstream_timeout_ms: Option<u64>,
    /// UDP worker threads per listener (default: the CPU count, at most 4).
    #[serde(default)]
    pub workers: Option<usize>,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The zone, lower case, fully qualified.
    pub zone: Name,
    /// The zone as text (`lan`).
    pub zone_text: String,
    /// Upstreams, and where they came from.
    pub upstreams: Vec<SocketAddr>,
    /// `config` or `/etc/resolv.conf`.
    pub upstreams_from: String,
    /// Allow list.
    pub allow: Vec<Cidr>,
    /// Rate-limit exemptions.
    pub exempt: Vec<Cidr>,
    /// Per-client rate (0: off) and burst.
    pub rate: u32,
    /// Burst.
    pub burst: u32,
    /// RFC 6598 allowed in answers.
    pub cgnat: bool,
    /// Upstream timeout.
    pub upstream_timeout: std::time::Duration,
    /// Worker threads per listener.
    pub workers: usize,
}

/// Checks a zone name: `lan`, `home.arpa` or any other valid name, never `local` or under it.
pub fn zone(text: &str) -> Result<(Name, String), String> {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if t.is_empty() {
        return Err(
            "the zone is empty: use `--zone lan` (the default) or `--zone home.arpa`".into(),
        );
    }
    if t == "local" || t.ends_with(".local") {
        return Err(format!(
            "the zone `{t}` is refused: `.local` belongs to mDNS (RFC 6762) and a unicast server \
             answering it breaks every mDNS client on the network. Use `--zone lan` (the default) \
             or `--zone home.arpa` (RFC 8375)"
        ));
    }
    let valid = t.len() <= 200
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid || t.ends_with("in-addr.arpa") || t.ends_with("ip6.arpa") {
        return Err(format!(
            "`{t}` is not a usable zone: use letters, digits and hyphens in dot-separated labels \
             (e.g. `lan` or `home.arpa`)"
        ));
    }
    let name = Name::from_ascii(format!("{t}.")).map_err(|e| format!("zone `{t}`: {e}"))?;
    Ok((name, t))
}

fn cidrs(list: &[String], what: &str) -> Result<Vec<Cidr>, String> {
    if list.len() > MAX_LIST {
        return Err(format!(
            "too many --{what} entries ({}; at most {MAX_LIST})",
            list.len()
        ));
    }
    list.iter().map(|s| s.parse::<Cidr>()).collect()
}

/// The nameservers of a resolv.conf text, minus loopback and `own` addresses.
pub fn resolv_conf_upstreams(text: &str, own: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|w| w.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(addrs::canonical)
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified() && !own.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_LIST)
        .collect()
}

impl ServeParams {
    /// Checks everything; `ifs` are this machine's interfaces (for the default listeners and for
    /// leaving koi's own addresses out of the upstreams).
    pub fn check(&self, ifs: &[addrs::IfAddr]) -> Result<Config, String> {
        let (zone, zone_text) = zone(self.zone.as_deref().unwrap_or(DEFAULT_ZONE))?;
        if self.listen.len() > MAX_LIST || self.upstream.len() > MAX_LIST {
            return Err(format!(
                "too many --listen or --upstream entries (at most {MAX_LIST} each)"
            ));
        }
        let mut listen = self
            .listen
            .iter()
            .map(|s| addrs::parse_socket(s, 53))
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            listen = addrs::default_listeners(ifs, 53);
            if listen.is_empty() {
                return Err(
                    "this machine has no private LAN address to listen on (koi-dns never \
                            listens on a public address by default): pass `--listen ADDR:PORT`, \
                            e.g. `--listen 127.0.0.1:5300`"
                        .into(),
                );
            }
        }
        listen.dedup();
        let own: Vec<IpAddr> = ifs
            .iter()
            .map(|i| i.ip)
            .chain(listen.iter().map(|l| l.ip()))
            .collect();
        let (upstreams, upstreams_from) = if self.upstream.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            (
                resolv_conf_upstreams(&text, &own),
                "/etc/resolv.conf".to_owned(),
            )
        } else {
            let ups = self
                .upstream
                .iter()
                .map(|s| addrs::parse_socket(s, 53))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(u) = ups.iter().find(|u| {
                listen.contains(u)
                    || (own.contains(&u.ip()) && listen.iter().any(|l| l.port() == u.port()))
            }) {
                return Err(format!(
                    "upstream {u} is this server itself: forwarding to it would loop. Name \
                     another resolver with --upstream"
                ));
            }
            (ups, "configuration".to_owned())
        };
        let timeout = self
            .upstream_timeout_ms
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS);
        if !(100..=10_000).contains(&timeout) {
            return Err(format!(
                "--upstream-timeout-ms {timeout} is out of range: use 100 to 10000"
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cpus.min(4));
        if !(1..=16).contains(&workers) {
            return Err(format!("--workers {workers} is out of range: use 1 to 16"));
        }
        Ok(Config {
            listen,
            zone,
            zone_text,
            upstreams,
            upstreams_from,
            allow: cidrs(&self.allow, "allow")?,
            exempt: cidrs(&self.exempt, "exempt")?,
            rate: self.rate_limit.unwrap_or(DEFAULT_RATE),
            burst: self.burst.unwrap_or(DEFAULT_BURST).max(1),
            cgnat: self.allow_cgnat,
            upstream_timeout: std::time::Duration::from_millis(timeout),
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_refused_and_lan_home_arpa_and_custom_zones_are_allowed() {
        for bad in ["local", "LOCAL.", "x.local", "", "a..b", "-x"] {
            assert!(zone(bad).is_err(), "{bad}");
        }
        assert!(zone("local").unwrap_err().contains("mDNS"));
        for ok in ["lan", "home.arpa", "corp.example"] {
            assert!(zone(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn resolv_conf_leaves_out_loopback_stubs_and_own_addresses() {
        let text = "nameserver 127.0.0.53\nnameserver 10.0.0.1\nnameserver ::1\n\
                    nameserver 10.0.0.9\n# c\nsearch lan\n";
        let own: Vec<IpAddr> = vec!["10.0.0.9".parse().unwrap()];
        assert_eq!(
            resolv_conf_upstreams(text, &own),
            vec!["10.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
