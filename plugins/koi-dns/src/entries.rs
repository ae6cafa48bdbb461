//! Static entries and listings: `koi dns add NAME IP...`, `koi dns remove NAME` (saved
//! atomically in `$KOI_HOME/dns/static.json`, live at once), and `koi dns list` (every
//! resolvable name with its source, addresses and TTL).

use crate::addrs;
use crate::records;
use crate::sources;
use crate::state::{Dns, MAX_STATIC, MAX_STATIC_ADDRS, StaticFile, lock};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// Params of `add`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddParams {
    /// The name: one label (`nas`, the zone is added) or a name in the zone (`nas.lan`).
    pub name: String,
    /// Its private addresses (1 to 32).
    pub ip: Vec<String>,
}

/// Params of `remove`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// The name as added.
    pub name: String,
}

/// Result of `add` and `remove`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EntryResult {
    /// The name.
    pub name: String,
    /// Its addresses now (empty after `remove`).
    pub addresses: Vec<String>,
    /// Static entries in total.
    pub entries: usize,
}

/// The stored key of a name (`nas`, `nas.lan`), checked.
fn key(name: &str, dns: &Dns) -> Result<String, MethodError> {
    let zone = lock(&dns.zone).clone();
    let k = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if records::in_zone(&k, &zone).is_none() {
        return Err(MethodError::invalid_params(format!(
            "`{}` is not a name koi-dns can serve: use one label (`nas`) or a name in the zone \
             `{}` (`nas.{}`), with letters, digits and hyphens",
            name.chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect::<String>(),
            zone.to_ascii().trim_end_matches('.'),
            zone.to_ascii().trim_end_matches('.')
        )));
    }
    Ok(k)
}

async fn save(
    ctx: &Context,
    dns: &Dns,
    entries: BTreeMap<String, Vec<IpAddr>>,
) -> Result<(), MethodError> {
    let file = dns.static_file.clone().map_err(MethodError::new)?;
    if let Some(p) = &dns.static_problem {
        return Err(MethodError::new(format!(
            "static entries are not saved because the file could not be read: {p}"
        )));
    }
    let data = StaticFile {
        entries: entries.clone(),
    };
    ctx.blocking("save the static DNS entries", move || {
        file.save(&data)
            .map_err(|e| MethodError::new(e.to_string()))
    })
    .await?;
    *lock(&dns.statics) = entries;
    let diff = dns.rebuild();
    sources::after_rebuild(ctx, dns, diff).await;
    Ok(())
}

/// `add`.
pub async fn add(ctx: Context, p: AddParams) -> Result<EntryResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    let name = key(&p.name, &dns)?;
    if p.ip.is_empty() || p.ip.len() > MAX_STATIC_ADDRS {
        return Err(MethodError::invalid_params(format!(
            "give 1 to {MAX_STATIC_ADDRS} addresses, e.g. `koi dns add nas 192.168.1.20`"
        )));
    }
    let cgnat = dns.cgnat.load(Ordering::Relaxed);
    let mut ips = Vec::new();
    for s in &p.ip {
        let ip: IpAddr = s.trim().parse().map(addrs::canonical).map_err(|_| {
            MethodError::invalid_params(format!(
                "`{}` is not an IP address: write e.g. 192.168.1.20 or fd00::20",
                s.chars().take(60).collect::<String>()
            ))
        })?;
        if !addrs::is_private(ip, cgnat) {
            return Err(MethodError::invalid_params(format!(
                "{ip} is not a private address: local names resolve only to RFC 1918, IPv6 ULA and \
                 link-local addresses (RFC 6598 100.64.0.0/10 with `koi dns serve --allow-cgnat`)"
            )));
        }
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let _one = dns.saving.lock().await;
    let mut entries = lock(&dns.statics).clone();
    if entries.len() >= MAX_STATIC && !entries.contains_key(&name) {
        return Err(MethodError::new(format!(
            "there are already {MAX_STATIC} static entries (the limit): remove some with \
             `koi dns remove NAME`"
        )));
    }
    entries.insert(name.clone(), ips.clone());
    let total = entries.len();
    save(&ctx, &dns, entries).await?;
    Ok(EntryResult {
        name,
        addresses: ips.iter().map(ToString::to_string).collect(),
        entries: total,
    })
}

/// `remove`.
pub async fn remove(ctx: Context, p: RemoveParams) -> Result<EntryResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    let name = key(&p.name, &dns)?;
    let _one = dns.saving.lock().await;
    let mut entries = lock(&dns.statics).clone();
    if entries.remove(&name).is_none() {
        return Err(MethodError::new(format!(
            "there is no static entry `{name}`: `koi dns list` shows the names and their sources"
        )));
    }
    let total = entries.len();
    save(&ctx, &dns, entries).await?;
    Ok(EntryResult {
        name,
        addresses: Vec::new(),
        entries: total,
    })
}

/// One row of `list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Row {
    /// The name.
    pub name: String,
    /// Which source answers it.
    pub source: String,
    /// What produced it.
    pub detail: String,
    /// Addresses.
    pub addresses: Vec<String>,
    /// TTL in seconds.
    pub ttl: u32,
}

/// Result of `list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListResult {
    /// The zone.
    pub zone: String,
    /// Names, sorted.
    pub names: Vec<Row>,
    /// Service names with SRV/TXT records (`_grafana._tcp.lan`).
    pub services: Vec<String>,
}

/// In one-shot mode, reads certmesh and mDNS once (no events flow then).
pub async fn refresh_if_one_shot(ctx: &Context, dns: &Dns) {
    if ctx.mode() != RunMode::Daemon {
        sources::refresh_members(ctx, dns).await;
        sources::resync_mdns(ctx, dns).await;
    }
}

/// `list`.
pub async fn list(ctx: Context, _: NoParams) -> Result<ListResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    refresh_if_one_shot(&ctx, &dns).await;
    let snap = dns.shared.snapshot.load();
    let mut names: Vec<Row> = snap
        .hosts
        .iter()
        .map(|(n, h)| Row {
            name: n.to_ascii().trim_end_matches('.').to_owned(),
            source: h.source.as_str().to_owned(),
            detail: h.detail.clone(),
            addresses: h
                .v4
                .iter()
                .map(ToString::to_string)
                .chain(h.v6.iter().map(ToString::to_string))
                .collect(),
            ttl: h.ttl,
        })
        .collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services: Vec<String> = snap
        .services
        .keys()
        .map(|n| n.to_ascii().trim_end_matches('.').to_owned())
        .collect();
    services.sort();
    Ok(ListResult {
        zone: snap.zone.to_ascii().trim_end_matches('.').to_owned(),
        names,
        services,
    })
}
