//! `koi mdns status` (interfaces in use and why others are skipped, announcements held, the
//! discovered-service cache with last-seen times), the plugin's `status` answer for `koi status`,
//! and `query`, the cache lookup other plugins call.

use crate::cache::ServiceRecord;
use crate::engine::{Engine, Registration};
use crate::interfaces::{self, InterfaceReport, Selection};
use crate::names::ServiceType;
use koi_sdk::protocol::calls::{HealthState, StatusReport};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Result of `koi mdns status`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusResult {
    /// `one_shot` (this process lives for one command) or `daemon`.
    pub mode: String,
    /// Every interface, whether mDNS uses it, and why not.
    pub interfaces: Vec<InterfaceReport>,
    /// Announcements this process holds.
    pub registrations: Vec<Registration>,
    /// Services discovered, with first- and last-seen times.
    pub services: Vec<ServiceRecord>,
    /// A note on what the figures mean in this mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn mode_name(mode: RunMode) -> &'static str {
    match mode {
        RunMode::OneShot => "one_shot",
        RunMode::Daemon => "daemon",
    }
}

/// The `status` verb.
pub async fn run(ctx: Context, _p: NoParams) -> Result<StatusResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let note = (ctx.mode() == RunMode::OneShot).then(|| {
        "one-shot run: announcements and the cache live only as long as one command; \
         `koi daemon` keeps them"
            .to_owned()
    });
    Ok(StatusResult {
        mode: mode_name(ctx.mode()).to_owned(),
        interfaces: interfaces::survey(&Selection::Default),
        registrations: engine.registrations(),
        services: engine.query(None, None),
        note,
    })
}

/// The plugin's answer to `status` (for `koi status`).
pub async fn report(ctx: Context) -> StatusReport {
    let engine = match ctx.state::<Engine>() {
        Ok(engine) => engine,
        Err(e) => {
            return StatusReport {
                state: HealthState::Failed,
                summary: e.to_string(),
                details: serde_json::Map::new(),
            };
        }
    };
    let used: Vec<String> = interfaces::survey(&Selection::Default)
        .into_iter()
        .filter(|i| i.used)
        .map(|i| i.name)
        .collect();
    let registrations = engine.registrations().len();
    let services = engine.query(None, None).len();
    // The details carry everything `koi mdns state` shows, so `koi mdns status` (the host's
    // verb for this method) and `koi status --verbose` show interfaces, announcements and cache.
    let details = match run(ctx, NoParams {}).await {
        Ok(full) => match serde_json::to_value(full) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        },
        Err(_) => serde_json::Map::new(),
    };
    let (state, summary) = if used.is_empty() {
        (
            HealthState::Degraded,
            "no usable interface (see `koi mdns status`)".to_owned(),
        )
    } else {
        (
            HealthState::Ok,
            format!(
                "on {}; {registrations} announced, {services} discovered",
                used.join(", ")
            ),
        )
    };
    StatusReport {
        state,
        summary,
        details,
    }
}

/// Params of `query`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// Only this service type (`_certmesh._tcp`).
    #[serde(default)]
    pub service_type: Option<String>,
    /// Only this instance name.
    #[serde(default)]
    pub instance: Option<String>,
}

/// Result of `query`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueryResult {
    /// Matching cached services, with last-seen times.
    pub services: Vec<ServiceRecord>,
}

/// The `query` method (for other plugins).
pub async fn query(ctx: Context, p: QueryParams) -> Result<QueryResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let service_type = p
        .service_type
        .as_deref()
        .map(ServiceType::parse)
        .transpose()?
        .map(|t| t.short());
    Ok(QueryResult {
        services: engine.query(service_type.as_deref(), p.instance.as_deref()),
    })
}
