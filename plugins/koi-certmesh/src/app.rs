//! State shared by every method of one koi-certmesh process: the [`Authority`] (created on first
//! use, once `KOI_HOME` is known from the handshake), what the API server is doing, and the signal
//! that a mesh was just created (so the daemon-mode background task starts serving).

use std::sync::{Arc, Mutex, OnceLock};

use koi_sdk::Context;
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::Notify;

use crate::authority::Authority;
use crate::layout::Layout;

/// What the inter-node API is doing (daemon mode).
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct ApiState {
    /// The address it listens on, once serving.
    pub listening: Option<String>,
    /// Why it is not serving, if it tried and failed.
    pub error: Option<String>,
    /// Whether `_certmesh._tcp` is advertised through koi-mdns.
    pub advertised: bool,
    /// Why it is not advertised, if koi-mdns refused or is missing.
    pub advertise_note: Option<String>,
}

/// One process's shared state.
#[derive(Debug, Default)]
pub struct App {
    authority: OnceLock<Arc<Authority>>,
    api: Mutex<ApiState>,
    /// Signalled when `create` makes this machine a CA under the daemon.
    pub mesh_created: Notify,
    /// The `mdns.advertise` params of the CA's `_certmesh._tcp` advertisement, once serving; kept
    /// to advertise again when koi-mdns restarts (and loses it).
    pub advertisement: Mutex<Option<serde_json::Value>>,
}

impl App {
    /// A fresh state.
    pub fn new() -> Arc<Self> {
        Arc::new(App::default())
    }

    /// The authority for this `KOI_HOME`.
    pub fn authority(&self, ctx: &Context) -> Arc<Authority> {
        self.authority
            .get_or_init(|| Authority::new(Layout::new(ctx.koi_home())))
            .clone()
    }

    /// The API's state.
    pub fn api(&self) -> ApiState {
        self.api
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Updates the API's state.
    pub fn set_api(&self, f: impl FnOnce(&mut ApiState)) {
        f(&mut self
            .api
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// Who did something, for the audit log: the operator if named, else the local user id.
pub fn actor(operator: Option<&str>) -> String {
    match operator.map(str::trim).filter(|o| !o.is_empty()) {
        Some(o) => o.to_owned(),
        None => format!("uid {}", rustix::process::getuid().as_raw()),
    }
}
