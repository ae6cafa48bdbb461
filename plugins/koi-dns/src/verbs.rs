//! `serve` and `stop`: start the server (validating the configuration and binding every socket
//! first), in the foreground until Ctrl-C without a daemon, or in the background under
//! `koi daemon`, where the configuration is saved so the `server` service brings it back after a
//! restart. Also the `server` service itself.

use crate::addrs;
use crate::config::{Config, ServeParams};
use crate::server;
use crate::sources;
use crate::state::{Dns, lock};
use crate::wire::Acl;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the local subnets are read again (interfaces change) and, in the foreground, the
/// static entries file is checked for changes made by other `koi dns add` runs.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Result of `serve` and `stop`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ServeResult {
    /// Addresses served (UDP and TCP).
    pub listeners: Vec<String>,
    /// The zone.
    pub zone: String,
    /// Upstreams for names outside the zone.
    pub upstreams: Vec<String>,
    /// Where the upstreams came from.
    pub upstreams_from: String,
    /// Whether it keeps serving after this call (under `koi daemon`, across restarts).
    pub persistent: bool,
    /// Whether the server has stopped.
    pub stopped: bool,
}

fn result(c: &Config, persistent: bool, stopped: bool) -> ServeResult {
    ServeResult {
        listeners: c.listen.iter().map(ToString::to_string).collect(),
        zone: c.zone_text.clone(),
        upstreams: c.upstreams.iter().map(ToString::to_string).collect(),
        upstreams_from: c.upstreams_from.clone(),
        persistent,
        stopped,
    }
}

fn acl(c: &Config, ifs: &[addrs::IfAddr]) -> Acl {
    Acl {
        local: addrs::local_subnets(&c.listen, ifs),
        allow: c.allow.clone(),
        exempt: c.exempt.clone(),
    }
}

/// Stops the server this process runs, if any; returns its configuration.
pub async fn stop_server(dns: &Dns) -> Option<Config> {
    let running = dns.server.lock().await.take()?;
    let config = running.config.clone();
    let _ = tokio::task::spawn_blocking(move || running.stop()).await;
    Some(config)
}

/// Checks `params`, then (re)starts the server with them.
pub async fn start_server(
    ctx: &Context,
    dns: &Arc<Dns>,
    params: &ServeParams,
) -> Result<Config, MethodError> {
    let ifs = addrs::interfaces();
    let config = params.check(&ifs).map_err(MethodError::new)?;
    stop_server(dns).await;
    *lock(&dns.zone) = config.zone.clone();
    dns.cgnat.store(config.cgnat, Ordering::Relaxed);
    let diff = dns.rebuild();
    sources::after_rebuild(ctx, dns, diff).await;
    // The ACL first, so the first query already meets the right one.
    dns.shared.acl.store(Arc::new(acl(&config, &ifs)));
    let handle = tokio::runtime::Handle::current();
    let shared = dns.shared.clone();
    let c = config.clone();
    let running = tokio::task::spawn_blocking(move || server::start(c, shared, handle))
        .await
        .map_err(|e| MethodError::new(format!("the DNS server could not start: {e}")))?
        .map_err(MethodError::new)?;
    dns.shared.acl.store(Arc::new(acl(&running.config, &ifs)));
    let config = running.config.clone();
    *dns.server.lock().await = Some(running);
    tracing::info!(
        "DNS serving zone {} on {:?}",
        config.zone_text,
        config.listen
    );
    Ok(config)
}

/// Reads the local subnets again.
async fn refresh_acl(dns: &Dns) {
    let server = dns.server.lock().await;
    if let Some(r) = server.as_ref() {
        let ifs = addrs::interfaces();
        dns.shared.acl.store(Arc::new(acl(&r.config, &ifs)));
    }
}

/// `serve`.
pub async fn serve(ctx: Context, params: ServeParams) -> Result<ServeResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    sources::refresh_members(&ctx, &dns).await;
    sources::resync_mdns(&ctx, &dns).await;
    let config = start_server(&ctx, &dns, &params).await?;
    if ctx.mode() == RunMode::Daemon {
        let file = dns.serve_file.clone().map_err(MethodError::new)?;
        ctx.blocking("save the DNS serve configuration", move || {
            file.save(&params)
                .map_err(|e| MethodError::new(e.to_string()))
        })
        .await?;
        return Ok(result(&config, true, false));
    }
    // Tell other `koi dns` runs where this foreground server listens (`lookup`, `status`).
    let marker = foreground_file(&dns);
    if let Some(f) = marker.clone() {
        let mark = Foreground {
            pid: std::process::id(),
            listeners: config.listen.clone(),
        };
        let saved = ctx
            .blocking("note the foreground DNS server", move || {
                f.save(&mark).map_err(|e| MethodError::new(e.to_string()))
            })
            .await;
        if let Err(e) = saved {
            tracing::info!(
                "other koi dns runs will not find this server: {}",
                e.message()
            );
        }
    }
    let mut stamp = static_stamp(&dns);
    loop {
        tokio::select! {
            () = ctx.cancelled() => break,
            () = tokio::time::sleep(REFRESH_EVERY) => {}
        }
        let now = static_stamp(&dns);
        if now != stamp {
            stamp = now;
            reload_statics(&dns);
        }
        refresh_acl(&dns).await;
    }
    stop_server(&dns).await;
    if let Some(f) = marker {
        let _ = std::fs::remove_file(f.path());
    }
    Ok(result(&config, false, true))
}

/// What `$KOI_HOME/dns/running.json` holds while a foreground `koi dns serve` runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Foreground {
    /// The koi-dns process serving.
    pub pid: u32,
    /// Its listeners.
    pub listeners: Vec<std::net::SocketAddr>,
}

fn foreground_file(dns: &Dns) -> Option<Arc<JsonFile<Foreground>>> {
    let dir = dns.data_dir.as_ref().ok()?;
    Some(Arc::new(JsonFile::new(dir.join("running.json"))))
}

/// The foreground server another `koi dns serve` runs on this machine, if its process lives.
pub fn foreground(dns: &Dns) -> Option<Foreground> {
    let f = foreground_file(dns)?.load().ok()??;
    let alive = std::path::Path::new(&format!("/proc/{}", f.pid)).exists();
    (alive && f.pid != std::process::id()).then_some(f)
}

fn static_stamp(dns: &Dns) -> Option<std::time::SystemTime> {
    let f = dns.static_file.as_ref().ok()?;
    std::fs::metadata(f.path()).and_then(|m| m.modified()).ok()
}

fn reload_statics(dns: &Dns) {
    if let Ok(f) = &dns.static_file {
        match f.load_or_default() {
            Ok(s) => {
                *lock(&dns.statics) = s.entries;
                dns.rebuild();
            }
            Err(e) => tracing::warn!("static DNS entries not reloaded: {e}"),
        }
    }
}

/// `stop`.
pub async fn stop(ctx: Context, _: NoParams) -> Result<ServeResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    let file = dns.serve_file.clone().map_err(MethodError::new)?;
    let saved = file.load().ok().flatten();
    let stopped = stop_server(&dns).await;
    if saved.is_some() {
        let path = file.path().to_owned();
        ctx.blocking("forget the DNS serve configuration", move || {
            std::fs::remove_file(&path).map_err(|e| {
                MethodError::new(format!(
                    "cannot remove {}: {e}; remove it by hand",
                    path.display()
                ))
            })
        })
        .await?;
    }
    match (stopped, saved) {
        (Some(c), _) => Ok(result(&c, false, true)),
        (None, Some(p)) => {
            let c = p.check(&addrs::interfaces()).map_err(MethodError::new)?;
            Ok(result(&c, false, true))
        }
        (None, None) => Err(MethodError::new(
            "no DNS server is running under `koi daemon` (a foreground `koi dns serve` stops with \
             Ctrl-C in its terminal); start one with `koi dns serve`",
        )),
    }
}

/// The `server` service (daemon mode): reads the sources, brings back a saved server, keeps the
/// local subnets current, and stops the server at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    let dns = ctx.state::<Dns>()?;
    sources::refresh_members(&ctx, &dns).await;
    sources::resync_mdns(&ctx, &dns).await;
    if !dns.serving().await {
        let file = dns.serve_file.clone().map_err(MethodError::new)?;
        let saved = ctx
            .blocking("read the DNS serve configuration", move || {
                file.load().map_err(|e| MethodError::new(e.to_string()))
            })
            .await?;
        if let Some(params) = saved {
            start_server(&ctx, &dns, &params).await?;
        }
    }
    loop {
        tokio::select! {
            () = ctx.cancelled() => break,
            () = tokio::time::sleep(REFRESH_EVERY * 30) => refresh_acl(&dns).await,
        }
    }
    stop_server(&dns).await;
    Ok(())
}
