//! The plugin's background task. Under `koi daemon` it browses every service type on the link
//! (`_services._dns-sd._udp`, then each type found), keeps the cache current and publishes
//! `mdns.service.*` events for other plugins (dns, health). In every mode, at shutdown it withdraws
//! the announcements still held, so goodbye packets always go out.

use crate::cache::Change;
use crate::engine::{Engine, data_from_resolved};
use crate::events;
use crate::interfaces::Selection;
use crate::names::SERVICES_META_TYPE;
use koi_sdk::Context;
use koi_sdk::protocol::handshake::RunMode;
use mdns_sd::ServiceEvent;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bound on queued engine events (each browse forwards into it).
const QUEUE: usize = 256;

/// Runs until the plugin shuts down.
pub async fn run(engine: Arc<Engine>, ctx: Context) {
    if ctx.mode() == RunMode::Daemon {
        tokio::select! {
            _ = ctx.cancelled() => {}
            _ = browse_everything(&engine, &ctx) => {}
        }
    } else {
        ctx.cancelled().await;
    }
    engine.withdraw_all().await;
}

async fn browse_everything(engine: &Arc<Engine>, ctx: &Context) {
    let daemon = match engine.browser(&Selection::Default) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("background browsing is off: {e}. {}", e.hint());
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<ServiceEvent>(QUEUE);
    let forward = |receiver: mdns_sd::Receiver<ServiceEvent>| {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(event) = receiver.recv_async().await {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
    };
    match daemon.get().browse(SERVICES_META_TYPE) {
        Ok(r) => forward(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot browse service types");
            return;
        }
    }
    let mut browsing = BTreeSet::new();
    while let Some(event) = rx.recv().await {
        match event {
            ServiceEvent::ServiceFound(ty, found) if ty == SERVICES_META_TYPE => {
                let found = found.to_ascii_lowercase();
                if browsing.insert(found.clone()) {
                    match daemon.get().browse(&found) {
                        Ok(r) => forward(r),
                        Err(e) => tracing::debug!(error = %e, ty = %found, "cannot browse"),
                    }
                }
            }
            ServiceEvent::ServiceResolved(resolved) => {
                let change = engine.observe(data_from_resolved(&resolved));
                events::publish(ctx, &change).await;
            }
            ServiceEvent::ServiceRemoved(ty, fullname) if ty != SERVICES_META_TYPE => {
                if let Some(change @ Change::Removed(_)) = engine.remove(&fullname) {
                    events::publish(ctx, &change).await;
                }
            }
            _ => {}
        }
    }
}
