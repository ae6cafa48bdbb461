//! The way to one backend: the resolver every backend connection uses, which refuses addresses
//! that are not loopback unless the entry allows a remote backend, and the backend's health as
//! traffic shows it. A change between up and down is published once, as `proxy.backend.up` or
//! `proxy.backend.down`; nothing polls the backend.

use schemars::JsonSchema;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};

/// Event topic: a backend that answered before stopped answering.
pub const DOWN: &str = "proxy.backend.down";
/// Event topic: a backend answers again (or for the first time after a failure).
pub const UP: &str = "proxy.backend.up";

/// The payload of `proxy.backend.up` and `proxy.backend.down`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, JsonSchema)]
pub struct BackendEvent {
    /// The entry's name.
    pub entry: String,
    /// The host name clients use.
    pub host: String,
    /// The backend URL.
    pub backend: String,
    /// Why it is down (absent for up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether an address counts as this machine.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves `host:port`, keeping only loopback addresses unless `remote`.
pub async fn resolve(host: &str, port: u16, remote: bool) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let kept: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| remote || is_loopback(a.ip()))
        .collect();
    if kept.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{host} resolves to no loopback address ({}); a remote backend needs \
                 --backend-remote",
                all.iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(kept)
}

/// Health as traffic shows it.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const UNKNOWN: u8 = 0;
const IS_UP: u8 = 1;
const IS_DOWN: u8 = 2;

impl Health {
    /// Records a success; true when the backend was down (a recovery to publish).
    pub fn up(&self) -> bool {
        self.0.swap(IS_UP, Ordering::AcqRel) == IS_DOWN
    }

    /// Records a failure; true when it was not down already (a change to publish).
    pub fn down(&self) -> bool {
        self.0.swap(IS_DOWN, Ordering::AcqRel) != IS_DOWN
    }

    /// "up", "down" or "unknown" (no traffic yet).
    pub fn label(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            IS_UP => "up",
            IS_DOWN => "down",
            _ => "unknown",
        }
    }

    /// Whether nothing is known yet.
    pub fn is_unknown(&self) -> bool {
        self.0.load(Ordering::Acquire) == UNKNOWN
    }
}
