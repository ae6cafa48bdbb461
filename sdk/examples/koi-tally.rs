//! `koi-tally`: the SDK's example daemon plugin (docs/plugins.md, "A complete daemon plugin"). It
//! counts the events other plugins publish (`hello.*` from koi-hello, `mdns.service.*` from
//! koi-mdns) by topic and by publisher, keeps the mDNS services on the network now, and saves the
//! counts in `$KOI_HOME/tally/tally.json`: every few seconds while they change, and once more at
//! shutdown. A restarted daemon carries on from the saved counts. It uses the four parts a daemon
//! plugin is made of: state, a service, ordered subscriptions with gap handling, and the store.

use koi_mdns_api::{ALL_SERVICE_EVENTS, REMOVED, ServiceEventPayload, ServiceRecord};
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, Delivery, Method, MethodError, NoParams, Plugin, StateInit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often the `checkpoint` service saves counts that changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// What `tally.json` holds (its `data`, at version 2).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
struct Counts {
    /// Events counted, by topic.
    by_topic: BTreeMap<String, u64>,
    /// Events counted, by publisher (the plugin's moniker).
    by_source: BTreeMap<String, u64>,
    /// Times events were lost before they reached the tally.
    gaps: u64,
    /// Events lost in those gaps.
    missed: u64,
}

/// The file, at version 2. Version 1 counted by topic only: `{"counts": {"topic": n}}`.
fn tally_file(init: &StateInit) -> Result<JsonFile<Counts>, MethodError> {
    Ok(JsonFile::new(init.data_dir()?.join("tally.json"))
        .version(2)
        .migrate(1, |v| {
            let by_topic = v
                .get("counts")
                .cloned()
                .ok_or("version 1 data has no \"counts\"")?;
            Ok(json!({ "by_topic": by_topic, "by_source": {}, "gaps": 0, "missed": 0 }))
        }))
}

/// The counts in memory, and how far the file is behind them.
#[derive(Default)]
struct Live {
    counts: Counts,
    /// Bumped by every change.
    changes: u64,
    /// `changes` as of the last save.
    saved: u64,
}

/// The plugin's state (`Plugin::state`), built once when the host opens the session.
struct Tally {
    /// The file, or why it cannot be used (then nothing is saved: a damaged file is never overwritten).
    file: Result<Arc<JsonFile<Counts>>, String>,
    live: Mutex<Live>,
    /// One save at a time, so an older snapshot never lands after a newer one.
    saving: tokio::sync::Mutex<()>,
    /// mDNS services on the network now (full name → type). An async lock: a resync holds it
    /// across the `mdns.query` call, so no event is applied between the snapshot and its use.
    services: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl Tally {
    /// Loads the saved counts (a missing file is an empty tally).
    fn load(init: &StateInit) -> Self {
        let loaded = tally_file(init).and_then(|file| match file.load_or_default() {
            Ok(counts) => Ok((Arc::new(file), counts)),
            Err(e) => Err(MethodError::new(e.to_string())),
        });
        let (file, counts) = match loaded {
            Ok((file, counts)) => (Ok(file), counts),
            Err(e) => {
                tracing::warn!("the tally starts empty and will not be saved: {e}");
                (Err(e.to_string()), Counts::default())
            }
        };
        Self {
            file,
            live: Mutex::new(Live {
                counts,
                ..Live::default()
            }),
            saving: tokio::sync::Mutex::new(()),
            services: tokio::sync::Mutex::default(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Counts)) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut live.counts);
        live.changes += 1;
    }

    /// Saves the counts if they changed since the last save; off the protocol loop (it fsyncs).
    async fn save(&self, ctx: &Context) -> Result<(), MethodError> {
        let file = self.file.clone().map_err(MethodError::new)?;
        let _one_at_a_time = self.saving.lock().await;
        let (changes, counts) = {
            let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            if live.changes == live.saved {
                return Ok(());
            }
            (live.changes, live.counts.clone())
        };
        ctx.blocking("save the tally", move || {
            file.save(&counts)
                .map_err(|e| MethodError::new(e.to_string()))
        })
        .await?;
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.saved = live.saved.max(changes);
        Ok(())
    }
}

/// Counts one delivery of any subscription; returns whether it was a gap.
fn count<T>(tally: &Tally, delivery: &Delivery<T>) -> bool {
    match delivery {
        Delivery::Event(e) => tally.update(|c| {
            *c.by_topic.entry(e.topic.clone()).or_default() += 1;
            *c.by_source.entry(e.source.clone()).or_default() += 1;
        }),
        Delivery::Gap(gap) => tally.update(|c| {
            c.gaps += 1;
            c.missed += gap.missed;
        }),
    }
    matches!(delivery, Delivery::Gap(_))
}

/// `hello.*`: counted, nothing more.
async fn on_hello(ctx: Context, delivery: Delivery<Value>) {
    if let Ok(tally) = ctx.state::<Tally>() {
        count(&tally, &delivery);
    }
}

/// `mdns.service.*`: counted, and applied to the services on the network; after a gap, the
/// services are read again from koi-mdns.
async fn on_mdns(ctx: Context, delivery: Delivery<ServiceEventPayload>) {
    let Ok(tally) = ctx.state::<Tally>() else {
        return;
    };
    if count(&tally, &delivery) {
        return resync(&ctx, &tally).await;
    }
    if let Delivery::Event(e) = delivery {
        let service = e.payload.service;
        let mut services = tally.services.lock().await;
        if e.topic == REMOVED {
            services.remove(&service.fullname);
        } else {
            services.insert(service.fullname, service.service_type);
        }
    }
}

/// The result of `mdns.query`.
#[derive(Deserialize)]
struct Snapshot {
    services: Vec<ServiceRecord>,
}

/// Replaces the services with koi-mdns's cache (at start, and after every gap).
async fn resync(ctx: &Context, tally: &Tally) {
    let mut services = tally.services.lock().await;
    match ctx.call::<_, Snapshot>("mdns", "query", &json!({})).await {
        Ok(snapshot) => {
            *services = snapshot
                .services
                .into_iter()
                .map(|s| (s.fullname, s.service_type))
                .collect();
        }
        Err(e) => tracing::info!("no mDNS snapshot (is koi-mdns installed?): {}", e.message()),
    }
}

/// The `checkpoint` service (daemon mode): saves every few seconds, and once more when the plugin
/// stops. An error (say, a full disk) ends this run; the SDK restarts it with backoff and shows
/// it in `koi status`.
async fn checkpoint(ctx: Context) -> Result<(), MethodError> {
    let tally = ctx.state::<Tally>()?;
    resync(&ctx, &tally).await; // subscribed since the handshake: now take the snapshot
    loop {
        let stopping = tokio::select! {
            () = ctx.cancelled() => true,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => false,
        };
        tally.save(&ctx).await?;
        if stopping {
            return Ok(());
        }
    }
}

/// Result of `show`.
#[derive(Serialize, JsonSchema)]
struct Shown {
    /// The counts.
    #[serde(flatten)]
    counts: Counts,
    /// mDNS services on the network now, by type.
    services_now: BTreeMap<String, u64>,
    /// Where the counts are saved.
    file: String,
    /// Why they are not saved, if they are not.
    problem: Option<String>,
}

async fn show(ctx: Context, _: NoParams) -> Result<Shown, MethodError> {
    let tally = ctx.state::<Tally>()?;
    let mut services_now = BTreeMap::new();
    for service_type in tally.services.lock().await.values() {
        *services_now.entry(service_type.clone()).or_default() += 1;
    }
    let counts = tally
        .live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .counts
        .clone();
    Ok(Shown {
        counts,
        services_now,
        file: tally
            .file
            .as_ref()
            .map_or_else(|_| String::new(), |f| f.path().display().to_string()),
        problem: tally.file.as_ref().err().cloned(),
    })
}

/// Result of `reset`.
#[derive(Serialize, JsonSchema)]
struct Reset {
    /// Events the tally had counted.
    forgot: u64,
}

async fn reset(ctx: Context, _: NoParams) -> Result<Reset, MethodError> {
    let tally = ctx.state::<Tally>()?;
    let mut forgot = 0;
    tally.update(|c| {
        forgot = c.by_topic.values().sum();
        *c = Counts::default();
    });
    tally.save(&ctx).await?; // at once: in one-shot mode no checkpoint service runs
    Ok(Reset { forgot })
}

fn plugin() -> Plugin {
    Plugin::new("tally", env!("CARGO_PKG_VERSION"), "Count the events plugins publish")
        .description("Counts `hello.*` and `mdns.service.*` events by topic and publisher under `koi daemon`, and keeps the counts across restarts.")
        .state(Tally::load)
        .on("hello.*", on_hello)
        .on(ALL_SERVICE_EVENTS, on_mdns)
        .service("checkpoint", checkpoint)
        .shutdown_grace(Duration::from_secs(3))
        .method(Method::new("show", "Show the counts", show).example("koi tally show --json"))
        .method(Method::new("reset", "Forget the counts", reset).mutating())
}

fn main() -> std::process::ExitCode {
    plugin().run()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declaration_is_valid() {
        assert_eq!(super::plugin().check(), Ok(()));
    }
}
