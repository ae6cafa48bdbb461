//! `koi mdns resolve HOST.local [--timeout S] [--interface IF]`: asks the link for a host name's
//! addresses (A and AAAA over multicast) and returns what answered, IPv6 link-local with its scope.

use crate::discover::timeout_of;
use crate::engine::Engine;
use crate::error::MdnsError;
use crate::interfaces::Selection;
use crate::names;
use koi_sdk::{Context, MethodError};
use mdns_sd::HostnameResolutionEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// After the first answer, how long to wait for more addresses (IPv6 often follows IPv4).
const MORE_ANSWERS: Duration = Duration::from_millis(300);

/// Params of `resolve`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveParams {
    /// Host name, e.g. `nas.local` (`.local` is added when missing).
    pub host: String,
    /// Seconds to wait for an answer.
    #[serde(default)]
    #[schemars(range(min = 0.1, max = 3600.0))]
    pub timeout: Option<f64>,
    /// Use only these interfaces (repeatable) instead of the default rule.
    #[serde(default)]
    pub interface: Vec<String>,
}

/// Result of `resolve`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ResolveResult {
    /// The host name asked for (`nas.local.`).
    pub host: String,
    /// Its addresses; IPv6 link-local ones carry their scope (`fe80::1%eth0`).
    pub addresses: Vec<String>,
}

/// The `resolve` method.
pub async fn run(ctx: Context, p: ResolveParams) -> Result<ResolveResult, MethodError> {
    let engine = ctx.state::<Engine>()?;
    let host = names::host_name(&p.host)?;
    let timeout = timeout_of(p.timeout)?;
    let daemon = engine
        .browser(&ctx, &Selection::from_args(&p.interface))
        .await?;
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let receiver = daemon
        .get()
        .resolve_hostname(&host, Some(ms))
        .map_err(MdnsError::from)?;
    let mut addresses = BTreeSet::new();
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::select! {
            _ = ctx.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            e = receiver.recv_async() => match e { Ok(e) => e, Err(_) => break },
        };
        match event {
            HostnameResolutionEvent::AddressesFound(_, found) => {
                if addresses.is_empty() {
                    deadline = deadline.min(tokio::time::Instant::now() + MORE_ANSWERS);
                }
                addresses.extend(found.iter().map(ToString::to_string));
            }
            HostnameResolutionEvent::SearchTimeout(_)
            | HostnameResolutionEvent::SearchStopped(_) => break,
            _ => {}
        }
    }
    if addresses.is_empty() {
        return Err(MdnsError::NotResolved {
            host: host.trim_end_matches('.').to_owned(),
            seconds: timeout.as_secs_f64(),
        }
        .into());
    }
    Ok(ResolveResult {
        host,
        addresses: addresses.into_iter().collect(),
    })
}
