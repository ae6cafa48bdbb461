//! Keeping the sources current through the host: `mdns.service.*` events (no polling; a gap or
//! the start triggers one `mdns/query` snapshot), and certmesh's `certmesh/members` re-read on
//! every `certmesh.members.changed`. When certmesh is missing (not installed, or a version
//! without the method), that is logged once at info, shown in `status`, and retried on the next
//! event or serve. After every rebuild, new and gone aliases are published as
//! `dns.alias.created` / `dns.alias.removed`, and each alias backed by a certmesh member is sent
//! to `certmesh/request-names` once, so the member's next certificate carries it (part 4).

use crate::records::{Alias, Member};
use crate::state::{self, Dns, MAX_MEMBERS, MAX_REMEMBERED, MAX_SERVICES, lock};
use koi_mdns_api::{REMOVED, ServiceEventPayload, ServiceRecord};
use koi_sdk::{Context, Delivery};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Topic: an alias was created.
pub const ALIAS_CREATED: &str = "dns.alias.created";
/// Topic: an alias is gone.
pub const ALIAS_REMOVED: &str = "dns.alias.removed";
/// Topic certmesh publishes when its roster changes.
pub const MEMBERS_CHANGED: &str = "certmesh.members.changed";

/// Field checks on an mDNS record before it is kept (hostile input).
fn sane(s: &ServiceRecord) -> bool {
    let short = |t: &str, n: usize| t.len() <= n && !t.chars().any(char::is_control);
    short(&s.fullname, 255)
        && short(&s.host, 255)
        && short(&s.service_type, 64)
        && s.addresses.len() <= 32
        && s.addresses.iter().all(|a| short(a, 64))
        && s.txt.len() <= 64
        && s.txt.iter().all(|(k, v)| {
            k.len() + v.len() < 255 && !k.chars().chain(v.chars()).any(char::is_control)
        })
}

/// `mdns.service.*`: applied in order; a gap triggers a resync.
pub async fn on_mdns(ctx: Context, delivery: Delivery<ServiceEventPayload>) {
    let Ok(dns) = ctx.state::<Dns>() else { return };
    let diff = match delivery {
        Delivery::Gap(_) => return resync_mdns(&ctx, &dns).await,
        Delivery::Event(e) => {
            let _order = dns.mdns_order.lock().await;
            let s = e.payload.service;
            {
                let mut services = lock(&dns.services);
                if e.topic == REMOVED {
                    services.remove(&s.fullname);
                } else if sane(&s)
                    && (services.len() < MAX_SERVICES || services.contains_key(&s.fullname))
                {
                    services.insert(s.fullname.clone(), s);
                }
            }
            dns.rebuild()
        }
    };
    after_rebuild(&ctx, &dns, diff).await;
}

/// `mdns.service.changed` carries the same `service` field; it is read through this type.
#[derive(Deserialize)]
struct Snapshot {
    services: Vec<ServiceRecord>,
}

/// Replaces the mDNS services with koi-mdns's cache.
pub async fn resync_mdns(ctx: &Context, dns: &Dns) {
    let diff = {
        let _order = dns.mdns_order.lock().await;
        match ctx.call::<_, Snapshot>("mdns", "query", &json!({})).await {
            Ok(snap) => {
                *lock(&dns.services) = snap
                    .services
                    .into_iter()
                    .filter(sane)
                    .take(MAX_SERVICES)
                    .map(|s| (s.fullname.clone(), s))
                    .collect();
                dns.rebuild()
            }
            Err(e) => {
                tracing::info!(
                    "no mDNS services for DNS yet (is koi-mdns installed?): {}",
                    e.message()
                );
                return;
            }
        }
    };
    after_rebuild(ctx, dns, diff).await;
}

#[derive(Deserialize)]
struct MembersResult {
    #[serde(default)]
    role: String,
    #[serde(default)]
    roster_version: u64,
    #[serde(default)]
    members: Vec<Member>,
}

/// `certmesh.members.changed`: read the members again.
pub async fn on_members_changed(ctx: Context, _delivery: Delivery<serde_json::Value>) {
    if let Ok(dns) = ctx.state::<Dns>() {
        refresh_members(&ctx, &dns).await;
    }
}

/// Reads `certmesh/members`; on failure keeps the last members and says why in `status`.
pub async fn refresh_members(ctx: &Context, dns: &Dns) {
    let result = ctx
        .call::<_, MembersResult>("certmesh", "members", &json!({}))
        .await;
    {
        let mut mesh = lock(&dns.mesh);
        match result {
            Ok(r) => {
                mesh.members = r
                    .members
                    .into_iter()
                    .filter(|m| {
                        m.host.len() <= 63 && m.names.len() <= 64 && m.addresses.len() <= 32
                    })
                    .take(MAX_MEMBERS)
                    .collect();
                mesh.roster_version = r.roster_version;
                mesh.note = if r.role == "none" {
                    "this machine is in no certificate mesh".into()
                } else {
                    "ok".into()
                };
            }
            Err(e) => {
                if !mesh.logged_unavailable {
                    tracing::info!(
                        "certmesh members unavailable ({}); DNS serves the other sources and \
                         retries on the next certmesh event or serve",
                        e.message()
                    );
                    mesh.logged_unavailable = true;
                }
                mesh.note = format!(
                    "unavailable: {} (retried on the next certmesh.members.changed or \
                     `koi dns serve`)",
                    e.message()
                );
                return;
            }
        }
    }
    let diff = dns.rebuild();
    after_rebuild(ctx, dns, diff).await;
}

/// Payload of `dns.alias.created` and `dns.alias.removed`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AliasEvent {
    /// The alias.
    #[serde(flatten)]
    pub alias: Alias,
}

/// Publishes alias changes and sends the SAN requests still due.
pub async fn after_rebuild(ctx: &Context, dns: &Dns, diff: state::AliasDiff) {
    for a in diff.created {
        let _ = ctx.publish(ALIAS_CREATED, &AliasEvent { alias: a }).await;
    }
    for a in diff.removed {
        let _ = ctx.publish(ALIAS_REMOVED, &AliasEvent { alias: a }).await;
    }
    for (host, names) in due_requests(dns) {
        request_names(ctx, dns, &host, names).await;
    }
}

/// The `(member host, aliases)` pairs not yet accepted by certmesh.
pub fn due_requests(dns: &Dns) -> Vec<(String, Vec<String>)> {
    let mesh = lock(&dns.mesh);
    let aliases = lock(&dns.aliases);
    let requested = lock(&dns.requested);
    let mut due: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for a in aliases.values() {
        for h in &a.hosts {
            // Asked under the roster's spelling of the host name.
            let member = mesh.members.iter().find(|m| m.host.eq_ignore_ascii_case(h));
            if let Some(m) = member
                && !requested.contains(&format!("{} {}", m.host, a.alias))
            {
                due.entry(m.host.clone()).or_default().push(a.alias.clone());
            }
        }
    }
    due.into_iter().collect()
}

#[derive(Deserialize)]
struct Refused {
    name: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct RequestNamesResult {
    #[serde(default)]
    accepted: Vec<String>,
    #[serde(default)]
    already: Vec<String>,
    #[serde(default)]
    refused: Vec<Refused>,
}

async fn request_names(ctx: &Context, dns: &Dns, host: &str, names: Vec<String>) {
    let params = json!({ "host": host, "names": names, "requester": "dns" });
    match ctx
        .call::<_, RequestNamesResult>("certmesh", "request-names", &params)
        .await
    {
        Ok(r) => {
            let mut requested = lock(&dns.requested);
            for n in r
                .accepted
                .iter()
                .chain(&r.already)
                .chain(r.refused.iter().map(|x| &x.name))
            {
                if requested.len() < MAX_REMEMBERED {
                    requested.insert(format!("{host} {n}"));
                }
            }
            for x in &r.refused {
                tracing::info!("certmesh refused {} for {host}: {}", x.name, x.reason);
            }
            *lock(&dns.san_note) = String::new();
        }
        Err(e) => {
            let mut note = lock(&dns.san_note);
            if note.is_empty() {
                tracing::info!(
                    "cannot ask certmesh to add {names:?} to {host}'s certificate ({}); \
                     retried on the next change",
                    e.message()
                );
            }
            *note = format!(
                "certmesh/request-names failed: {} (retried on the next change)",
                e.message()
            );
        }
    }
}
