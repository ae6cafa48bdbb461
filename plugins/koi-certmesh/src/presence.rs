//! Presence of the CAs on the LAN (issue 11 item 7, the first step of failover): who advertises
//! `_certmesh._tcp`, in which role and term, and what a standby makes of it.
//!
//! - The primary's advertisement ([`crate::background`]) carries `role=primary` and `term=N` (the
//!   roster's `mesh.term`) in TXT beside `fp` and `port`.
//! - A standby advertises itself (`koi certmesh standby on HOST`, `role=standby`, its term, the
//!   mesh fingerprint) through the daemon-mode [`SERVICE`], so the LAN sees every live standby;
//!   `join` skips advertisements with `role=standby` (they do not enroll).
//! - A standby watches the primary through `mdns.service.*` events from koi-mdns ([`on_mdns`]):
//!   an advertisement of the same mesh (same `fp`) with `role=primary` (or no role: older CAs)
//!   appearing or changing marks the primary present; its removal (goodbye, TTL expiry, or
//!   koi-mdns's re-check going `unanswered`) marks it absent. Together with the heartbeat
//!   ([`crate::heartbeat`], which beats against the primary) this gives `status` the
//!   `primary_watch` record: when the primary was last seen by either signal and, when both
//!   have failed, since when (`unreachable_since`) — the clock a takeover's grace period runs on.
//!
//! Everything read from an mDNS answer is checked: the fingerprint must match the mesh's exactly
//! (case-insensitive), the role is one of two words, the term is a decimal `u64` of at most 20
//! digits; anything else is ignored. The watch holds one record, so a flood cannot grow it.

use std::sync::Mutex;
use std::time::SystemTime;

use koi_mdns_api::{REMOVED, ServiceRecord};
use koi_sdk::{Context, Delivery, MethodError};
use serde_json::{Value, json};

use crate::app::App;
use crate::files::Membership;
use crate::layout::Layout;
use crate::standby_state::StandbyState;
use crate::wire::SERVICE_TYPE;

/// The service's name (in `status` under `details.daemon_services`).
pub const SERVICE: &str = "presence";
/// TXT key of the advertiser's role.
pub const ROLE_KEY: &str = "role";
/// TXT key of the advertiser's term.
pub const TERM_KEY: &str = "term";
/// Role of the CA that signs.
pub const PRIMARY: &str = "primary";
/// Role of a standby CA.
pub const STANDBY: &str = "standby";

/// What one `_certmesh._tcp` advertisement of this mesh says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// `primary` or `standby`.
    pub role: &'static str,
    /// The advertised term (0 when absent).
    pub term: u64,
    /// Whether the advertisement is there (`false` for `removed`).
    pub present: bool,
    /// Why it left, when koi-mdns said (`unanswered`), else `goodbye` for a removal.
    pub reason: Option<String>,
    /// The advertiser's host name (from its instance name `koi certmesh standby on HOST`, or
    /// `koi certmesh CA on HOST` for a primary, where it is optional).
    pub host: Option<String>,
    /// A primary's API (`ADDR:PORT`, its first usable address), when it has one.
    pub endpoint: Option<String>,
    /// The advertising machine's mDNS host (`a.local.`, at most 255 bytes): what
    /// `mdns.host.seen` names when koi-mdns's re-check hears it.
    pub mdns_host: String,
    /// The advertisement's full name, at most 255 bytes (which advertisement this is).
    pub key: String,
}

/// The API endpoint of an advertisement: its first IPv4 (else non-link-local IPv6) address that
/// is not loopback, unspecified or multicast, and its port (not 0).
fn endpoint_of(service: &ServiceRecord) -> Option<String> {
    if service.port == 0 {
        return None;
    }
    let usable =
        |ip: &std::net::IpAddr| !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast());
    let ips: Vec<std::net::IpAddr> = service
        .addresses
        .iter()
        .take(16)
        .filter_map(|a| a.parse().ok())
        .filter(usable)
        .collect();
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().find(|ip| !ip.to_string().starts_with("fe80")))?;
    Some(std::net::SocketAddr::new(*ip, service.port).to_string())
}

/// The instance-name prefix of a standby's advertisement.
pub const STANDBY_INSTANCE_PREFIX: &str = "koi certmesh standby on ";

/// The instance-name prefix of a primary's advertisement.
pub const PRIMARY_INSTANCE_PREFIX: &str = "koi certmesh CA on ";

/// The host name in a standby's instance name, if well formed.
fn standby_host(instance: &str) -> Option<String> {
    instance_host(instance, STANDBY_INSTANCE_PREFIX)
}

/// The host name after `prefix` in an instance name, if well formed (letters, digits, `-`, `.`,
/// `_`; at most 253 bytes).
pub fn instance_host(instance: &str, prefix: &str) -> Option<String> {
    let host = instance.strip_prefix(prefix)?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| host.to_owned())
}

/// Reads one `mdns.service.*` event: `None` unless it is a `_certmesh._tcp` advertisement of the
/// mesh with root fingerprint `fingerprint` whose TXT is well formed.
pub fn classify(
    topic: &str,
    service: &ServiceRecord,
    reason: Option<&str>,
    fingerprint: &str,
) -> Option<Sighting> {
    let ty = service.service_type.trim_end_matches('.');
    if !ty.eq_ignore_ascii_case(SERVICE_TYPE) && !ty.eq_ignore_ascii_case("_certmesh._tcp.local") {
        return None;
    }
    let fp = service.txt.get("fp")?;
    if fp.len() > 128 || !fp.eq_ignore_ascii_case(fingerprint) {
        return None;
    }
    let role = match service.txt.get(ROLE_KEY).map(String::as_str) {
        None | Some(PRIMARY) => PRIMARY,
        Some(STANDBY) => STANDBY,
        Some(_) => return None,
    };
    let term = match service.txt.get(TERM_KEY) {
        None => 0,
        Some(t) if !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()) => {
            t.parse().ok()?
        }
        Some(_) => return None,
    };
    let present = topic != REMOVED;
    let reason = (!present).then(|| {
        reason
            .filter(|r| *r == koi_mdns_api::UNANSWERED)
            .unwrap_or("goodbye")
            .to_owned()
    });
    let host = if role == STANDBY {
        Some(standby_host(&service.instance)?)
    } else {
        crate::demote::primary_host(&service.instance)
    };
    let endpoint = if role == PRIMARY {
        endpoint_of(service)
    } else {
        None
    };
    Some(Sighting {
        role,
        term,
        present,
        reason,
        host,
        endpoint,
        mdns_host: service.host.chars().take(255).collect(),
        key: service.fullname.chars().take(255).collect(),
    })
}

/// What this standby last learned of the primary over mDNS (memory only: a restart starts
/// from "not seen", and koi-mdns's cache is read at start and every 10 s).
#[derive(Debug, Clone, Default)]
struct Seen {
    present: Option<bool>,
    since: Option<SystemTime>,
    reason: Option<String>,
    term: u64,
    /// The last POSITIVE mDNS evidence that a primary was alive: its advertisement appearing or
    /// changing, or koi-mdns's re-check hearing its host (`mdns.host.seen`, at the time the
    /// answered query went out). The grace period runs from here (or from the last good beat).
    alive_at: Option<SystemTime>,
    /// Each primary advertisement (by full name, at most [`MAX_STANDBYS`]); the primary counts
    /// as present while any of them is.
    primaries: std::collections::BTreeMap<String, PrimaryAd>,
    /// Standbys seen over mDNS: host → present (at most [`MAX_STANDBYS`]).
    standbys: std::collections::BTreeMap<String, bool>,
    /// When this process first asked whether the primary is gone: a primary never seen since
    /// counts as absent from then on.
    first_look: Option<SystemTime>,
}

/// One primary advertisement as last heard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PrimaryAd {
    present: bool,
    term: u64,
    endpoint: Option<String>,
    host: Option<String>,
    mdns_host: String,
}

/// A present primary advertisement with an API: what a higher term's claim is checked from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The advertised term.
    pub term: u64,
    /// Its API, `ADDR:PORT`.
    pub endpoint: String,
    /// The host its instance name gives (`koi certmesh CA on HOST`), if well formed.
    pub host: Option<String>,
}

/// Bound on the standbys remembered.
pub const MAX_STANDBYS: usize = 64;

/// The standby's watch on the primary (one per process, in [`App`]).
#[derive(Debug, Default)]
pub struct Watch {
    seen: Mutex<Seen>,
    /// Whether a check of a higher-term advertisement is in flight (one at a time).
    pub checking: std::sync::atomic::AtomicBool,
    /// Whether a standby's probe of its absent primary is in flight (one at a time).
    pub probing: std::sync::atomic::AtomicBool,
    /// When a CA last checked the present higher-term claims again ([`crate::follow`]).
    pub claims_checked_at: Mutex<Option<std::time::Instant>>,
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a primary sighting at `now` (standby sightings are not the primary).
    pub fn record(&self, sighting: &Sighting, now: SystemTime) {
        let mut seen = self.lock();
        if sighting.role != PRIMARY {
            if let Some(host) = &sighting.host
                && (seen.standbys.len() < MAX_STANDBYS || seen.standbys.contains_key(host))
            {
                seen.standbys.insert(host.clone(), sighting.present);
            }
            return;
        }
        let key = sighting.key.clone();
        if seen.primaries.len() < MAX_STANDBYS || seen.primaries.contains_key(&key) {
            seen.primaries.insert(
                key,
                PrimaryAd {
                    present: sighting.present,
                    term: sighting.term,
                    endpoint: sighting.endpoint.clone(),
                    host: sighting.host.clone(),
                    mdns_host: sighting.mdns_host.clone(),
                },
            );
        }
        seen.term = seen.term.max(sighting.term);
        if sighting.present {
            seen.alive_at = Some(seen.alive_at.map_or(now, |t| t.max(now)));
        }
        let present = seen.primaries.values().any(|p| p.present);
        if seen.present != Some(present) {
            seen.present = Some(present);
            seen.since = Some(now);
        }
        seen.reason = sighting.reason.clone();
    }

    /// The standbys advertising now (as last heard over mDNS).
    pub fn live_standbys(&self) -> Vec<String> {
        let seen = self.lock();
        seen.standbys
            .iter()
            .filter(|(_, present)| **present)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Learns an advertisement from koi-mdns's cache that the watch has not heard of (its
    /// `appeared` event was published before this plugin subscribed, or lost in a gap), as if it
    /// had appeared at `last_seen` (the cache's own time, not now: a cached record is no fresher
    /// evidence than that). Known advertisements are left to the events. `true` when it was new.
    pub fn learn_cached(&self, sighting: &Sighting, last_seen: SystemTime) -> bool {
        let known = {
            let seen = self.lock();
            if sighting.role == PRIMARY {
                seen.primaries.contains_key(&sighting.key)
            } else {
                sighting
                    .host
                    .as_ref()
                    .is_none_or(|h| seen.standbys.contains_key(h))
            }
        };
        if known || !sighting.present {
            return false;
        }
        self.record(sighting, last_seen);
        true
    }

    /// koi-mdns's re-check heard `mdns_host` at `at` (`mdns.host.seen`): positive evidence
    /// that a present primary advertised from that host is alive.
    pub fn host_seen(&self, mdns_host: &str, at: SystemTime) {
        let mut seen = self.lock();
        let of_primary = seen
            .primaries
            .values()
            .any(|p| p.present && p.mdns_host.eq_ignore_ascii_case(mdns_host));
        if of_primary {
            seen.alive_at = Some(seen.alive_at.map_or(at, |t| t.max(at)));
        }
    }

    /// The present primaries with an endpoint, highest term first.
    pub fn primaries(&self) -> Vec<Claim> {
        let seen = self.lock();
        let mut out: Vec<Claim> = seen
            .primaries
            .values()
            .filter(|p| p.present)
            .filter_map(|p| {
                p.endpoint.clone().map(|endpoint| Claim {
                    term: p.term,
                    endpoint,
                    host: p.host.clone(),
                })
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.term));
        out
    }

    /// When mDNS said the primary left, if it is absent now. A primary never seen since this
    /// process first asked counts as absent since then: a standby restarted while the primary
    /// is down (a crash mid-takeover, a reboot) hears no removal, only silence, and must still
    /// take over; the heartbeat (the other signal) keeps it from doing so while the primary
    /// answers.
    pub fn gone_since(&self) -> Option<SystemTime> {
        let mut seen = self.lock();
        match (seen.present, seen.since) {
            (Some(false), since) => since,
            (None, _) => Some(*seen.first_look.get_or_insert_with(crate::clock::now)),
            _ => None,
        }
    }

    /// The highest primary term seen over mDNS.
    pub fn highest_term(&self) -> u64 {
        self.lock().term
    }

    /// Whether the primary is unreachable by both signals — mDNS says it left and the last
    /// heartbeat failed — and if so since when it was last KNOWN alive: the later of the last
    /// positive mDNS evidence (an appearance, a change, a re-check it answered) and the last
    /// good beat (the removal itself when neither is known). The grace period runs from there,
    /// so a death is not first waited out by the re-check and then by the grace.
    pub fn unreachable_since(
        &self,
        hb: Option<&crate::heartbeat::Heartbeat>,
    ) -> Option<SystemTime> {
        let mut seen = self.lock();
        // A primary never seen by this process: absent since the first look, which is also the
        // earliest the grace may start (an old last good beat says nothing of the time between
        // it and this process's start, e.g. a boot whose network is not up yet).
        let (gone_at, floor) = match (seen.present, seen.since) {
            (Some(false), Some(at)) => (at, None),
            (None, _) => {
                let first = *seen.first_look.get_or_insert_with(crate::clock::now);
                (first, Some(first))
            }
            _ => return None,
        };
        let hb = hb?;
        if hb.ok {
            return None;
        }
        let last_ok = hb.last_ok_at.as_deref().and_then(parse_rfc3339);
        let evidence = [seen.alive_at, last_ok, floor].into_iter().flatten().max();
        Some(evidence.unwrap_or(gone_at))
    }

    /// The `primary_watch` record of `status`.
    pub fn details(&self, hb: Option<&crate::heartbeat::Heartbeat>) -> Value {
        let unreachable = self.unreachable_since(hb);
        let seen = self.lock().clone();
        let mdns = match seen.present {
            None => "not seen",
            Some(true) => "present",
            Some(false) => "absent",
        };
        json!({
            "mdns": mdns,
            "mdns_since": seen.since.map(crate::schedule::rfc3339),
            "mdns_reason": seen.reason,
            "mdns_term": seen.term,
            "mdns_alive_at": seen.alive_at.map(crate::schedule::rfc3339),
            "live_standbys": seen.standbys.iter().filter(|(_, p)| **p).map(|(h, _)| h).collect::<Vec<_>>(),
            "heartbeat_ok": hb.map(|h| h.ok),
            "heartbeat_last_ok_at": hb.and_then(|h| h.last_ok_at.clone()),
            "unreachable_since": unreachable.map(crate::schedule::rfc3339),
        })
    }
}

pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// `mdns.service.*`: on a standby, updates the watch on the primary. A gap (events lost) is
/// harmless: koi-mdns's next re-check or announcement brings the state back.
pub async fn on_mdns(ctx: Context, delivery: Delivery<Value>) {
    let Delivery::Event(event) = delivery else {
        return;
    };
    let Ok(app) = App::of(&ctx) else {
        return;
    };
    let layout = app.authority().layout().clone();
    let Some(fingerprint) = Membership::mesh_fingerprint(&layout) else {
        return;
    };
    let Some(service) = event
        .payload
        .get("service")
        .and_then(|s| serde::Deserialize::deserialize(s).ok())
    else {
        return;
    };
    let reason = event.payload.get("reason").and_then(Value::as_str);
    if let Some(s) = classify(&event.topic, &service, reason, &fingerprint) {
        tracing::debug!(
            role = s.role,
            term = s.term,
            present = s.present,
            "certmesh CA presence"
        );
        app.presence.record(&s, crate::clock::now());
        crate::follow::fence_if_superseded(&app, &layout, &s);
    }
}

/// `mdns.host.seen`: koi-mdns's re-check heard a host; when a present primary advertises from
/// it, that is positive evidence it was alive at the time the query went out (checked: a
/// host name of at most 255 bytes, an RFC 3339 time not in the future).
pub async fn on_host_seen(ctx: Context, delivery: Delivery<Value>) {
    let Delivery::Event(event) = delivery else {
        return;
    };
    let Ok(app) = App::of(&ctx) else {
        return;
    };
    let host = event.payload.get("host").and_then(Value::as_str);
    let at = event
        .payload
        .get("last_seen")
        .and_then(Value::as_str)
        .filter(|t| t.len() <= 64)
        .and_then(parse_rfc3339);
    if let (Some(host), Some(at)) = (host.filter(|h| !h.is_empty() && h.len() <= 255), at) {
        app.presence.host_seen(host, at.min(crate::clock::now()));
    }
}

/// How often the `presence` service reads koi-mdns's cache of `_certmesh._tcp`.
pub const CACHE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads koi-mdns's cache of `_certmesh._tcp` (`mdns/query`) and learns the advertisements of
/// this mesh the watch has not heard of ([`Watch::learn_cached`]); a new primary advertisement
/// is judged like an event's ([`crate::follow::fence_if_superseded`]). Heals an `appeared`
/// event koi-mdns published before this plugin subscribed (a restart of both) or lost in a gap.
async fn learn_from_cache(ctx: &Context, app: &std::sync::Arc<App>, layout: &Layout) {
    let Some(fingerprint) = Membership::mesh_fingerprint(layout) else {
        return;
    };
    let query = json!({"service_type": SERVICE_TYPE});
    // Bounded: a koi-mdns that does not answer must not stall the presence loop.
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ctx.call::<_, Value>("mdns", "query", &query),
    )
    .await
    .unwrap_or_else(|_| Err(MethodError::new("koi-mdns did not answer within 10 s")));
    let services = match answer {
        Ok(answer) => answer["services"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            // Said once per process (it runs every 10 s; koi-mdns may simply not be installed).
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("certmesh: cannot read koi-mdns's cache: {}", e.message());
            }
            return;
        }
    };
    let now = crate::clock::now();
    for service in services.into_iter().take(MAX_STANDBYS * 2) {
        let Ok(record) = serde_json::from_value::<ServiceRecord>(service) else {
            continue;
        };
        let Some(s) = classify("mdns.service.appeared", &record, None, &fingerprint) else {
            continue;
        };
        let last_seen = parse_rfc3339(record.last_seen.get(..64).unwrap_or(&record.last_seen))
            .map_or(now, |t| t.min(now));
        if app.presence.learn_cached(&s, last_seen) {
            tracing::info!(
                role = s.role,
                term = s.term,
                "certmesh: learned a CA advertisement from koi-mdns's cache (its event was missed)"
            );
            crate::follow::fence_if_superseded(app, layout, &s);
        }
    }
}

/// The `advertise` params of a standby's `_certmesh._tcp` advertisement.
pub fn standby_advertisement(state: &StandbyState, membership: &Membership) -> Value {
    json!({
        "name": format!("{STANDBY_INSTANCE_PREFIX}{}", membership.hostname),
        "service_type": SERVICE_TYPE,
        "port": crate::wire::DEFAULT_API_PORT,
        "txt": {
            "fp": state.ca_fingerprint,
            ROLE_KEY: STANDBY,
            TERM_KEY: state.term.to_string(),
            "api": format!("v{}", crate::wire::API_VERSION),
        },
    })
}

/// The `presence` service (daemon mode): on a standby, advertises it (kept in
/// [`App::advertisement`] so a koi-mdns restart re-advertises it); elsewhere waits.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != koi_sdk::protocol::handshake::RunMode::Daemon {
        return Ok(());
    }
    let app = App::of(&ctx)?;
    let layout: Layout = app.authority().layout().clone();
    let mut advertised: Option<Value> = None;
    let mut cache_read: Option<std::time::Instant> = None;
    loop {
        if cache_read.is_none_or(|t| t.elapsed() >= CACHE_EVERY) {
            cache_read = Some(std::time::Instant::now());
            learn_from_cache(&ctx, &app, &layout).await;
        }
        let is_ca = layout.is_ca();
        let standby = crate::standby_state::load(&layout).filter(|_| !is_ca);
        if is_ca && let Some(params) = advertised.take() {
            // Took over: the standby advertisement goes (the `api` service advertises the CA).
            let withdraw = json!({"name": params["name"], "service_type": SERVICE_TYPE});
            if let Err(e) = ctx.call::<_, Value>("mdns", "withdraw", &withdraw).await {
                tracing::info!(
                    "could not withdraw the standby advertisement: {}",
                    e.message()
                );
            }
        }
        if is_ca {
            crate::follow::recheck_claims(&app, &layout);
            crate::follow::demote_if_fenced(&ctx, &app).await;
        }
        if let Some(state) = &standby {
            match crate::partition::send_if_due(&layout).await {
                Ok(Some(n)) => {
                    tracing::info!("certmesh: {n} partition audit entries kept by the new primary")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!("certmesh: partition audit entries not delivered yet: {e}")
                }
            }
            crate::takeover::consider(&ctx, &app, &layout, state).await;
        } else if !is_ca {
            crate::follow::follow(&ctx, &app, &layout).await;
        }
        let wanted = standby.and_then(|state| {
            Membership::load(&layout)
                .ok()
                .flatten()
                .map(|m| standby_advertisement(&state, &m))
        });
        if wanted.is_some() && wanted != advertised {
            let params = wanted.clone().unwrap_or(Value::Null);
            match ctx.call::<_, Value>("mdns", "advertise", &params).await {
                Ok(_) => {
                    *app.advertisement
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(params);
                    advertised = wanted;
                }
                Err(e) => tracing::info!("not advertising the standby over mDNS: {}", e.message()),
            }
        }
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
#[path = "presence_tests.rs"]
mod tests;
