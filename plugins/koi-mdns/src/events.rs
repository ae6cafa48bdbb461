//! The events koi-mdns publishes through the host — `mdns.service.appeared`, `.changed` and
//! `.removed` — and the helper that publishes a cache [`Change`]. The topics and payload types
//! live in the `koi-mdns-api` crate (re-exported here), so subscribers use them without linking
//! koi-mdns; their JSON Schemas go into the manifest, and the host checks every payload.

use crate::cache::Change;
use koi_sdk::Context;

pub use koi_mdns_api::{
    ALL_SERVICE_EVENTS, APPEARED, CHANGED, HOST_SEEN, HostSeenPayload, REMOVED,
    ServiceChangedPayload, ServiceEventPayload, ServiceRemovedPayload, UNANSWERED,
};

/// Publishes the event for `change` (nothing for a plain refresh). Failures are logged: an event
/// nobody could receive must not fail discovery.
pub async fn publish(ctx: &Context, change: &Change) {
    publish_with_reason(ctx, change, None).await;
}

/// [`publish`], with why a service was removed (`removed` only; see [`ServiceRemovedPayload`]).
pub async fn publish_with_reason(ctx: &Context, change: &Change, reason: Option<&str>) {
    let outcome = match change {
        Change::Appeared(service) => {
            ctx.publish(
                APPEARED,
                &ServiceEventPayload {
                    service: service.clone(),
                },
            )
            .await
        }
        Change::Removed(service) => {
            ctx.publish(
                REMOVED,
                &ServiceRemovedPayload {
                    service: service.clone(),
                    reason: reason.map(str::to_owned),
                },
            )
            .await
        }
        Change::Changed(service, fields) => {
            ctx.publish(
                CHANGED,
                &ServiceChangedPayload {
                    service: service.clone(),
                    changed: fields.iter().map(|f| (*f).to_owned()).collect(),
                },
            )
            .await
        }
        Change::Refreshed(_) => return,
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "could not publish an mDNS event");
    }
}
