//! State shared by every method of one koi-certmesh process, registered with `Plugin::state` and
//! reached with [`App::of`]: the [`Authority`] (built once, right after the handshake, from the
//! `KOI_HOME` the host gave), what the API server is doing, and the signal that a mesh was just
//! created (so the daemon-mode `api` service starts serving).
//!
//! The authority is built from `KOI_HOME`, not from the SDK's data directory: the data directory
//! is `$KOI_HOME/certmesh/`, created on first use, while certmesh reads "this directory exists" as
//! "this machine is in a mesh" (`leave`, `status`), so it must only ever be made by `create`/`join`.

use std::sync::{Arc, Mutex};

use koi_sdk::{Context, MethodError, StateInit};
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
#[derive(Debug)]
pub struct App {
    authority: Arc<Authority>,
    api: Mutex<ApiState>,
    /// Signalled when `create` makes this machine a CA under the daemon.
    pub mesh_created: Notify,
    /// The `mdns.advertise` params of the CA's `_certmesh._tcp` advertisement, once serving; kept
    /// to advertise again when koi-mdns restarts (and loses it).
    pub advertisement: Mutex<Option<serde_json::Value>>,
    /// The standby CA's key while unlocked here ([`crate::standby_state`]).
    pub standby: crate::standby_state::Held,
    /// On a standby: what mDNS says of the primary ([`crate::presence`]).
    pub presence: crate::presence::Watch,
    /// On a CA fenced by a higher term: `(term, primary host, primary endpoint)`
    /// ([`crate::demote`]).
    pub superseded_by: Mutex<Option<(u64, String, String)>>,
    /// Signalled when the CA was demoted: the `api` service stops serving and advertising.
    pub demoted: Notify,
}

impl App {
    /// The state for the `KOI_HOME` at `layout`.
    pub fn new(layout: Layout) -> Self {
        App {
            authority: Authority::new(layout),
            api: Mutex::new(ApiState::default()),
            mesh_created: Notify::new(),
            advertisement: Mutex::new(None),
            standby: crate::standby_state::Held::default(),
            presence: crate::presence::Watch::default(),
            superseded_by: Mutex::new(None),
            demoted: Notify::new(),
        }
    }

    /// The state builder given to `Plugin::state`: cheap (no file is touched).
    pub fn build(init: &StateInit) -> Self {
        App::new(Layout::new(init.koi_home()))
    }

    /// This process's state, from a handler's context.
    pub fn of(ctx: &Context) -> Result<Arc<App>, MethodError> {
        ctx.state::<App>()
    }

    /// The authority for this `KOI_HOME`.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority.clone()
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
