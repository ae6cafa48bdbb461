//! The proxy's entries: what `koi proxy add` stores, how each field is checked (names, ports,
//! backend URLs, trusted-proxy ranges), and the file they live in (`$KOI_HOME/proxy/entries.json`,
//! written atomically through `koi_sdk::store`).

use koi_sdk::MethodError;
use koi_sdk::store::JsonFile;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// The most entries one machine serves.
pub const MAX_ENTRIES: usize = 64;
/// The most trusted-proxy ranges one entry lists.
pub const MAX_TRUSTED: usize = 16;
/// The backend response timeout when `--timeout-secs` is not given.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The zone used for `NAME.<zone>` when certmesh names none.
pub const DEFAULT_ZONE: &str = "lan";

/// One proxied service, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Entry {
    /// The entry's name (one DNS label), e.g. `grafana`.
    pub name: String,
    /// The host name clients use (SNI and Host), e.g. `grafana.lan`.
    pub host: String,
    /// The HTTPS port it listens on; several entries may share one.
    pub listen_port: u16,
    /// The backend, `http://HOST:PORT`.
    pub backend: String,
    /// Whether the backend may be another machine (traffic to it is unencrypted).
    #[serde(default)]
    pub backend_remote: bool,
    /// A plain-HTTP port that redirects to HTTPS, if any.
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// The certificate directory under `$KOI_HOME/certs/` (default: this machine's host name).
    #[serde(default)]
    pub cert_host: Option<String>,
    /// Peers (addresses or CIDR ranges) whose incoming `X-Forwarded-*`/`Forwarded` are kept.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Seconds to wait for the backend's response head before answering 504.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// What `entries.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Entries {
    /// Every entry, in the order they were added.
    pub entries: Vec<Entry>,
}

/// The entries file in the plugin's data directory.
pub fn entries_file(data_dir: &Path) -> JsonFile<Entries> {
    JsonFile::new(data_dir.join("entries.json")).version(1)
}

/// Checks one DNS label (letters, digits, hyphens; 1–63; no leading or trailing hyphen).
pub fn check_label(what: &str, label: &str) -> Result<(), MethodError> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(MethodError::invalid_params(format!(
            "The {what} {label:?} is not a usable name: use 1–63 lower-case letters, digits and \
             hyphens, not starting or ending with a hyphen (e.g. `grafana`)."
        )))
    }
}

/// Checks a host name (dot-separated labels, ≤ 253 characters), returned in lower case.
pub fn check_host(host: &str) -> Result<String, MethodError> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 253 {
        return Err(MethodError::invalid_params(format!(
            "The host name {host:?} is empty or longer than 253 characters: pass --host NAME.ZONE \
             (e.g. grafana.lan)."
        )));
    }
    for label in lower.split('.') {
        check_label("host name part", label)?;
    }
    Ok(lower)
}

/// A backend URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Backend {
    /// `http://host:port` (IPv6 in brackets), the form stored and used as the request base.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    /// The address, if the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Parses `http://HOST[:PORT][/]` (port 80 when absent). No path, query, user or https.
pub fn parse_backend(url: &str) -> Result<Backend, MethodError> {
    let bad = |why: &str| {
        MethodError::invalid_params(format!(
            "The backend {url:?} is not usable: {why}. Pass --backend http://HOST:PORT \
             (e.g. http://localhost:3000)."
        ))
    };
    if url.len() > 256 || url.chars().any(char::is_control) {
        return Err(bad(
            "it is longer than 256 characters or holds control characters",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only plain http:// backends are proxied"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("a path, query or user part is not supported"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (rest.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not 1–65535"))?,
        None => 80,
    };
    let host = host.to_ascii_lowercase();
    if host.parse::<IpAddr>().is_err() {
        check_host(&host).map_err(|_| bad("the host is not a host name or address"))?;
    }
    Ok(Backend { host, port })
}

/// An address range (`10.0.0.0/8`, `192.168.1.4`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<Self, MethodError> {
        let bad = || {
            MethodError::invalid_params(format!(
                "The trusted proxy {text:?} is not an address or range: pass e.g. \
                 --trusted-proxy 10.0.0.2 or --trusted-proxy 10.0.0.0/24."
            ))
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_hostile_ones_are_refused() {
        let b = parse_backend("http://localhost:3000").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("localhost", 3000));
        assert_eq!(
            parse_backend("http://[::1]:8080/").unwrap().url(),
            "http://[::1]:8080"
        );
        assert_eq!(parse_backend("http://127.0.0.1").unwrap().port, 80);
        for bad in [
            "https://x:1",
            "http://a/b",
            "http://u@h:1",
            "http://h:0",
            "http://h:99999",
            "http://bad_host:1",
            "http://h\n:1",
        ] {
            assert!(parse_backend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_match_addresses() {
        let r = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(r.contains("10.0.0.9".parse().unwrap()));
        assert!(!r.contains("10.0.1.9".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.3".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("203.0.113.7".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn labels_and_hosts_are_checked() {
        assert!(check_label("name", "grafana").is_ok());
        assert!(check_label("name", "-x").is_err());
        assert!(check_label("name", "Grafana").is_err());
        assert_eq!(check_host("Grafana.LAN.").unwrap(), "grafana.lan");
        assert!(check_host("a..b").is_err());
    }
}
