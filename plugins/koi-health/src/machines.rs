//! Machine health from signals Koi already has, with no traffic of its own: `mdns.service.*`
//! (a machine is heard when a service of its appears, changes or is re-confirmed; a goodbye of
//! its last service is a goodbye of the machine), `mdns.host.seen` (koi-mdns's re-check of known
//! hosts, docs/mdns.md), certmesh's roster (`certmesh/members`: membership and certificate expiry,
//! re-read on `certmesh.members.changed` and `certmesh.cert.renewed`) and `certmesh.heartbeat`.
//! The `machines` service applies the rule of [`crate::tracker::machine_state`] every tick and
//! records what changed. Every field from an event is bounded and checked before use.

use crate::book::{Health, Kind, MAX_MACHINES, MAX_SERVICES_PER_MACHINE, Machine, change, lock};
use crate::tracker::{MachineSignals, State, machine_state};
use koi_mdns_api::{REMOVED, ServiceRecord};
use koi_sdk::{Context, Delivery, MethodError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// How often roster data is re-read even without an event.
pub const ROSTER_EVERY: Duration = Duration::from_secs(300);

/// The machine key of an mDNS host name: lowercase, without `.local.` or the trailing dot;
/// `None` for anything that is not a plausible host name.
pub fn machine_key(host: &str) -> Option<String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let h = h.strip_suffix(".local").unwrap_or(&h).to_owned();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    ok.then_some(h)
}

fn parse_time(text: &str, now: SystemTime) -> SystemTime {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_or(now, |t| t.min(now))
}

/// Applies `change` to the machine keyed by `host` (created if new and there is room).
fn with_machine(health: &Health, host: &str, change: impl FnOnce(&mut MachineSignals)) {
    let Some(key) = machine_key(host) else {
        return;
    };
    if let Some(m) = tracked(&mut lock(&health.machines), key) {
        change(&mut m.signals);
    }
}

/// The machine `key`, added (pending) when new and there is room for it.
fn tracked(machines: &mut BTreeMap<String, Machine>, key: String) -> Option<&mut Machine> {
    if !machines.contains_key(&key) && machines.len() >= MAX_MACHINES {
        tracing::info!("more than {MAX_MACHINES} machines: {key} is not tracked");
        return None;
    }
    Some(machines.entry(key).or_insert_with(|| Machine {
        signals: MachineSignals::default(),
        state: State::Pending,
        since: SystemTime::now(),
        reason: "just heard of".into(),
    }))
}

/// The roster's view: listed machines are in the mesh with their expiry; a machine no longer
/// listed (left, revoked, or this machine left the mesh) loses both, or its old expiry would
/// later mark it down.
fn apply_roster(machines: &mut BTreeMap<String, Machine>, members: Vec<Member>) {
    let listed: Vec<(String, Option<SystemTime>)> = members
        .into_iter()
        .take(MAX_MACHINES)
        .filter_map(|m| {
            let not_after = m
                .not_after
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
            Some((machine_key(&m.host)?, not_after))
        })
        .collect();
    for (key, machine) in machines.iter_mut() {
        if !listed.iter().any(|(k, _)| k == key) {
            machine.signals.in_mesh = false;
            machine.signals.cert_not_after = None;
        }
    }
    for (key, not_after) in listed {
        if let Some(m) = tracked(machines, key) {
            m.signals.in_mesh = true;
            m.signals.cert_not_after = not_after;
        }
    }
}

fn heard(s: &mut MachineSignals, service: &ServiceRecord, now: SystemTime) {
    let at = parse_time(&service.last_seen, now);
    s.last_heard = Some(s.last_heard.map_or(at, |t| t.max(at)));
    s.goodbye = None;
    if s.services.len() < MAX_SERVICES_PER_MACHINE && service.fullname.len() <= 300 {
        s.services.insert(service.fullname.clone());
    }
    s.addresses = service.addresses.iter().take(16).cloned().collect();
}

/// `mdns.service.*`: heard, or gone (a goodbye unless koi-mdns says it went unanswered).
pub async fn on_mdns(ctx: Context, delivery: Delivery<Value>) {
    let Ok(health) = ctx.state::<Health>() else {
        return;
    };
    let event = match delivery {
        Delivery::Event(e) => e,
        Delivery::Gap(_) => return resync(&ctx, &health).await,
    };
    let Some(service) = event
        .payload
        .get("service")
        .and_then(|s| ServiceRecord::deserialize(s).ok())
    else {
        return;
    };
    let now = SystemTime::now();
    if event.topic == REMOVED {
        let unanswered =
            event.payload.get("reason").and_then(Value::as_str) == Some(koi_mdns_api::UNANSWERED);
        with_machine(&health, &service.host, |s| {
            s.services.remove(&service.fullname);
            if s.services.is_empty() && !unanswered {
                s.goodbye = Some(now);
            }
        });
    } else {
        with_machine(&health, &service.host, |s| heard(s, &service, now));
    }
    evaluate(&ctx, &health).await;
}

/// Payload of `mdns.host.seen`.
#[derive(Deserialize)]
struct HostSeen {
    host: String,
    last_seen: String,
}

/// `mdns.host.seen`: the host answered koi-mdns's re-check.
pub async fn on_host_seen(ctx: Context, delivery: Delivery<Value>) {
    let (Ok(health), Delivery::Event(e)) = (ctx.state::<Health>(), delivery) else {
        return;
    };
    let Ok(seen) = HostSeen::deserialize(&e.payload) else {
        return;
    };
    let at = parse_time(&seen.last_seen, SystemTime::now());
    let known = machine_key(&seen.host).is_some_and(|k| lock(&health.machines).contains_key(&k));
    if known {
        with_machine(&health, &seen.host, |s| {
            s.last_heard = Some(s.last_heard.map_or(at, |t| t.max(at)));
        });
    }
}

/// `certmesh.heartbeat`: this machine's beat to its CA.
pub async fn on_heartbeat(ctx: Context, delivery: Delivery<Value>) {
    let (Ok(health), Delivery::Event(e)) = (ctx.state::<Health>(), delivery) else {
        return;
    };
    let p = &e.payload;
    let (Some(host), Some(ok)) = (
        p.get("host").and_then(Value::as_str),
        p.get("ok").and_then(Value::as_bool),
    ) else {
        return;
    };
    let reason = p
        .get("reason")
        .and_then(Value::as_str)
        .map(|r| crate::translog::field(r, 200))
        .unwrap_or_else(|| "no reason given".into());
    with_machine(&health, host, |s| {
        s.is_self = true; // heartbeats are published on the member itself
        s.heartbeat_failing = (!ok).then_some(reason);
    });
    evaluate(&ctx, &health).await;
}

/// `certmesh.members.changed`, `certmesh.cert.renewed`: re-read the roster.
pub async fn on_roster(ctx: Context, delivery: Delivery<Value>) {
    if let Ok(health) = ctx.state::<Health>() {
        let _ = delivery;
        read_roster(&ctx, &health).await;
        evaluate(&ctx, &health).await;
    }
}

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Deserialize)]
struct Member {
    host: String,
    #[serde(default)]
    not_after: Option<String>,
}

/// Reads `certmesh/members`; when certmesh (or the method) is missing, says so once.
pub async fn read_roster(ctx: &Context, health: &Health) {
    match ctx
        .call::<_, Members>("certmesh", "members", &json!({}))
        .await
    {
        Ok(roster) => {
            *lock(&health.certmesh_note) = None;
            apply_roster(&mut lock(&health.machines), roster.members);
        }
        Err(e) => {
            let mut note = lock(&health.certmesh_note);
            if note.is_none() {
                tracing::info!(
                    "no certmesh roster (certificate expiry is not used until it answers): {}",
                    e.message()
                );
            }
            *note = Some(format!(
                "certmesh roster unavailable ({}); retried every {} min",
                crate::translog::field(e.message(), 120),
                ROSTER_EVERY.as_secs() / 60
            ));
        }
    }
}

#[derive(Deserialize)]
struct Snapshot {
    services: Vec<ServiceRecord>,
}

/// Reads koi-mdns's cache (at start and after a gap).
async fn resync(ctx: &Context, health: &Health) {
    match ctx.call::<_, Snapshot>("mdns", "query", &json!({})).await {
        Ok(snapshot) => {
            let now = SystemTime::now();
            for service in snapshot.services.iter().take(MAX_MACHINES * 4) {
                with_machine(health, &service.host, |s| heard(s, service, now));
            }
        }
        Err(e) => tracing::info!("no mDNS snapshot (is koi-mdns installed?): {}", e.message()),
    }
}

/// Applies the rule to every machine and records what changed.
pub async fn evaluate(ctx: &Context, health: &Health) {
    let now = SystemTime::now();
    let changes: Vec<_> = {
        let mut machines = lock(&health.machines);
        machines
            .iter_mut()
            .filter_map(|(name, m)| {
                let (state, reason) = machine_state(&m.signals, health.threshold, now);
                if state == m.state {
                    if state == State::Up || state == State::Degraded {
                        m.reason = reason; // keeps "heard 5s ago" current without a transition
                    }
                    return None;
                }
                let old = m.state;
                m.state = state;
                m.since = now;
                m.reason = reason;
                Some(change(name, Kind::Machine, old, state, &m.reason, now))
            })
            .collect()
    };
    health.record(ctx, changes).await;
}

/// The tick of the `machines` service: a tenth of the threshold, between 200 ms and 5 s.
pub fn tick(threshold: Duration) -> Duration {
    (threshold / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// The `machines` service (daemon mode).
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    let health = ctx.state::<Health>()?;
    resync(&ctx, &health).await;
    read_roster(&ctx, &health).await;
    let mut roster_at = tokio::time::Instant::now();
    let every = tick(health.threshold);
    loop {
        tokio::select! {
            () = ctx.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        if roster_at.elapsed() >= ROSTER_EVERY {
            roster_at = tokio::time::Instant::now();
            read_roster(&ctx, &health).await;
        }
        evaluate(&ctx, &health).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(machine_key("Stone-04.local.").as_deref(), Some("stone-04"));
        assert_eq!(machine_key("nas.lan").as_deref(), Some("nas.lan"));
        assert_eq!(machine_key("bad host\n"), None);
        assert_eq!(machine_key(""), None);
    }

    fn member(host: &str, not_after: &str) -> Member {
        Member {
            host: host.into(),
            not_after: Some(not_after.into()),
        }
    }

    #[test]
    fn a_machine_that_left_the_roster_loses_its_mesh_signals() {
        let mut machines = BTreeMap::new();
        apply_roster(
            &mut machines,
            vec![
                member("stone-01", "2026-12-01T00:00:00Z"),
                member("stone-02", "2026-12-02T00:00:00Z"),
            ],
        );
        assert!(machines["stone-02"].signals.in_mesh);
        assert!(machines["stone-02"].signals.cert_not_after.is_some());
        apply_roster(
            &mut machines,
            vec![member("stone-01", "2026-12-01T00:00:00Z")],
        );
        assert!(machines["stone-01"].signals.in_mesh);
        assert!(!machines["stone-02"].signals.in_mesh);
        assert_eq!(machines["stone-02"].signals.cert_not_after, None);
    }
}
