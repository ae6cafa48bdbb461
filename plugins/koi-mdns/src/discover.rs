//! `koi mdns discover [TYPE] [--timeout S] [--watch] [--interface IF]`.
//!
//! One-shot: browse for `--timeout` seconds, then return every service resolved (or, without a
//! TYPE, every service type seen, by browsing `_services._dns-sd._udp`). `--watch`: stream one item
//! per change until Ctrl-C, marked like `avahi-browse -p`: `+` appeared, `=` changed, `-` removed.
//! Every change also updates the cache and is published as an `mdns.service.*` event.

use crate::cache::{Change, ServiceRecord};
use crate::engine::{Engine, data_from_resolved};
use crate::error::MdnsError;
use crate::events;
use crate::interfaces::Selection;
use crate::names::{self, SERVICES_META_TYPE, ServiceType};
use koi_sdk::protocol::codes;
use koi_sdk::{Context, MethodError};
use mdns_sd::ServiceEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Params of `discover`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoverParams {
    /// Service type to browse, e.g. `_http._tcp`. Without it, list the service types on the link.
    #[serde(default)]
    pub service_type: Option<String>,
    /// Seconds to collect answers before printing (one-shot mode).
    #[serde(default)]
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub timeout: Option<f64>,
    /// Stream `+`/`=`/`-` changes until Ctrl-C instead of printing a table.
    #[serde(default)]
    pub watch: bool,
    /// Use only these interfaces (repeatable) instead of the default rule.
    #[serde(default)]
    pub interface: Vec<String>,
}

/// The default collection time.
pub const DEFAULT_TIMEOUT_S: f64 = 3.0;

/// `+` appeared, `=` changed, `-` removed (as `avahi-browse -p` marks lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Appeared.
    #[serde(rename = "+")]
    Appeared,
    /// Changed.
    #[serde(rename = "=")]
    Changed,
    /// Removed.
    #[serde(rename = "-")]
    Removed,
}

/// One streamed line of `discover --watch`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WatchItem {
    /// `+` appeared, `=` changed, `-` removed.
    pub action: Action,
    /// Service type (`_http._tcp`).
    pub service_type: String,
    /// Instance name (absent when watching service types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Target host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Addresses (IPv6 link-local with `%scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// TXT properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub txt: BTreeMap<String, String>,
    /// For `=`: which fields changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// When this was seen (RFC 3339, UTC).
    pub last_seen: String,
}

impl WatchItem {
    fn from_record(action: Action, r: &ServiceRecord, changed: &[&str]) -> Self {
        Self {
            action,
            service_type: r.service_type.clone(),
            instance: Some(r.instance.clone()),
            host: Some(r.host.clone()),
            addresses: r.addresses.clone(),
            port: Some(r.port),
            txt: r.txt.clone(),
            changed: changed.iter().map(|c| (*c).to_owned()).collect(),
            last_seen: r.last_seen.clone(),
        }
    }

    fn for_type(action: Action, service_type: &str) -> Self {
        Self {
            action,
            service_type: service_type.to_owned(),
            instance: None,
            host: None,
            addresses: Vec::new(),
            port: None,
            txt: BTreeMap::new(),
            changed: Vec::new(),
            last_seen: crate::cache::timestamp(SystemTime::now()),
        }
    }
}

/// A service type seen on the link.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TypeRecord {
    /// The service type (`_http._tcp`).
    pub service_type: String,
    /// When it was last seen (RFC 3339, UTC).
    pub last_seen: String,
}

/// Result of `discover`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DiscoverResult {
    /// What was browsed: a service type, or `_services._dns-sd._udp` for the type list.
    pub browsed: String,
    /// Services resolved (when browsing a type); with `--watch`, those present at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceRecord>>,
    /// Service types seen (when browsing without a type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_types: Option<Vec<TypeRecord>>,
}

/// Checks `--timeout`.
pub fn timeout_of(given: Option<f64>) -> Result<Duration, MdnsError> {
    let seconds = given.unwrap_or(DEFAULT_TIMEOUT_S);
    if !(0.1..=3600.0).contains(&seconds) || !seconds.is_finite() {
        return Err(MdnsError::BadTimeout { seconds });
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The `discover` method.
pub async fn run(ctx: Context, p: DiscoverParams) -> Result<DiscoverResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let service_type = p
        .service_type
        .as_deref()
        .map(ServiceType::parse)
        .transpose()?;
    let timeout = timeout_of(p.timeout)?;
    let selection = Selection::from_args(&p.interface);
    let daemon = engine.browser(&ctx, &selection).await?;
    let browsed = service_type
        .as_ref()
        .map_or_else(|| SERVICES_META_TYPE.to_owned(), ServiceType::fqdn);
    let receiver = daemon.get().browse(&browsed).map_err(MdnsError::from)?;
    let deadline = (!p.watch).then(|| tokio::time::Instant::now() + timeout);
    let label = service_type
        .as_ref()
        .map_or_else(|| "service types".to_owned(), ServiceType::short);

    let mut services: BTreeMap<String, ServiceRecord> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut cancelled = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = ctx.cancelled() => { cancelled = true; break; }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            _ = ticker.tick(), if !p.watch => {
                ctx.progress(&format!("browsing {label}… {} found", services.len().max(types.len())), None, None);
                continue;
            }
            e = receiver.recv_async() => match e { Ok(e) => e, Err(_) => break },
        };
        match (&service_type, event) {
            (None, ServiceEvent::ServiceFound(_, found)) => {
                let short = names::short_type(&found);
                let now = crate::cache::timestamp(SystemTime::now());
                if types.insert(short.clone(), now).is_none() && p.watch {
                    ctx.emit(&WatchItem::for_type(Action::Appeared, &short))
                        .await;
                }
            }
            (None, ServiceEvent::ServiceRemoved(_, gone)) => {
                let short = names::short_type(&gone);
                if types.remove(&short).is_some() && p.watch {
                    ctx.emit(&WatchItem::for_type(Action::Removed, &short))
                        .await;
                }
            }
            (Some(_), ServiceEvent::ServiceResolved(resolved)) => {
                let change = engine.observe(data_from_resolved(&resolved));
                match &change {
                    Change::Appeared(r) | Change::Refreshed(r) | Change::Changed(r, _) => {
                        let previous = services.insert(r.fullname.to_ascii_lowercase(), r.clone());
                        if p.watch {
                            match (&change, previous) {
                                (Change::Appeared(r), _) | (Change::Refreshed(r), None) => {
                                    ctx.emit(&WatchItem::from_record(Action::Appeared, r, &[]))
                                        .await
                                }
                                (Change::Changed(r, fields), _) => {
                                    ctx.emit(&WatchItem::from_record(Action::Changed, r, fields))
                                        .await
                                }
                                _ => {}
                            }
                        }
                    }
                    Change::Removed(_) => {}
                }
                events::publish(&ctx, &change).await;
            }
            (Some(_), ServiceEvent::ServiceRemoved(_, fullname)) => {
                let known = services.remove(&fullname.to_ascii_lowercase());
                let change = engine.remove(&fullname);
                if p.watch {
                    if let Some(Change::Removed(r)) = &change {
                        ctx.emit(&WatchItem::from_record(Action::Removed, r, &[]))
                            .await;
                    } else if let Some(r) = known {
                        ctx.emit(&WatchItem::from_record(Action::Removed, &r, &[]))
                            .await;
                    }
                }
                if let Some(change) = change {
                    events::publish(&ctx, &change).await;
                }
            }
            _ => {}
        }
    }
    drop(receiver);
    drop(daemon);
    if cancelled && !p.watch {
        return Err(MethodError::with_code(
            codes::REQUEST_CANCELLED,
            "discovery cancelled before the timeout",
        ));
    }
    Ok(if service_type.is_some() {
        DiscoverResult {
            browsed: names::short_type(&browsed),
            services: Some(services.into_values().collect()),
            service_types: None,
        }
    } else {
        DiscoverResult {
            browsed: names::short_type(&browsed),
            services: None,
            service_types: Some(
                types
                    .into_iter()
                    .map(|(service_type, last_seen)| TypeRecord {
                        service_type,
                        last_seen,
                    })
                    .collect(),
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_of(None), Ok(Duration::from_secs(3)));
        assert_eq!(timeout_of(Some(0.5)), Ok(Duration::from_millis(500)));
        assert!(timeout_of(Some(0.0)).is_err());
        assert!(timeout_of(Some(f64::NAN)).is_err());
        assert!(timeout_of(Some(4000.0)).is_err());
    }

    #[test]
    fn watch_items_carry_the_avahi_marker_first() {
        let item = WatchItem::for_type(Action::Removed, "_http._tcp");
        let json = serde_json::to_value(&item).expect("serialisable");
        assert_eq!(json["action"], "-");
        // The host prints items as sorted key=value pairs: `action` sorts first.
        let first = json
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        assert_eq!(first, "action");
    }
}
