//! What a service check is, and the checks `add` makes before one is stored: the name, the HTTP
//! URL or TCP `HOST:PORT`, the expected status, the interval and timeout (the timeout always below
//! the interval), the fail and recover thresholds, and the LAN rule — a target that is not a
//! private address or a LAN name needs `--allow-remote`. Every rule is pure and unit-tested.

use koi_sdk::MethodError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Most checks one machine keeps.
pub const MAX_CHECKS: usize = 2000;
/// Longest check name.
pub const NAME_MAX: usize = 64;
/// Longest URL or `HOST:PORT`.
pub const TARGET_MAX: usize = 512;
/// Shortest interval (tests use it; below it checks would be probes, not health).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Shortest timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default timeout (or half the interval, when the interval is 10 s or less).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default failures in a row before a service is down.
pub const DEFAULT_FAIL_AFTER: u32 = 3;
/// Default successes in a row before a down service is up again.
pub const DEFAULT_RECOVER_AFTER: u32 = 2;
/// Largest fail/recover threshold.
pub const MAX_THRESHOLD: u32 = 100;

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// An HTTP(S) GET whose status must match `expect` (`2xx`, `3xx`, or one code like `204`).
    Http { url: String, expect: String },
    /// A TCP connect (then close) to `host:port`.
    Tcp { host: String, port: u16 },
}

impl Target {
    /// How the target is shown (`https://grafana.lan/` or `tcp://nas.lan:22`).
    pub fn display(&self) -> String {
        match self {
            Self::Http { url, .. } => url.clone(),
            Self::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => format!("tcp://{host}:{port}"),
        }
    }
}

/// A stored service check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Check {
    /// Its name (unique).
    pub name: String,
    /// What it probes.
    pub target: Target,
    /// Time between two runs, in milliseconds.
    pub interval_ms: u64,
    /// Time one run may take, in milliseconds (always below the interval).
    pub timeout_ms: u64,
    /// Failures in a row before the service is down.
    pub fail_after: u32,
    /// Successes in a row before a down service is up.
    pub recover_after: u32,
    /// Whether a public address was allowed.
    pub allow_remote: bool,
    /// When it was added (RFC 3339).
    pub added: String,
}

impl Check {
    /// The interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// The timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Params of `add`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddParams {
    /// The check's name (letters, digits, `.`, `_`, `-`; at most 64).
    pub name: String,
    /// An HTTP or HTTPS URL to GET (`https://grafana.lan/`).
    #[serde(default)]
    pub http: Option<String>,
    /// A TCP `HOST:PORT` to connect to (`nas.lan:22`, `[fd00::5]:443`).
    #[serde(default)]
    pub tcp: Option<String>,
    /// The HTTP status that counts as up: `2xx` (default), `3xx`, or one code like `204`.
    #[serde(default)]
    pub expect: Option<String>,
    /// Time between runs (`30s` default, at least `1s`).
    #[serde(default)]
    pub interval: Option<String>,
    /// Time one run may take (`5s` default; always below the interval).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Failures in a row before the service is down (default 3).
    #[serde(default)]
    pub fail_after: Option<u32>,
    /// Successes in a row before a down service is up again (default 2).
    #[serde(default)]
    pub recover_after: Option<u32>,
    /// Allow a public address (health checks are for the LAN).
    #[serde(default)]
    pub allow_remote: bool,
}

fn bad(message: String, hint: &str) -> MethodError {
    MethodError::invalid_params(message).hint(hint.to_owned())
}

/// Checks a check name.
pub fn check_name(name: &str) -> Result<(), MethodError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > NAME_MAX || !ok_chars || !first_ok {
        return Err(bad(
            format!(
                "invalid check name {:?}: use 1 to {NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit",
                name.chars().take(NAME_MAX + 8).collect::<String>()
            ),
            "for example: koi health add grafana --http http://grafana.lan:3000/",
        ));
    }
    Ok(())
}

/// Parses `30s`, `500ms`, `2m` (or a bare number of seconds).
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, MethodError> {
    let t = text.trim();
    let parsed = match t.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(t),
    };
    parsed.map_err(|_| {
        bad(
            format!(
                "invalid {what} {:?}: not a duration",
                t.chars().take(32).collect::<String>()
            ),
            "write it like 30s, 500ms or 2m",
        )
    })
}

/// Parses `--expect`: `2xx`, `3xx`, … or one code 100–599.
pub fn parse_expect(text: &str) -> Result<String, MethodError> {
    let t = text.trim().to_ascii_lowercase();
    let class_ok = t.len() == 3 && t.ends_with("xx") && matches!(t.as_bytes()[0], b'1'..=b'5');
    let code_ok = t.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
    if class_ok || code_ok {
        Ok(t)
    } else {
        Err(bad(
            format!(
                "invalid --expect {:?}: not a status class or code",
                text.chars().take(16).collect::<String>()
            ),
            "use 2xx, 3xx or one code from 100 to 599, like --expect 204",
        ))
    }
}

/// Whether `status` satisfies `expect` (as [`parse_expect`] returns it).
pub fn status_matches(expect: &str, status: u16) -> bool {
    match expect.strip_suffix("xx") {
        Some(class) => class.parse::<u16>().is_ok_and(|c| status / 100 == c),
        None => expect.parse::<u16>().is_ok_and(|c| c == status),
    }
}

fn check_text(what: &str, text: &str) -> Result<(), MethodError> {
    if text.is_empty() || text.len() > TARGET_MAX || text.chars().any(char::is_control) {
        return Err(bad(
            format!(
                "invalid {what}: it must be 1 to {TARGET_MAX} characters without control characters"
            ),
            "for example: --http http://grafana.lan:3000/ or --tcp nas.lan:22",
        ));
    }
    Ok(())
}

/// Whether an address is private to the LAN (loopback, RFC 1918, link-local, CGNAT, ULA).
pub fn is_lan_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_lan_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_lan_v4(v4);
            }
            let first = v6.segments()[0];
            v6 == Ipv6Addr::LOCALHOST || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

fn is_lan_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || (a == 100 && (64..128).contains(&b))
}

/// Whether a host (name or address) is on the LAN: a private address, `localhost`, a single
/// label, or a name under `.local`, `.lan`, `.home.arpa`, `.internal` or `.localhost`. Names are
/// not resolved here (adding a check sends no traffic).
pub fn is_lan_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_lan_ip(ip);
    }
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    !h.contains('.')
        || [".local", ".lan", ".home.arpa", ".internal", ".localhost"]
            .iter()
            .any(|s| h.ends_with(s))
}

fn check_host(host: &str) -> Result<(), MethodError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .split('.')
            .filter(|l| !l.is_empty())
            .all(|l| l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            format!(
                "invalid host {:?}: not a host name or IP address",
                bare.chars().take(64).collect::<String>()
            ),
            "use a name like nas.lan or an address like 192.168.1.10",
        ))
    }
}

fn refuse_remote(host: &str) -> MethodError {
    bad(
        format!(
            "{host} is not a LAN address: health checks are for the local network, so public addresses are refused by default"
        ),
        "add --allow-remote to check it anyway, or use the machine's LAN name or private address",
    )
}

fn http_target(url: &str, expect: Option<&str>, allow_remote: bool) -> Result<Target, MethodError> {
    check_text("--http URL", url)?;
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        bad(
            format!("invalid --http URL {url:?}: {e}"),
            "write a full URL like http://grafana.lan:3000/ or https://nas.lan/",
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(
            format!("invalid --http URL {url:?}: the scheme must be http or https"),
            "for a plain TCP service use --tcp HOST:PORT",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "invalid --http URL: it holds credentials, which would be stored in plain text"
                .to_owned(),
            "check a URL that answers without credentials (a health or status page)",
        ));
    }
    let host = parsed.host_str().unwrap_or_default().to_owned();
    check_host(&host)?;
    if !allow_remote && !is_lan_host(&host) {
        return Err(refuse_remote(&host));
    }
    let expect = parse_expect(expect.unwrap_or("2xx"))?;
    Ok(Target::Http {
        url: parsed.to_string(),
        expect,
    })
}

fn tcp_target(text: &str, allow_remote: bool) -> Result<Target, MethodError> {
    check_text("--tcp HOST:PORT", text)?;
    let hint = "write it as HOST:PORT, like nas.lan:22 or [fd00::5]:443";
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("invalid --tcp {text:?}: no port"), hint))?;
    let port: u32 = port.parse().map_err(|_| {
        bad(
            format!("invalid --tcp {text:?}: the port is not a number"),
            hint,
        )
    })?;
    if !(1..=65535).contains(&port) {
        return Err(bad(
            format!("invalid --tcp {text:?}: port {port} is out of range (1 to 65535)"),
            hint,
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    check_host(host)?;
    if !allow_remote && !is_lan_host(host) {
        return Err(refuse_remote(host));
    }
    Ok(Target::Tcp {
        host: host.to_owned(),
        port: u16::try_from(port).unwrap_or(u16::MAX),
    })
}

/// Builds the check `add` stores from its params (everything but the duplicate-name rule).
pub fn build(p: &AddParams, added: String) -> Result<Check, MethodError> {
    check_name(&p.name)?;
    let target = match (&p.http, &p.tcp) {
        (Some(url), None) => http_target(url, p.expect.as_deref(), p.allow_remote)?,
        (None, Some(hp)) => {
            if p.expect.is_some() {
                return Err(bad(
                    "--expect applies to --http checks only".to_owned(),
                    "drop --expect for a --tcp check",
                ));
            }
            tcp_target(hp, p.allow_remote)?
        }
        _ => {
            return Err(bad(
                "a check needs exactly one of --http URL or --tcp HOST:PORT".to_owned(),
                "for example: koi health add grafana --http http://grafana.lan:3000/",
            ));
        }
    };
    let interval = match &p.interval {
        Some(t) => parse_duration("--interval", t)?,
        None => DEFAULT_INTERVAL,
    };
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(bad(
            format!(
                "--interval {} is out of range (1s to 24h)",
                humantime::format_duration(interval)
            ),
            "use an interval like 30s",
        ));
    }
    let timeout = match &p.timeout {
        Some(t) => parse_duration("--timeout", t)?,
        None if interval <= 2 * DEFAULT_TIMEOUT => interval / 2,
        None => DEFAULT_TIMEOUT,
    };
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(bad(
            format!(
                "--timeout {} is out of range (100ms to 60s)",
                humantime::format_duration(timeout)
            ),
            "use a timeout like 5s",
        ));
    }
    if timeout >= interval {
        return Err(bad(
            format!(
                "the interval ({}) must be longer than the timeout ({}): a check must end before the next one starts",
                humantime::format_duration(interval),
                humantime::format_duration(timeout)
            ),
            "raise --interval or lower --timeout, e.g. --interval 30s --timeout 5s",
        ));
    }
    let threshold = |flag: &str, v: Option<u32>, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=MAX_THRESHOLD).contains(&n) => Ok(n),
        Some(n) => Err(bad(
            format!("{flag} {n} is out of range (1 to {MAX_THRESHOLD})"),
            "use a small count like 3",
        )),
    };
    Ok(Check {
        name: p.name.clone(),
        target,
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        fail_after: threshold("--fail-after", p.fail_after, DEFAULT_FAIL_AFTER)?,
        recover_after: threshold("--recover-after", p.recover_after, DEFAULT_RECOVER_AFTER)?,
        allow_remote: p.allow_remote,
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> AddParams {
        AddParams {
            name: "web".into(),
            http: Some(url.into()),
            ..AddParams::default()
        }
    }

    #[test]
    fn lan_rule() {
        for lan in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "fd00::1",
            "nas",
            "grafana.lan",
            "a.local",
            "[::1]",
        ] {
            assert!(is_lan_host(lan), "{lan}");
        }
        for public in ["203.0.113.7", "public.example", "2001:db8::7"] {
            assert!(!is_lan_host(public), "{public}");
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(build(&http("not a url"), String::new()).is_err());
        assert!(build(&http("http://203.0.113.7/"), String::new()).is_err());
        let mut p = http("http://203.0.113.7/");
        p.allow_remote = true;
        assert!(build(&p, String::new()).is_ok());
        let tcp = AddParams {
            name: "ssh".into(),
            tcp: Some("nas.lan:70000".into()),
            ..AddParams::default()
        };
        assert!(build(&tcp, String::new()).is_err());
        let mut slow = http("http://grafana.lan/");
        slow.interval = Some("2s".into());
        slow.timeout = Some("5s".into());
        assert!(build(&slow, String::new()).is_err());
        assert!(check_name("bad name").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn expect_rule() {
        assert!(status_matches("2xx", 204));
        assert!(!status_matches("2xx", 502));
        assert!(status_matches("301", 301));
        assert!(parse_expect("6xx").is_err());
    }
}
