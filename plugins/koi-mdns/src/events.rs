//! The events koi-mdns publishes through the host — `mdns.service.appeared`, `.changed` and
//! `.removed` — their payload types (whose JSON Schemas go into the manifest, so the host checks
//! every payload), and the helper that publishes a cache [`Change`].

use crate::cache::{Change, ServiceRecord};
use koi_sdk::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Topic: a service was seen for the first time.
pub const APPEARED: &str = "mdns.service.appeared";
/// Topic: a known service's host, addresses, port or TXT changed.
pub const CHANGED: &str = "mdns.service.changed";
/// Topic: a service left (goodbye packet or TTL expiry).
pub const REMOVED: &str = "mdns.service.removed";

/// Payload of `mdns.service.appeared` and `mdns.service.removed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServiceEventPayload {
    /// The service (for `removed`, its last known state).
    pub service: ServiceRecord,
}

/// Payload of `mdns.service.changed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServiceChangedPayload {
    /// The service as it is now.
    pub service: ServiceRecord,
    /// Which fields changed: `host`, `addresses`, `port`, `txt`.
    pub changed: Vec<String>,
}

/// Publishes the event for `change` (nothing for a plain refresh). Failures are logged: an event
/// nobody could receive must not fail discovery.
pub async fn publish(ctx: &Context, change: &Change) {
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
                &ServiceEventPayload {
                    service: service.clone(),
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
