//! The daemon-mode background task. Once this machine is a CA (at start, or right after
//! `create`), it takes the writer lock for the process's life, serves the inter-node API
//! ([`crate::api`]) on `KOI_CERTMESH_API_BIND` (default `0.0.0.0:5641`, LAN peers only) and
//! advertises `_certmesh._tcp` through koi-mdns with the CA fingerprint and port in TXT. The CA
//! starts locked; `koi certmesh unlock` opens it. In one-shot mode it does nothing.
//!
//! The advertisement lives in koi-mdns's memory, so it is lost when koi-mdns crashes. The daemon
//! publishes `host.plugin.restarted` when it starts koi-mdns again; [`on_plugin_restarted`] then
//! advertises again (koi-mdns accepts a repeated, identical advertisement from the same owner as a
//! no-op, so advertising once too often is harmless).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use koi_sdk::protocol::context::host_events::{self, PluginStarted};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, Delivery};
use serde_json::{Value, json};

use crate::app::App;
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

/// Runs until the plugin shuts down.
pub async fn run(app: Arc<App>, ctx: Context) {
    if ctx.mode() != RunMode::Daemon {
        ctx.cancelled().await;
        return;
    }
    let authority = app.authority(&ctx);
    while !authority.layout().is_ca() {
        tokio::select! {
            _ = ctx.cancelled() => return,
            _ = app.mesh_created.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    if let Err(e) = serve(&app, &ctx).await {
        tracing::error!("certmesh API not serving: {e}");
        app.set_api(|a| a.error = Some(e));
    }
    // Coalesced refusal counts are written once a window, and at shutdown (crate::refusals).
    loop {
        let stop = tokio::select! {
            _ = ctx.cancelled() => true,
            _ = tokio::time::sleep(crate::refusals::WINDOW) => false,
        };
        let authority = authority.clone();
        let _ = ctx
            .blocking("refusal flush", move || {
                authority.flush_refusals();
                Ok(())
            })
            .await;
        if stop {
            return;
        }
    }
}

async fn serve(app: &Arc<App>, ctx: &Context) -> Result<(), String> {
    let authority = app.authority(ctx);
    authority
        .hold_writer_lock()
        .map_err(|e| e.message().to_owned())?;
    let layout = authority.layout().clone();
    let membership = Membership::load(&layout)
        .map_err(|e| e.message().to_owned())?
        .ok_or("the CA has no membership.json (its own certificate record)")?;
    let files = CertFiles::at(&layout, &membership.hostname);
    let ca_pem = std::fs::read_to_string(layout.ca_dir().join("ca.pem"))
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let tls = crate::tls::server_config(files.fullchain.as_ref(), files.key.as_ref(), &ca_pem)?;
    let listener = crate::api::bind(bind_address()?).await?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the API's address: {e}"))?;
    app.set_api(|a| {
        a.listening = Some(local.to_string());
        a.error = None;
    });
    tracing::info!(%local, "certmesh API listening");
    let stop = {
        let ctx = ctx.clone();
        async move { ctx.cancelled().await }
    };
    tokio::spawn(crate::api::serve(
        listener,
        Arc::new(tls),
        authority.clone(),
        stop,
    ));
    advertise(app, ctx, &membership, local.port()).await;
    Ok(())
}

/// Asks koi-mdns (through the host) to advertise the CA.
async fn advertise(app: &Arc<App>, ctx: &Context, membership: &Membership, port: u16) {
    let txt: BTreeMap<&str, String> = BTreeMap::from([
        ("fp", membership.ca_fingerprint.clone()),
        ("port", port.to_string()),
        ("api", format!("v{}", crate::wire::API_VERSION)),
        ("profile", membership.profile.clone()),
    ]);
    let params = json!({
        "name": format!("koi certmesh CA on {}", membership.hostname),
        "service_type": SERVICE_TYPE,
        "port": port,
        "txt": txt,
    });
    *app.advertisement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(params.clone());
    send_advertisement(app, ctx, &params, port).await;
}

/// Handles `host.plugin.restarted`: when the daemon restarts koi-mdns, the CA's advertisement went
/// with the old process, so it is made again. Only the host can publish `host.*` topics. A gap
/// (restart notices lost) may hide a koi-mdns restart, so it advertises again too.
pub async fn on_plugin_restarted(app: Arc<App>, ctx: Context, delivery: Delivery<PluginStarted>) {
    match delivery {
        Delivery::Event(event)
            if event.source == host_events::SOURCE && event.payload.plugin == "mdns" => {}
        Delivery::Event(_) => return,
        Delivery::Gap(gap) => {
            tracing::info!(missed = gap.missed, "plugin restart notices were lost");
        }
    }
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
