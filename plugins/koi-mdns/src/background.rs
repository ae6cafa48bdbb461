//! The plugin's long-lived work. Under `koi daemon` the `browse` service browses every service
//! type on the link (`_services._dns-sd._udp`, then each type found), keeps the cache current and
//! publishes `mdns.service.*` events for other plugins (dns, health), and re-checks known services
//! every few seconds so `mdns.host.seen` says when each host was last heard (`liveness`); the SDK restarts it with
//! backoff if the engine cannot start or stops delivering, and shows it in `status`. In every mode
//! the `goodbyes` task waits for shutdown and withdraws the announcements still held, so goodbye
//! packets always go out (a one-shot `announce` or `advertise` too, which is why it is a
//! `background` task and not a daemon-only service).

use crate::cache::Change;
use crate::engine::{Engine, data_from_resolved};
use crate::events;
use crate::interfaces::Selection;
use crate::liveness::Recheck;
use crate::names::SERVICES_META_TYPE;
use koi_sdk::{Context, MethodError};
use mdns_sd::ServiceEvent;
use std::collections::BTreeSet;
use tokio::sync::mpsc;

/// Bound on queued engine events (each browse forwards into it).
const QUEUE: usize = 256;

/// The `browse` service (daemon mode only): runs until the plugin shuts down. An engine that
/// cannot start, or stops answering, is an error, so the SDK retries with backoff.
pub async fn browse(ctx: Context) -> Result<(), MethodError> {
    let engine = ctx.state::<Engine>()?;
    tokio::select! {
        _ = ctx.cancelled() => Ok(()),
        outcome = browse_everything(&engine, &ctx) => outcome,
    }
}

/// The `goodbyes` task (every mode): at shutdown, withdraws every announcement still held.
pub async fn goodbyes(ctx: Context) {
    ctx.cancelled().await;
    match ctx.state::<Engine>() {
        Ok(engine) => engine.withdraw_all().await,
        Err(e) => tracing::warn!("no goodbye packets sent at shutdown: {e}"),
    }
}

async fn browse_everything(engine: &Engine, ctx: &Context) -> Result<(), MethodError> {
    let daemon = engine
        .browser(ctx, &Selection::Default)
        .await
        .map_err(|e| MethodError::new(format!("cannot browse the network: {e}")).hint(e.hint()))?;
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
            return Err(MethodError::new(format!(
                "the mDNS engine refused to browse service types: {e}"
            ))
            .hint(
                "koi-mdns retries on its own; `koi mdns status` shows whether browsing is back.",
            ));
        }
    }
    let mut browsing = BTreeSet::new();
    // The re-check of known services (liveness.rs), on its own tick beside the engine's events.
    let mut recheck = Recheck::default();
    let mut round = tokio::time::interval(recheck.period());
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = round.tick() => {
                recheck.round(daemon.get(), engine, ctx).await;
                continue;
            }
        };
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
                let reason = recheck.removal_reason(&fullname);
                if let Some(change @ Change::Removed(_)) = engine.remove(&fullname) {
                    events::publish_with_reason(ctx, &change, reason).await;
                }
            }
            _ => {}
        }
    }
    Err(MethodError::new(
        "browsing stopped unexpectedly: the mDNS engine delivers no more results",
    )
    .hint("koi-mdns restarts browsing on its own; `koi status` shows the `browse` service's state."))
}
