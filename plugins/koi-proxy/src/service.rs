//! The `serve` daemon service: builds the routing table and the listeners from the stored entries
//! and rebuilds them when entries change, reloads certificates (on `certmesh.cert.renewed`, on a
//! file change seen by `notify`, debounced), publishes backend up/down transitions, asks
//! certmesh for missing names until it answers, and mirrors the entries in the roster at its start
//! and again until certmesh takes them ([`crate::mirror`]).

use crate::backend;
use crate::certs::HotCert;
use crate::config::{self, Cidr};
use crate::listener::{self, tokio_util_stop::StopHandle};
use crate::state::{EntryRt, ListenerState, Proxy, Routes, Stats, lock};
use koi_sdk::{Context, MethodError};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long file events must be quiet before certificates are read (a renewal writes several).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often unanswered name requests and an unmirrored entry list are tried again.
const RETRY: Duration = Duration::from_secs(300);
/// How often a port that could not be bound is tried again.
const REBIND: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Running {
    entries: HashMap<String, Arc<EntryRt>>,
    certs: HashMap<PathBuf, Arc<HotCert>>,
    /// (redirect?, port) → its stop handle.
    listeners: HashMap<(bool, u16), StopHandle>,
}

type Events = mpsc::Sender<(&'static str, backend::BackendEvent)>;

fn runtime(
    proxy: &Proxy,
    running: &mut Running,
    entry: &config::Entry,
    events: &Events,
) -> Option<Arc<EntryRt>> {
    if let Some(rt) = running.entries.get(&entry.name)
        && rt.entry == *entry
    {
        return Some(Arc::clone(rt));
    }
    let parsed = match config::parse_backend(&entry.backend) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(entry = %entry.name, "not served: {}", e.message());
            return None;
        }
    };
    let dir = proxy.cert_dir(entry);
    let cert = running
        .certs
        .entry(dir.clone())
        .or_insert_with(|| tokio::task::block_in_place(|| HotCert::new(dir)))
        .clone();
    Some(Arc::new(EntryRt {
        base: parsed.url(),
        backend: parsed,
        trusted: entry
            .trusted_proxies
            .iter()
            .filter_map(|t| Cidr::parse(t).ok())
            .collect(),
        cert,
        stats: Stats::default(),
        health: backend::Health::default(),
        events: events.clone(),
        entry: entry.clone(),
    }))
}

/// Rebuilds routes and listeners; returns whether some port could not be bound.
fn rebuild(proxy: &Arc<Proxy>, running: &mut Running, events: &Events) -> bool {
    let entries = proxy.entries();
    let mut routes = Routes::default();
    let mut built = HashMap::new();
    for entry in &entries {
        let Some(rt) = runtime(proxy, running, entry, events) else {
            continue;
        };
        routes
            .tls
            .entry(entry.listen_port)
            .or_default()
            .insert(entry.host.clone(), Arc::clone(&rt));
        if let Some(p) = entry.redirect_port {
            routes
                .redirect
                .entry(p)
                .or_default()
                .insert(entry.host.clone(), Arc::clone(&rt));
        }
        built.insert(entry.name.clone(), rt);
    }
    running.entries = built;
    lock(&proxy.names).retain(|host, _| entries.iter().any(|e| e.host == *host));
    let used: HashSet<PathBuf> = running
        .entries
        .values()
        .map(|r| r.cert.dir().to_path_buf())
        .collect();
    running.certs.retain(|dir, _| used.contains(dir));
    let wanted: HashSet<(bool, u16)> = routes
        .tls
        .keys()
        .map(|p| (false, *p))
        .chain(routes.redirect.keys().map(|p| (true, *p)))
        .collect();
    proxy.routes.store(Arc::new(routes));
    running.listeners.retain(|key, _| wanted.contains(key));
    let mut states = lock(&proxy.listeners);
    states.retain(|port, _| wanted.iter().any(|(_, p)| p == port));
    let mut failed = false;
    for &(redirect, port) in &wanted {
        if running.listeners.contains_key(&(redirect, port)) {
            continue;
        }
        let in_use = |e: std::io::Error| {
            format!(
                "cannot listen on port {port}: {e} (another server may hold it: `ss -ltnp \
                 sport = :{port}`; ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            )
        };
        let (handle, stop) = listener::tokio_util_stop::pair();
        let started = if redirect {
            listener::bind(port).map_err(in_use).map(|l| {
                tokio::spawn(listener::serve_redirect(Arc::clone(proxy), port, l, stop));
            })
        } else {
            listener::tls_config(proxy, port)
                .and_then(|config| listener::start_tls(proxy, port, &config, &stop).map_err(in_use))
        };
        let started = started.map(|()| handle);
        match started {
            Ok(handle) => {
                running.listeners.insert((redirect, port), handle);
                states.insert(
                    port,
                    ListenerState {
                        listening: true,
                        error: None,
                    },
                );
            }
            Err(e) => {
                tracing::warn!("{e}");
                failed = true;
                states.insert(
                    port,
                    ListenerState {
                        listening: false,
                        error: Some(e),
                    },
                );
            }
        }
    }
    failed
}

/// The retry interval: [`RETRY`], or `KOI_PROXY_RETRY_SECS` in debug builds
/// ([`crate::limits::debug_secs`]), so a test can see a retry without waiting five minutes.
fn retry_interval() -> Duration {
    crate::limits::debug_secs("KOI_PROXY_RETRY_SECS").unwrap_or(RETRY)
}

/// Whether the file watch is switched off: `KOI_PROXY_NO_WATCH=1`, honoured in debug builds only,
/// so a test can prove that `certmesh.cert.renewed` alone reloads certificates.
fn watch_disabled() -> bool {
    cfg!(debug_assertions) && std::env::var("KOI_PROXY_NO_WATCH").as_deref() == Ok("1")
}

/// Watches `$KOI_HOME/certs` (and `$KOI_HOME`, to see it appear) for changes.
fn watch_certs(proxy: &Arc<Proxy>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    if watch_disabled() {
        return None;
    }
    let wake = Arc::clone(proxy);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading a file is no change: inotify reports opens and closes too, and the reload's
        // own reads (or certmesh's) would otherwise wake the reload again, for ever.
        if event.is_ok_and(|e| matches!(e.kind, notify::EventKind::Access(_))) {
            return;
        }
        wake.reload.notify_one();
    })
    .map_err(|e| {
        tracing::warn!("no file watch on certificates ({e}); reloads follow certmesh events only")
    })
    .ok()?;
    let certs = proxy.home.join("certs");
    if certs.is_dir() {
        if let Err(e) = watcher.watch(&certs, RecursiveMode::Recursive) {
            tracing::warn!("cannot watch {}: {e}", certs.display());
        }
    } else if let Err(e) = watcher.watch(&proxy.home, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {}: {e}", proxy.home.display());
    }
    Some(watcher)
}

/// The service.
pub async fn run(ctx: Context) -> Result<(), MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    proxy
        .serving
        .store(true, std::sync::atomic::Ordering::Release);
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let mut running = Running::default();
    let mut changed = proxy.changed.subscribe();
    let mut watcher = watch_certs(&proxy);
    let mut watching_certs = proxy.home.join("certs").is_dir();
    let mut names_done = crate::names::request(&ctx, &proxy, &proxy.entries()).await;
    let mut bind_failed = rebuild(&proxy, &mut running, &events_tx);
    // The roster mirror: once at the start, then again while certmesh has not taken the list.
    crate::mirror::send(&ctx, &proxy).await;
    let retry = retry_interval();
    let mut retry_at = tokio::time::Instant::now() + retry;
    // A ticking interval, not a sleep made anew each turn: busy branches cannot starve it.
    let mut tick = tokio::time::interval(REBIND.min(retry));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = ctx.cancelled() => break,
            r = changed.changed() => {
                if r.is_err() { break; }
                bind_failed = rebuild(&proxy, &mut running, &events_tx);
                names_done = crate::names::request(&ctx, &proxy, &proxy.entries()).await;
            }
            () = proxy.reload.notified() => {
                // Let a renewal finish writing its files, then read them all.
                tokio::time::sleep(DEBOUNCE).await;
                if !watching_certs && proxy.home.join("certs").is_dir() {
                    watcher = watch_certs(&proxy);
                    watching_certs = true;
                }
                let certs: Vec<Arc<HotCert>> = running.certs.values().cloned().collect();
                let _ = tokio::task::spawn_blocking(move || certs.iter().for_each(|c| c.reload())).await;
            }
            Some((topic, event)) = events_rx.recv() => {
                if let Err(e) = ctx.post(topic, &event).await {
                    tracing::info!("cannot publish {topic}: {}", e.message());
                }
            }
            _ = tick.tick() => {
                if bind_failed {
                    bind_failed = rebuild(&proxy, &mut running, &events_tx);
                }
                if tokio::time::Instant::now() >= retry_at {
                    if !names_done {
                        names_done = crate::names::request(&ctx, &proxy, &proxy.entries()).await;
                    }
                    if proxy.mirror.pending() {
                        crate::mirror::send(&ctx, &proxy).await;
                    }
                    retry_at = tokio::time::Instant::now() + retry;
                }
            }
        }
    }
    drop(watcher);
    proxy
        .serving
        .store(false, std::sync::atomic::Ordering::Release);
    Ok(())
}
