//! The public contract of koi-mdns's events: the topics `mdns.service.appeared`, `.changed` and
//! `.removed`, and their payload types with the service record they carry. A plugin that
//! subscribes to these events depends on this crate alone — serde and schemars, not mdns-sd,
//! tokio or the SDK — and gets the same types koi-mdns publishes. The JSON Schemas derived from
//! them are what koi-mdns announces in its manifest, so they stay the contract for plugins in
//! other languages (koi-mdns checks them byte for byte in `tests/event_schemas.rs`).
//!
//! ```
//! use koi_mdns_api::{APPEARED, ServiceEventPayload};
//! let payload: ServiceEventPayload = serde_json::from_str(r#"{"service": {
//!     "instance": "web", "service_type": "_http._tcp", "fullname": "web._http._tcp.local.",
//!     "host": "a.local.", "addresses": ["10.0.0.2"], "port": 80, "txt": {},
//!     "first_seen": "2026-01-01T00:00:00.000Z", "last_seen": "2026-01-01T00:00:00.000Z"}}"#)?;
//! assert_eq!(payload.service.port, 80);
//! assert_eq!(APPEARED, "mdns.service.appeared");
//! # Ok::<(), serde_json::Error>(())
//! ```

#![forbid(unsafe_code)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Topic: a service was seen for the first time. Payload [`ServiceEventPayload`].
pub const APPEARED: &str = "mdns.service.appeared";
/// Topic: a known service's host, addresses, port or TXT changed. Payload [`ServiceChangedPayload`].
pub const CHANGED: &str = "mdns.service.changed";
/// Topic: a service left (goodbye packet or TTL expiry). Payload [`ServiceEventPayload`].
pub const REMOVED: &str = "mdns.service.removed";
/// Subscription pattern for all three service topics.
pub const ALL_SERVICE_EVENTS: &str = "mdns.service.*";
/// Topic: a known host answered koi-mdns's periodic re-check of its services (under `koi daemon`).
/// Payload [`HostSeenPayload`]. It tells a subscriber "this host was last heard at T" between
/// announcements, which mDNS caches do not otherwise report.
pub const HOST_SEEN: &str = "mdns.host.seen";
/// [`ServiceRemovedPayload::reason`] when the service did not answer the re-check (its host may
/// have vanished without a goodbye), as opposed to a goodbye packet or TTL expiry (no reason).
pub const UNANSWERED: &str = "unanswered";

/// A discovered service, as results, streamed items and events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRecord {
    /// Instance name (`web`).
    pub instance: String,
    /// Service type (`_http._tcp`).
    pub service_type: String,
    /// Full DNS name (`web._http._tcp.local.`).
    #[schemars(title = "Full name")]
    pub fullname: String,
    /// Target host name (`host-a.local.`).
    pub host: String,
    /// IP addresses; IPv6 link-local ones carry their scope (`fe80::1%eth0`).
    pub addresses: Vec<String>,
    /// TCP or UDP port.
    pub port: u16,
    /// TXT properties (a boolean attribute has the value `""`).
    pub txt: BTreeMap<String, String>,
    /// When it was first seen (RFC 3339, UTC).
    pub first_seen: String,
    /// When it was last seen: the last announcement, answer or refresh (RFC 3339, UTC).
    pub last_seen: String,
}

/// Payload of `mdns.service.appeared` and `mdns.service.removed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServiceEventPayload {
    /// The service (for `removed`, its last known state).
    pub service: ServiceRecord,
}

/// Payload of `mdns.service.removed`: [`ServiceEventPayload`] plus why, when koi-mdns knows.
/// A subscriber that reads it as a `ServiceEventPayload` still works (the extra field is ignored).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRemovedPayload {
    /// The service's last known state.
    pub service: ServiceRecord,
    /// [`UNANSWERED`] when it did not answer koi-mdns's re-check; absent for a goodbye packet or
    /// TTL expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Payload of `mdns.host.seen`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HostSeenPayload {
    /// The host name (`host-a.local.`).
    pub host: String,
    /// Its addresses, as its services last gave them.
    pub addresses: Vec<String>,
    /// Services of it that answered.
    pub services: u32,
    /// When the re-check it answered was sent (RFC 3339, UTC): it was heard at or after this.
    pub last_seen: String,
}

/// Payload of `mdns.service.changed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ServiceChangedPayload {
    /// The service as it is now.
    pub service: ServiceRecord,
    /// Which fields changed: `host`, `addresses`, `port`, `txt`.
    pub changed: Vec<String>,
}
