//! Announcing: `koi mdns announce NAME TYPE PORT [--txt K=V]... [--host H] [--ip ADDR]...`,
//! `koi mdns unannounce NAME TYPE`, and the plugin-to-plugin methods `advertise` / `withdraw`
//! (certmesh advertises `_certmesh._tcp` with CA details in TXT this way).
//!
//! One-shot `announce` holds the announcement until Ctrl-C (the host's `$/cancel`), then sends
//! goodbye packets and returns. Under `koi daemon` it registers persistently and returns at once.

use crate::engine::{AnnouncementSpec, Engine, Registration};
use crate::error::MdnsError;
use crate::interfaces::Selection;
use crate::names::{self, ServiceType};
use crate::txt;
use koi_sdk::protocol::Caller;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Params of `announce`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnounceParams {
    /// Instance name people see, e.g. `Grafana` (at most 63 bytes).
    pub name: String,
    /// Service type, e.g. `_http._tcp`.
    pub service_type: String,
    /// Port the service listens on (1–65535).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// TXT entry `key=value` (repeatable; each at most 255 bytes).
    #[serde(default)]
    pub txt: Vec<String>,
    /// Host name to announce (default: this machine's name, `.local`).
    #[serde(default)]
    pub host: Option<String>,
    /// Address to announce (repeatable; default: the interfaces' own addresses, kept current).
    #[serde(default)]
    pub ip: Vec<String>,
    /// Use only these interfaces (repeatable) instead of the default rule.
    #[serde(default)]
    pub interface: Vec<String>,
}

/// Result of `announce` and `advertise`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AnnounceResult {
    /// The announcement.
    #[serde(flatten)]
    pub registration: Registration,
    /// Whether it stays after this call returns (daemon mode, `advertise`).
    pub persistent: bool,
    /// Whether goodbye packets were sent (a one-shot announcement ended by Ctrl-C).
    pub withdrawn: bool,
}

/// Params of `unannounce` and `withdraw`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnannounceParams {
    /// Instance name as announced (or as renamed after a conflict).
    pub name: String,
    /// Service type, e.g. `_http._tcp`.
    pub service_type: String,
}

/// Params of `advertise` (for other plugins).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseParams {
    /// Instance name (at most 63 bytes).
    pub name: String,
    /// Service type, e.g. `_certmesh._tcp`.
    pub service_type: String,
    /// Port (1–65535).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// TXT properties (each `key=value` at most 255 bytes).
    #[serde(default)]
    pub txt: BTreeMap<String, String>,
    /// Host name (default: this machine's).
    #[serde(default)]
    pub host: Option<String>,
    /// Fixed addresses (default: the interfaces' own).
    #[serde(default)]
    pub ip: Vec<String>,
    /// Interfaces (default: the rule).
    #[serde(default)]
    pub interface: Vec<String>,
}

/// Result of `unannounce` / `withdraw`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WithdrawResult {
    /// The announcement that was withdrawn (goodbye packets sent).
    #[serde(flatten)]
    pub registration: Registration,
    /// Always true: goodbye packets went out.
    pub withdrawn: bool,
}

/// Validates everything about an announcement before the network is touched.
pub fn spec(
    name: &str,
    service_type: &str,
    port: u16,
    txt: Vec<txt::TxtEntry>,
    host: Option<&str>,
    ip: &[String],
    interface: &[String],
) -> Result<AnnouncementSpec, MdnsError> {
    let instance = names::instance_name(name)?;
    let service_type = ServiceType::parse(service_type)?;
    if port == 0 {
        return Err(MdnsError::PortZero);
    }
    let host = match host {
        Some(h) => names::host_name(h)?,
        None => names::default_host_name(),
    };
    let addresses = ip
        .iter()
        .map(|a| {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|_| MdnsError::InvalidAddress { given: a.clone() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AnnouncementSpec {
        instance,
        service_type,
        port,
        txt,
        host,
        addresses,
        selection: Selection::from_args(interface),
    })
}

fn conflict_warning(ctx: &Context, r: &Registration) {
    if let Some(requested) = &r.renamed_from {
        let e = MdnsError::NameConflict {
            requested: requested.clone(),
            renamed: r.instance.clone(),
            service_type: r.service_type.clone(),
        };
        // Shown to the user once; the log keeps it at info level (a warn line would be relayed to
        // the same terminal and repeat it).
        tracing::info!("{e}");
        ctx.show_text(&format!("warning: {e}.\n  {}", e.hint()));
    }
}

/// The `announce` method.
pub async fn announce(ctx: Context, p: AnnounceParams) -> Result<AnnounceResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let entries = txt::parse_all(p.txt.iter().map(String::as_str))?;
    let spec = spec(
        &p.name,
        &p.service_type,
        p.port,
        entries,
        p.host.as_deref(),
        &p.ip,
        &p.interface,
    )?;
    let registration = engine.register(&ctx, spec, owner(&ctx)).await?;
    conflict_warning(&ctx, &registration);
    if ctx.mode() == RunMode::Daemon {
        return Ok(AnnounceResult {
            registration,
            persistent: true,
            withdrawn: false,
        });
    }
    ctx.show_text(&format!(
        "Announcing `{}` ({}) on port {} via {}. Press Ctrl-C to stop (goodbye packets will be sent).",
        registration.instance,
        registration.service_type,
        registration.port,
        registration.interfaces.join(", ")
    ));
    ctx.cancelled().await;
    let service_type = ServiceType::parse(&registration.service_type)?;
    let registration = engine
        .withdraw(&registration.instance, &service_type, None)
        .await?;
    Ok(AnnounceResult {
        registration,
        persistent: false,
        withdrawn: true,
    })
}

/// Who is asking, as the host stated it. A host that sends no per-call context (protocol 1.0)
/// makes every caller the same unidentified one, which is how such a host always behaved.
pub fn owner(ctx: &Context) -> Caller {
    ctx.caller().cloned().unwrap_or(Caller::Unknown)
}

/// The `unannounce` (CLI) and `withdraw` (plugins) methods: only the announcement's owner may
/// withdraw it.
pub async fn withdraw(ctx: Context, p: UnannounceParams) -> Result<WithdrawResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let name = names::instance_name(&p.name)?;
    let service_type = ServiceType::parse(&p.service_type)?;
    let registration = engine
        .withdraw(&name, &service_type, Some(&owner(&ctx)))
        .await?;
    Ok(WithdrawResult {
        registration,
        withdrawn: true,
    })
}

/// The `advertise` method: a persistent announcement for another plugin. It lasts until its
/// owner `withdraw`s it, or until this plugin process ends (at the end of a one-shot command, or
/// when `koi daemon` stops), when goodbye packets are sent. Advertising again exactly what the
/// same caller already advertises succeeds and changes nothing, so a plugin may re-assert it.
pub async fn advertise(ctx: Context, p: AdvertiseParams) -> Result<AnnounceResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let entries = txt::from_map(&p.txt)?;
    let spec = spec(
        &p.name,
        &p.service_type,
        p.port,
        entries,
        p.host.as_deref(),
        &p.ip,
        &p.interface,
    )?;
    let registration = engine.register(&ctx, spec, owner(&ctx)).await?;
    conflict_warning(&ctx, &registration);
    Ok(AnnounceResult {
        registration,
        persistent: true,
        withdrawn: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_validated_before_the_network() {
        let ok = spec("web", "_http._tcp", 8080, vec![], Some("a"), &[], &[]);
        assert!(ok.is_ok());
        assert_eq!(
            spec("web", "_http._tcp", 0, vec![], Some("a"), &[], &[]).err(),
            Some(MdnsError::PortZero)
        );
        assert!(matches!(
            spec("web", "http", 80, vec![], Some("a"), &[], &[]),
            Err(MdnsError::InvalidServiceType { .. })
        ));
        assert!(matches!(
            spec(
                &"n".repeat(64),
                "_http._tcp",
                80,
                vec![],
                Some("a"),
                &[],
                &[]
            ),
            Err(MdnsError::InstanceNameTooLong { .. })
        ));
        assert!(matches!(
            spec(
                "web",
                "_http._tcp",
                80,
                vec![],
                Some("a"),
                &["10.0.0.300".into()],
                &[]
            ),
            Err(MdnsError::InvalidAddress { .. })
        ));
    }
}
