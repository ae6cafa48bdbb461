//! The plugin's shared state and its handle on mdns-sd: the responders that hold announcements (one
//! mdns-sd daemon per interface selection, kept for the life of the process), short-lived browsers
//! for discovery and resolution, the registrations, and the discovered-service cache.
//!
//! Every announcement has an owner: the caller the host named when it was made (the CLI and its
//! uid, or a plugin by moniker). Only that owner can withdraw it ([`may_withdraw`]).
//!
//! Locks are `std::sync::Mutex`es held only for map updates, never across an `.await`.

use crate::cache::{Cache, Change, ServiceData, ServiceRecord};
use crate::error::MdnsError;
use crate::interfaces::{self, Selection};
use crate::names::{self, ServiceType};
use crate::port;
use crate::txt::TxtEntry;
use koi_sdk::Context;
use koi_sdk::protocol::Caller;
use mdns_sd::{DaemonEvent, ServiceDaemon, ServiceInfo, UnregisterStatus};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How long `register` waits for the probe and first announcement (RFC 6762 §8: three probes
/// 250 ms apart, then the announcement).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(4);
/// mdns-sd repeats a goodbye 120 ms after the first; wait for it before the daemon stops.
const GOODBYE_REPEAT_WAIT: Duration = Duration::from_millis(200);

/// An mdns-sd daemon that is shut down when dropped (its thread would otherwise live on).
pub struct Daemon {
    inner: ServiceDaemon,
}

impl Daemon {
    /// Checks the interfaces and port 5353, then starts a daemon restricted to `selection`.
    pub fn start(selection: &Selection) -> Result<Self, MdnsError> {
        interfaces::usable(selection)?;
        port::check()?;
        let inner = ServiceDaemon::new()?;
        interfaces::apply(&inner, selection)?;
        Ok(Self { inner })
    }

    /// The mdns-sd daemon.
    pub fn get(&self) -> &ServiceDaemon {
        &self.inner
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The answer channel is not awaited: the daemon thread exits on its own.
        let _ = self.inner.shutdown();
    }
}

/// What to announce (already validated).
#[derive(Debug, Clone)]
pub struct AnnouncementSpec {
    /// Instance name.
    pub instance: String,
    /// Service type.
    pub service_type: ServiceType,
    /// Port (not 0).
    pub port: u16,
    /// TXT entries.
    pub txt: Vec<TxtEntry>,
    /// Host name (`name.local.`).
    pub host: String,
    /// Fixed addresses; empty means "the selected interfaces' addresses, kept up to date".
    pub addresses: Vec<IpAddr>,
    /// Interfaces.
    pub selection: Selection,
}

/// One announcement held by this process.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Registration {
    /// The instance name on the network (after any conflict renaming).
    pub instance: String,
    /// The name asked for, when a conflict forced another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_from: Option<String>,
    /// Service type (`_http._tcp`).
    pub service_type: String,
    /// Full DNS name on the network.
    #[schemars(title = "Full name")]
    pub fullname: String,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TXT properties.
    pub txt: BTreeMap<String, String>,
    /// Fixed addresses (empty: the interfaces' own addresses).
    pub addresses: Vec<String>,
    /// Interfaces announced on.
    pub interfaces: Vec<String>,
    /// Whether the announcement was confirmed on the wire (probe passed, announced).
    pub announced: bool,
    /// When it was registered (RFC 3339).
    pub since: String,
    /// Who announced it (as the host said); only this owner can withdraw it.
    pub owner: Caller,
    #[serde(skip)]
    engine_key: String,
    #[serde(skip)]
    selection: Option<Selection>,
}

#[derive(Default)]
struct State {
    cache: Cache,
    registrations: BTreeMap<String, Registration>,
    responders: HashMap<SelectionKey, Arc<Daemon>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SelectionKey(Option<Vec<String>>);

impl From<&Selection> for SelectionKey {
    fn from(s: &Selection) -> Self {
        match s {
            Selection::Default => Self(None),
            Selection::Named(n) => Self(Some(n.clone())),
        }
    }
}

/// Everything the plugin's methods share.
#[derive(Default)]
pub struct Engine {
    state: Mutex<State>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine {
    /// A fresh engine.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A new short-lived daemon for browsing or resolving, started off the protocol loop.
    pub async fn browser(&self, ctx: &Context, selection: &Selection) -> Result<Daemon, MdnsError> {
        let selection = selection.clone();
        off_loop(ctx, move || Daemon::start(&selection)).await
    }

    async fn responder(
        &self,
        ctx: &Context,
        selection: &Selection,
    ) -> Result<Arc<Daemon>, MdnsError> {
        let key = SelectionKey::from(selection);
        if let Some(d) = lock(&self.state).responders.get(&key) {
            return Ok(d.clone());
        }
        let owned = selection.clone();
        let daemon = Arc::new(off_loop(ctx, move || Daemon::start(&owned)).await?);
        Ok(lock(&self.state)
            .responders
            .entry(key)
            .or_insert(daemon)
            .clone())
    }

    /// Records a resolved service.
    pub fn observe(&self, data: ServiceData) -> Change {
        lock(&self.state).cache.observe(data, SystemTime::now())
    }

    /// Records a removal.
    pub fn remove(&self, fullname: &str) -> Option<Change> {
        lock(&self.state).cache.remove(fullname)
    }

    /// Cached services.
    pub fn query(&self, service_type: Option<&str>, instance: Option<&str>) -> Vec<ServiceRecord> {
        lock(&self.state).cache.query(service_type, instance)
    }

    /// Announcements held.
    pub fn registrations(&self) -> Vec<Registration> {
        lock(&self.state).registrations.values().cloned().collect()
    }

    /// Announces a service for `owner` and waits for its probe and first announcement. A name
    /// conflict is resolved the RFC 6762 §9 way (mdns-sd renames `web` to `web (2)`); the
    /// returned registration says so in `renamed_from`. Announcing again what the same owner
    /// already announces, unchanged, returns the existing registration (so a plugin can re-assert
    /// its advertisement); anything else under a name already held is refused.
    pub async fn register(
        &self,
        ctx: &Context,
        spec: AnnouncementSpec,
        owner: Caller,
    ) -> Result<Registration, MdnsError> {
        let selection = spec.selection.clone();
        let used = off_loop(ctx, move || interfaces::usable(&selection)).await?;
        let responder = self.responder(ctx, &spec.selection).await?;
        let daemon = responder.get();
        let monitor = daemon.monitor()?;
        let props: Vec<mdns_sd::TxtProperty> = spec
            .txt
            .iter()
            .map(|e| match &e.value {
                Some(v) => mdns_sd::TxtProperty::from((e.key.as_str(), v.as_str())),
                None => mdns_sd::TxtProperty::from(e.key.as_str()),
            })
            .collect();
        let ips: Vec<IpAddr> = spec.addresses.clone();
        let info = ServiceInfo::new(
            &spec.service_type.fqdn(),
            &spec.instance,
            &spec.host,
            ips.as_slice(),
            spec.port,
            props,
        )?;
        let info = if spec.addresses.is_empty() {
            info.enable_addr_auto()
        } else {
            info
        };
        let engine_key = info.get_fullname().to_owned();
        {
            let state = lock(&self.state);
            if let Some(held) = state.registrations.get(&engine_key.to_ascii_lowercase()) {
                if held.owner == owner && same_announcement(held, &spec) {
                    return Ok(held.clone());
                }
                return Err(MdnsError::AlreadyAnnounced {
                    name: spec.instance.clone(),
                    service_type: spec.service_type.short(),
                    owner: held.owner.to_string(),
                });
            }
        }
        daemon.register(info)?;

        // Wait for the probe to finish: a NameChange (conflict) and/or the Announce.
        let mut current = engine_key.clone();
        let mut announced = false;
        let deadline = tokio::time::Instant::now() + ANNOUNCE_WAIT;
        loop {
            let event = tokio::select! {
                e = monitor.recv_async() => e,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match event {
                Ok(DaemonEvent::NameChange(change))
                    if change.original.eq_ignore_ascii_case(&current) =>
                {
                    current = change.new_name.clone();
                }
                Ok(DaemonEvent::Announce(name, _)) if name.eq_ignore_ascii_case(&current) => {
                    announced = true;
                    break;
                }
                Ok(DaemonEvent::Error(e)) => {
                    tracing::warn!(error = %e, "mDNS engine error while announcing");
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let fqdn = spec.service_type.fqdn();
        let instance = names::instance_of(&current, &fqdn);
        let renamed_from =
            (!current.eq_ignore_ascii_case(&engine_key)).then(|| spec.instance.clone());
        let registration = Registration {
            instance,
            renamed_from,
            service_type: spec.service_type.short(),
            fullname: current,
            host: spec.host.clone(),
            port: spec.port,
            txt: spec
                .txt
                .iter()
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect(),
            addresses: spec.addresses.iter().map(ToString::to_string).collect(),
            interfaces: used.into_iter().map(|i| i.name).collect(),
            announced,
            since: crate::cache::timestamp(SystemTime::now()),
            owner,
            engine_key: engine_key.clone(),
            selection: Some(spec.selection.clone()),
        };
        lock(&self.state)
            .registrations
            .insert(engine_key.to_ascii_lowercase(), registration.clone());
        Ok(registration)
    }

    /// Withdraws an announcement held by this process (sending goodbye packets), found by the
    /// name asked for or the name on the network. With `caller`, only the announcement's owner
    /// may withdraw it ([`may_withdraw`]); `None` is this process's own clean-up (shutdown, the
    /// end of a one-shot announcement).
    pub async fn withdraw(
        &self,
        instance: &str,
        service_type: &ServiceType,
        caller: Option<&Caller>,
    ) -> Result<Registration, MdnsError> {
        let short = service_type.short();
        let (key, registration) = {
            let state = lock(&self.state);
            state
                .registrations
                .iter()
                .find(|(_, r)| {
                    r.service_type == short
                        && (r.instance == instance || r.renamed_from.as_deref() == Some(instance))
                })
                .map(|(k, r)| (k.clone(), r.clone()))
                .ok_or_else(|| MdnsError::NotAnnounced {
                    name: instance.to_owned(),
                    service_type: short.clone(),
                })?
        };
        if let Some(caller) = caller {
            if !may_withdraw(&registration.owner, caller) {
                return Err(MdnsError::NotOwner {
                    name: registration.instance.clone(),
                    service_type: short,
                    owner: registration.owner.to_string(),
                    caller: caller.to_string(),
                });
            }
        }
        let selection = registration.selection.clone().unwrap_or(Selection::Default);
        let responder = lock(&self.state)
            .responders
            .get(&SelectionKey::from(&selection))
            .cloned();
        if let Some(responder) = responder {
            let status = responder.get().unregister(&registration.engine_key)?;
            match tokio::time::timeout(Duration::from_secs(2), status.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => {
                    tokio::time::sleep(GOODBYE_REPEAT_WAIT).await;
                }
                Ok(Ok(UnregisterStatus::NotFound)) => {
                    tracing::warn!(name = %registration.fullname, "the engine no longer held the announcement");
                }
                Ok(Err(_)) | Err(_) => {
                    return Err(MdnsError::Engine {
                        cause: format!(
                            "no confirmation that goodbye packets for `{}` were sent",
                            registration.fullname
                        ),
                    });
                }
            }
        }
        lock(&self.state).registrations.remove(&key);
        Ok(registration)
    }

    /// Withdraws every announcement (used at shutdown so goodbyes always go out).
    pub async fn withdraw_all(&self) {
        for r in self.registrations() {
            if let Ok(t) = ServiceType::parse(&r.service_type) {
                let _ = self.withdraw(&r.instance, &t, None).await;
            }
        }
    }
}

/// Runs `work` on the blocking pool ([`Context::blocking`]): starting an mdns-sd daemon reads
/// interface facts from `/sys`, probes port 5353 and starts a thread, none of which belongs on a
/// protocol worker.
async fn off_loop<T: Send + 'static>(
    ctx: &Context,
    work: impl FnOnce() -> Result<T, MdnsError> + Send + 'static,
) -> Result<T, MdnsError> {
    match ctx.blocking("mDNS engine start", move || Ok(work())).await {
        Ok(outcome) => outcome,
        Err(e) => Err(MdnsError::Engine {
            cause: e.message().to_owned(),
        }),
    }
}

/// Whether `caller` may withdraw an announcement `owner` made: only the owner itself. A plugin is
/// identified by its moniker, the CLI by its user (uid), as the host states them; a REST client
/// never gets this far (the methods are `local_only`).
pub fn may_withdraw(owner: &Caller, caller: &Caller) -> bool {
    owner == caller
}

/// Whether `held` already announces exactly what `spec` asks for.
fn same_announcement(held: &Registration, spec: &AnnouncementSpec) -> bool {
    let txt: BTreeMap<String, String> = spec
        .txt
        .iter()
        .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let addresses: Vec<String> = spec.addresses.iter().map(ToString::to_string).collect();
    held.port == spec.port
        && held.host == spec.host
        && held.txt == txt
        && held.addresses == addresses
        && held.selection.as_ref() == Some(&spec.selection)
}

/// Converts a resolved service from mdns-sd into cache data.
pub fn data_from_resolved(r: &mdns_sd::ResolvedService) -> ServiceData {
    ServiceData {
        instance: names::instance_of(&r.fullname, &r.ty_domain),
        service_type: names::short_type(&r.ty_domain),
        fullname: r.fullname.clone(),
        host: r.host.clone(),
        addresses: r.addresses.iter().map(ToString::to_string).collect(),
        port: r.port,
        txt: crate::txt::to_map(&r.txt_properties),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_may_withdraw() {
        let certmesh = Caller::Plugin {
            plugin: "certmesh".into(),
        };
        let hello = Caller::Plugin {
            plugin: "hello".into(),
        };
        let me = Caller::Cli { uid: Some(1000) };
        let other_user = Caller::Cli { uid: Some(1001) };
        assert!(may_withdraw(&certmesh, &certmesh));
        assert!(!may_withdraw(&certmesh, &hello));
        assert!(!may_withdraw(&certmesh, &me));
        assert!(!may_withdraw(&certmesh, &Caller::Rest));
        assert!(!may_withdraw(&certmesh, &Caller::Host));
        assert!(may_withdraw(&me, &me));
        assert!(!may_withdraw(&me, &other_user));
        assert!(!may_withdraw(&me, &certmesh));
    }
}
