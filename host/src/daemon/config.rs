//! `$KOI_HOME/config.toml`: the daemon's settings, validated field by field with errors that name
//! the key, the bad value and what is allowed; environment variables override the file. The daemon
//! reads it at start and on SIGHUP; an invalid reload keeps the configuration in force.
//!
//! ```toml
//! [daemon]
//! ping_interval_secs = 10      # how often each plugin is pinged (its `status`)
//! ping_timeout_secs = 5        # a plugin that does not answer within this is restarted
//! restart_initial_ms = 200     # first restart delay after a crash; doubles per quick crash
//! restart_max_ms = 30000       # cap of that delay
//! stable_after_secs = 10       # a plugin that ran this long restarts with the initial delay again
//! subscriber_queue = 256       # events queued per subscriber before new ones are dropped
//!
//! [rest]
//! enabled = true
//! bind = "127.0.0.1:7240"
//! allow_non_loopback = false   # must be true to bind anything but loopback
//! max_body_bytes = 1048576
//! ```
//!
//! Environment overrides: `KOI_REST_BIND`, `KOI_REST_ENABLED` (`true`/`false`),
//! `KOI_REST_ALLOW_NON_LOOPBACK`, `KOI_PING_INTERVAL_SECS`, `KOI_PING_TIMEOUT_SECS`,
//! `KOI_RESTART_INITIAL_MS`, `KOI_RESTART_MAX_MS`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration problem, naming the key, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("{path}: {message}. See docs/daemon.md for the keys and their types.")]
    Syntax {
        /// The file.
        path: String,
        /// What the parser said (includes the line).
        message: String,
    },
    /// A value is out of range.
    #[error("{key} = {value} is not allowed: {allowed}. Fix it in {path} (or unset {env}).")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
        /// The file.
        path: String,
        /// The environment variable that overrides the key.
        env: &'static str,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    rest: RestSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    ping_interval_secs: Option<u64>,
    ping_timeout_secs: Option<u64>,
    restart_initial_ms: Option<u64>,
    restart_max_ms: Option<u64>,
    stable_after_secs: Option<u64>,
    subscriber_queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestSection {
    enabled: Option<bool>,
    bind: Option<String>,
    allow_non_loopback: Option<bool>,
    max_body_bytes: Option<usize>,
}

/// The validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Ping period.
    pub ping_interval: Duration,
    /// Ping answer deadline.
    pub ping_timeout: Duration,
    /// First restart delay.
    pub restart_initial: Duration,
    /// Restart delay cap.
    pub restart_max: Duration,
    /// Uptime after which a crash counts as isolated.
    pub stable_after: Duration,
    /// Per-subscriber event queue.
    pub subscriber_queue: usize,
    /// Whether the REST API runs.
    pub rest_enabled: bool,
    /// REST address.
    pub rest_bind: SocketAddr,
    /// Whether a non-loopback REST address is allowed.
    pub rest_allow_non_loopback: bool,
    /// REST body cap.
    pub rest_max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            restart_initial: Duration::from_millis(200),
            restart_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            subscriber_queue: 256,
            rest_enabled: true,
            rest_bind: SocketAddr::from(([127, 0, 0, 1], koi_rest::DEFAULT_PORT)),
            rest_allow_non_loopback: false,
            rest_max_body_bytes: koi_rest::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Config {
    /// Reads `path` (a missing file means defaults), applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError::Syntax {
                    path: shown,
                    message: format!("cannot be read: {e}"),
                });
            }
        };
        Self::parse(&text, &shown, |name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; `env` looks up overrides.
    pub fn parse(
        text: &str,
        path: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let d = Config::default();
        let invalid = |key: &'static str, env_name: &'static str, value: String, allowed: &str| {
            ConfigError::Invalid {
                key,
                value,
                allowed: allowed.to_owned(),
                path: path.to_owned(),
                env: env_name,
            }
        };
        let number = |key: &'static str,
                      env_name: &'static str,
                      file_value: Option<u64>,
                      default: u64,
                      range: std::ops::RangeInclusive<u64>,
                      unit: &str| {
            let value = match env(env_name) {
                Some(raw) => raw.trim().parse::<u64>().map_err(|_| {
                    invalid(
                        key,
                        env_name,
                        format!("{raw:?}"),
                        &format!("a whole number of {unit}"),
                    )
                })?,
                None => file_value.unwrap_or(default),
            };
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(invalid(
                    key,
                    env_name,
                    value.to_string(),
                    &format!("{} to {} {unit}", range.start(), range.end()),
                ))
            }
        };
        let flag = |key: &'static str,
                    env_name: &'static str,
                    file_value: Option<bool>,
                    default: bool| match env(env_name) {
            Some(raw) => match raw.trim() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid(key, env_name, format!("{raw:?}"), "true or false")),
            },
            None => Ok(file_value.unwrap_or(default)),
        };
        let ping_interval = number(
            "daemon.ping_interval_secs",
            "KOI_PING_INTERVAL_SECS",
            file.daemon.ping_interval_secs,
            10,
            1..=3600,
            "seconds",
        )?;
        let ping_timeout = number(
            "daemon.ping_timeout_secs",
            "KOI_PING_TIMEOUT_SECS",
            file.daemon.ping_timeout_secs,
            5,
            1..=600,
            "seconds",
        )?;
        let restart_initial = number(
            "daemon.restart_initial_ms",
            "KOI_RESTART_INITIAL_MS",
            file.daemon.restart_initial_ms,
            200,
            10..=60_000,
            "milliseconds",
        )?;
        let restart_max = number(
            "daemon.restart_max_ms",
            "KOI_RESTART_MAX_MS",
            file.daemon.restart_max_ms,
            30_000,
            10..=3_600_000,
            "milliseconds",
        )?;
        if restart_max < restart_initial {
            return Err(invalid(
                "daemon.restart_max_ms",
                "KOI_RESTART_MAX_MS",
                restart_max.to_string(),
                &format!("at least daemon.restart_initial_ms ({restart_initial})"),
            ));
        }
        let stable_after = number(
            "daemon.stable_after_secs",
            "KOI_STABLE_AFTER_SECS",
            file.daemon.stable_after_secs,
            10,
            1..=86_400,
            "seconds",
        )?;
        let queue = number(
            "daemon.subscriber_queue",
            "KOI_SUBSCRIBER_QUEUE",
            file.daemon.subscriber_queue.map(|q| q as u64),
            256,
            1..=65_536,
            "events",
        )?;
        let rest_enabled = flag(
            "rest.enabled",
            "KOI_REST_ENABLED",
            file.rest.enabled,
            d.rest_enabled,
        )?;
        let allow = flag(
            "rest.allow_non_loopback",
            "KOI_REST_ALLOW_NON_LOOPBACK",
            file.rest.allow_non_loopback,
            false,
        )?;
        let bind_text = env("KOI_REST_BIND")
            .or(file.rest.bind)
            .unwrap_or_else(|| d.rest_bind.to_string());
        let rest_bind: SocketAddr = bind_text.parse().map_err(|_| {
            invalid(
                "rest.bind",
                "KOI_REST_BIND",
                format!("{bind_text:?}"),
                "an IP address and port such as \"127.0.0.1:7240\" or \"[::1]:7240\"",
            )
        })?;
        if !rest_bind.ip().is_loopback() && !allow {
            return Err(invalid(
                "rest.bind",
                "KOI_REST_BIND",
                format!("{bind_text:?}"),
                "a loopback address unless rest.allow_non_loopback = true (the API has no authentication)",
            ));
        }
        let max_body = number(
            "rest.max_body_bytes",
            "KOI_REST_MAX_BODY_BYTES",
            file.rest.max_body_bytes.map(|b| b as u64),
            d.rest_max_body_bytes as u64,
            1024..=(64 << 20),
            "bytes",
        )?;
        Ok(Config {
            ping_interval: Duration::from_secs(ping_interval),
            ping_timeout: Duration::from_secs(ping_timeout),
            restart_initial: Duration::from_millis(restart_initial),
            restart_max: Duration::from_millis(restart_max),
            stable_after: Duration::from_secs(stable_after),
            subscriber_queue: queue as usize,
            rest_enabled,
            rest_bind,
            rest_allow_non_loopback: allow,
            rest_max_body_bytes: max_body as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "config.toml", |_| None)
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").expect("defaults"), Config::default());
    }

    #[test]
    fn errors_name_key_value_and_allowed_values() {
        let e = parse("[daemon]\nping_interval_secs = 0\n").expect_err("zero");
        let text = e.to_string();
        assert!(
            text.contains("daemon.ping_interval_secs = 0") && text.contains("1 to 3600 seconds"),
            "{text}"
        );
        let e = parse("[rest]\nbind = \"0.0.0.0:80\"\n").expect_err("non-loopback");
        assert!(
            e.to_string().contains("rest.allow_non_loopback = true"),
            "{e}"
        );
        assert!(parse("[rest]\nbind = \"0.0.0.0:80\"\nallow_non_loopback = true\n").is_ok());
        let e = parse("[daemon]\npign = 1\n").expect_err("unknown key");
        assert!(e.to_string().contains("pign"), "{e}");
        let e = parse("[daemon]\nrestart_initial_ms = 5000\nrestart_max_ms = 100\n")
            .expect_err("max < initial");
        assert!(
            e.to_string().contains("at least daemon.restart_initial_ms"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::parse("[rest]\nbind = \"127.0.0.1:1\"\n", "c", |n| {
            (n == "KOI_REST_BIND").then(|| "127.0.0.1:9".to_owned())
        })
        .expect("valid");
        assert_eq!(c.rest_bind.port(), 9);
        let e = Config::parse("", "c", |n| {
            (n == "KOI_REST_ENABLED").then(|| "maybe".to_owned())
        })
        .expect_err("bad flag");
        assert!(
            e.to_string().contains("KOI_REST_ENABLED") && e.to_string().contains("true or false"),
            "{e}"
        );
    }
}
