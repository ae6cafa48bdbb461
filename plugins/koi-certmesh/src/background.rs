//! The daemon-mode `api` service ([`service`], declared with `Plugin::service`, so it runs only
//! under `koi daemon`, is restarted with backoff if it fails and shows in `status` under
//! `details.daemon_services`). Once this machine is a CA (at start, or right after `create`), it takes
//! the writer lock for the process's life, serves the inter-node API ([`crate::api`]) on
//! `KOI_CERTMESH_API_BIND` (default `0.0.0.0:5641`, LAN peers only) and advertises
//! `_certmesh._tcp` through koi-mdns with the CA fingerprint, port, `role=primary` and the term
//! in TXT ([`crate::presence`]). The CA starts
//! locked; `koi certmesh unlock` opens it. At shutdown the API stops accepting and drains its
//! open connections within the plugin's grace ([`SHUTDOWN_GRACE`]), then the counted refusals
//! are written.
//!
//! The advertisement lives in koi-mdns's memory, so it is lost when koi-mdns crashes. The daemon
//! publishes `host.plugin.restarted` when it starts koi-mdns again; [`on_plugin_restarted`] then
//! advertises again (koi-mdns accepts a repeated, identical advertisement from the same owner as a
//! no-op, so advertising once too often is harmless).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use koi_sdk::protocol::context::host_events::{self, PluginStarted};
use koi_sdk::{Context, Delivery, MethodError};
use serde_json::{Value, json};

use crate::app::App;
use crate::authority::Authority;
use crate::files::{CertFiles, Membership};
use crate::wire::{DEFAULT_API_PORT, SERVICE_TYPE};

/// The environment variable that moves the API (`ADDR:PORT`).
pub const API_BIND_ENV: &str = "KOI_CERTMESH_API_BIND";

fn bind_address() -> Result<SocketAddr, String> {
    match std::env::var(API_BIND_ENV) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{API_BIND_ENV}={text:?} is not ADDR:PORT (e.g. 0.0.0.0:5641)")),
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT))),
    }
}

/// The service's name in `status` (`details.daemon_services.api`).
pub const SERVICE: &str = "api";

/// How long the API gets to finish the requests in flight at shutdown (a join signs and writes
/// in well under a second); declared in the manifest, so the host waits for it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The `api` service: waits until this machine is a CA, then serves and advertises until the
/// plugin shuts down. A failure to start serving (port taken, certificate unreadable) is kept in
/// `status` (`details.api.error`) and returned, so the SDK retries with backoff.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    let app = App::of(&ctx)?;
    let authority = app.authority();
    // A CA at start is a restart; one made while running (create, takeover) is not.
    let mut restarted = authority.layout().is_ca();
    loop {
        while !authority.layout().is_ca() {
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = app.mesh_created.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        let (api, membership, port, cert) = match start(&app, &ctx).await {
            Ok(started) => started,
            Err(e) => {
                tracing::error!("certmesh API not serving: {e}");
                app.set_api(|a| a.error = Some(e.clone()));
                return Err(
                    MethodError::new(format!("the certmesh API is not serving: {e}")).hint(
                        "`koi certmesh status` shows the cause; the service retries by itself.",
                    ),
                );
            }
        };
        // The API serves while koi-mdns is asked to advertise it.
        let rest = async {
            if !restarted || may_advertise_after_browse_window(&app, &ctx).await {
                advertise(&app, &ctx, &membership, port).await;
            }
            flush_refusals(&ctx, &authority).await;
        };
        // The CA's own API certificate renews while the API serves, swapped in without a
        // restart. A demotion (crate::demote: a primary with a higher term took over) ends all
        // of it; the machine is a standby then, and serves again if it ever takes over.
        tokio::select! {
            _ = async { tokio::join!(api, rest, crate::ca_renew::run(&ctx, &app, cert)) } => {}
            _ = app.demoted.notified() => {
                stop_after_demotion(&app, &ctx).await;
                restarted = false;
                continue;
            }
        }
        // Refusals counted by the last requests the API drained go in too.
        flush_once(&ctx, &authority).await;
        return Ok(());
    }
}

/// How long a restarted CA listens to mDNS before advertising itself as primary: koi-mdns's
/// browse reports the `_certmesh._tcp` advertisements on the link within this window, and a
/// higher term among them fences this CA ([`crate::follow`]), which then never advertises.
pub const BROWSE_WINDOW: Duration = Duration::from_secs(5);

/// On a restarted CA: waits [`BROWSE_WINDOW`] (and for a higher-term check in flight, at most
/// the client's request deadline more); `true` when it may advertise (not fenced), `false` when
/// a higher term superseded it or the plugin is stopping.
async fn may_advertise_after_browse_window(app: &Arc<App>, ctx: &Context) -> bool {
    let checks_end = tokio::time::Instant::now() + BROWSE_WINDOW + crate::client::REQUEST_TIMEOUT;
    tokio::select! {
        _ = ctx.cancelled() => return false,
        _ = tokio::time::sleep(BROWSE_WINDOW) => {}
    }
    while app
        .presence
        .checking
        .load(std::sync::atomic::Ordering::Acquire)
        && tokio::time::Instant::now() < checks_end
    {
        tokio::select! {
            _ = ctx.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    if let Some(term) = app.authority().superseded_by() {
        tracing::warn!(
            term,
            "certmesh: not advertising this CA as primary: a primary with term {term} is on the network"
        );
        return false;
    }
    true
}

/// After a demotion: the primary advertisement is withdrawn, the API no longer listens (its
/// server future was dropped) and the writer lock is let go.
async fn stop_after_demotion(app: &Arc<App>, ctx: &Context) {
    let params = app
        .advertisement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(params) = params {
        let withdraw = json!({"name": params["name"], "service_type": SERVICE_TYPE});
        if let Err(e) = ctx.call::<_, Value>("mdns", "withdraw", &withdraw).await {
            tracing::info!("could not withdraw the CA advertisement: {}", e.message());
        }
    }
    app.set_api(|a| {
        a.listening = None;
        a.advertised = false;
    });
    app.authority().release_writer();
}

/// Coalesced refusal counts are written once a window ([`crate::refusals`]) until shutdown.
async fn flush_refusals(ctx: &Context, authority: &Arc<Authority>) {
    loop {
        tokio::select! {
            _ = ctx.cancelled() => return,
            _ = tokio::time::sleep(crate::refusals::WINDOW) => {}
        }
        flush_once(ctx, authority).await;
    }
}

async fn flush_once(ctx: &Context, authority: &Arc<Authority>) {
    let authority = authority.clone();
    // Infallible work: the only error is a panic in it, which the SDK logs as a failed task.
    let _ = ctx
        .blocking("refusal flush", move || {
            authority.flush_refusals();
            Ok(())
        })
        .await;
}

/// The API server (it runs until `ctx` is cancelled, then drains), the CA's membership, the
/// port it listens on and the certificate it presents (swappable, [`crate::hot_cert`]).
type Started = (
    Pin<Box<dyn Future<Output = ()> + Send>>,
    Membership,
    u16,
    Arc<crate::hot_cert::ApiCert>,
);

/// Binds the API; returns the server, not yet polled, and what the advertisement needs.
async fn start(app: &Arc<App>, ctx: &Context) -> Result<Started, String> {
    let authority = app.authority();
    authority
        .hold_writer_lock()
        .map_err(|e| e.message().to_owned())?;
    let layout = authority.layout().clone();
    let load = || {
        Membership::load(&layout)
            .map_err(|e| e.message().to_owned())?
            .ok_or_else(|| "the CA has no membership.json (its own certificate record)".to_owned())
    };
    // A renewal of the API certificate a crash interrupted is finished first, so the pair loaded
    // is whole (and membership.json describes it).
    crate::renew_files::finish(&layout, &load()?.hostname).map_err(|e| e.message().to_owned())?;
    let membership = load()?;
    let files = CertFiles::at(&layout, &membership.hostname);
    let ca_pem = std::fs::read_to_string(layout.ca_dir().join("ca.pem"))
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let cert = crate::hot_cert::ApiCert::load(files.fullchain.as_ref(), files.key.as_ref())?;
    let tls = crate::tls::server_config(cert.clone(), &ca_pem)?;
    let listener = crate::api::bind(bind_address()?).await?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the API's address: {e}"))?;
    app.set_api(|a| {
        a.listening = Some(local.to_string());
        a.error = None;
    });
    tracing::info!(%local, "certmesh API listening");
    let server = crate::api::serve(listener, Arc::new(tls), authority, ctx.clone());
    Ok((Box::pin(server), membership, local.port(), cert))
}

/// Asks koi-mdns (through the host) to advertise the CA.
async fn advertise(app: &Arc<App>, ctx: &Context, membership: &Membership, port: u16) {
    let txt: BTreeMap<&str, String> = BTreeMap::from([
        ("fp", membership.ca_fingerprint.clone()),
        ("port", port.to_string()),
        ("api", format!("v{}", crate::wire::API_VERSION)),
        ("profile", membership.profile.clone()),
        (
            crate::presence::ROLE_KEY,
            crate::presence::PRIMARY.to_owned(),
        ),
        (crate::presence::TERM_KEY, current_term(app).to_string()),
    ]);
    let params = json!({
        "name": format!("{}{}", crate::presence::PRIMARY_INSTANCE_PREFIX, membership.hostname),
        "service_type": SERVICE_TYPE,
        "port": port,
        "txt": txt,
    });
    *app.advertisement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(params.clone());
    send_advertisement(app, ctx, &params, port).await;
}

/// The roster's term (`mesh.term`, 1 on a mesh never failed over; 0 if the roster is unreadable).
fn current_term(app: &Arc<App>) -> u64 {
    koi_certmesh_core::Roster::load(&app.authority().layout().roster())
        .map(|r| r.mesh.term)
        .unwrap_or(0)
}

/// Handles `host.plugin.restarted`: when the daemon restarts koi-mdns, the CA's advertisement went
/// with the old process, so it is made again. Only the host can publish `host.*` topics. A gap
/// (restart notices lost) may hide a koi-mdns restart, so it advertises again too.
pub async fn on_plugin_restarted(ctx: Context, delivery: Delivery<PluginStarted>) {
    match delivery {
        Delivery::Event(event)
            if event.source == host_events::SOURCE && event.payload.plugin == "mdns" => {}
        Delivery::Event(_) => return,
        Delivery::Gap(gap) => {
            tracing::info!(missed = gap.missed, "plugin restart notices were lost");
        }
    }
    let app = match App::of(&ctx) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot advertise the CA again: {}", e.message());
            return;
        }
    };
    let params = app
        .advertisement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(params) = params {
        let port = params["port"].as_u64().unwrap_or(0);
        tracing::info!("koi-mdns restarted: advertising the CA again");
        app.set_api(|a| a.advertised = false);
        send_advertisement(&app, &ctx, &params, u16::try_from(port).unwrap_or(0)).await;
    }
}

async fn send_advertisement(app: &Arc<App>, ctx: &Context, params: &Value, port: u16) {
    match ctx.call::<_, Value>("mdns", "advertise", params).await {
        Ok(_) => app.set_api(|a| {
            a.advertised = true;
            a.advertise_note = None;
        }),
        Err(e) => {
            tracing::info!("not advertising the CA over mDNS: {}", e.message());
            app.set_api(|a| {
                a.advertise_note = Some(format!(
                    "{} — members need `koi certmesh join --ca ADDR:{port}`",
                    e.message()
                ))
            });
        }
    }
}
