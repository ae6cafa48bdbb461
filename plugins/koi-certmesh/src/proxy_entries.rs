//! `certmesh/set-proxy-entries`: koi-proxy mirrors its entries for this machine into the
//! machine's roster entry (`proxy_entries`), so the mesh knows which names each machine serves.
//! Callers: other plugins and the CLI (REST is refused). The list is the complete one for THIS
//! machine: on the CA it is stored directly ([`Authority::set_proxy_entries`]); on a member it
//! goes to the CA over mutual TLS (`POST /v1/certmesh/proxy-entries`, [`crate::names_api`]).
//!
//! Bounded and validated before anything is stored: at most [`MAX_ENTRIES`] entries; a name is a
//! DNS name (canonical form stored); the port is 1–65535; the backend URL is 1–[`MAX_BACKEND`]
//! characters without control characters, stored as given (nothing secret belongs there). The
//! same list again changes nothing; a change is audited as [`PROXY_ENTRIES_SET`].

use koi_certmesh_core::{Roster, roster::ProxyEntry};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::authority::Authority;
use crate::error::{self, Refusal};
use crate::refusals::{Refused, bounded};

/// Audit event: a machine's proxy entries changed.
pub const PROXY_ENTRIES_SET: &str = "proxy_entries_set";
/// Entries per machine.
pub const MAX_ENTRIES: usize = 64;
/// Longest backend URL.
pub const MAX_BACKEND: usize = 256;

/// One proxy entry as koi-proxy sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyEntryParam {
    /// The public name served (`grafana` or `grafana.lan`).
    pub name: String,
    /// The port it listens on.
    pub listen_port: u16,
    /// The backend URL (`http://localhost:3000`).
    pub backend: String,
}

/// Params of `set-proxy-entries`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProxyEntriesParams {
    /// The complete list for this machine (at most 64; empty clears it).
    #[serde(default)]
    pub entries: Vec<ProxyEntryParam>,
}

/// Result of `set-proxy-entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyEntriesAnswer {
    /// The machine whose entry holds them.
    pub host: String,
    /// How many entries are stored.
    pub stored: usize,
    /// The roster version after the change.
    pub roster_version: u64,
}

/// Validates the list: the stored form, or why it is refused (naming the entry).
pub fn validate(entries: &[ProxyEntryParam]) -> Result<Vec<ProxyEntry>, String> {
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "{} proxy entries; at most {MAX_ENTRIES} are stored per machine. Send at most \
             {MAX_ENTRIES}.",
            entries.len()
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("entry {} ({})", i + 1, bounded(&e.name, 64));
            let name = koi_certmesh_core::names::canonical_name(&e.name)
                .map_err(|err| format!("{at}: the name is not accepted: {err}"))?;
            if e.listen_port == 0 {
                return Err(format!("{at}: listen_port 0 is not a port; use 1-65535."));
            }
            if e.backend.is_empty()
                || e.backend.chars().count() > MAX_BACKEND
                || e.backend.chars().any(char::is_control)
            {
                return Err(format!(
                    "{at}: the backend must be 1 to {MAX_BACKEND} characters without control \
                     characters (e.g. http://localhost:3000)."
                ));
            }
            Ok(ProxyEntry {
                name,
                listen_port: e.listen_port,
                backend: e.backend.clone(),
            })
        })
        .collect()
}

impl Authority {
    /// Stores `host`'s proxy entries (see the module docs). Blocking.
    pub fn set_proxy_entries(
        &self,
        host: &str,
        entries: &[ProxyEntryParam],
        via: &str,
        peer: std::net::IpAddr,
    ) -> Result<ProxyEntriesAnswer, Refusal> {
        let mut guard = self.session();
        let result = (|| {
            if !self.layout().is_ca() {
                return Err(Refusal::NotCa);
            }
            let stored = validate(entries).map_err(Refusal::BadRequest)?;
            let Some(session) = guard.as_mut() else {
                return Err(Refusal::Locked);
            };
            let mut roster = Roster::load(&self.layout().roster())
                .map_err(|e| Refusal::Internal(e.to_string()))?;
            let mut entry = roster.member(host).cloned().ok_or_else(|| {
                Refusal::NotPermitted(format!(
                    "{} is not a machine of this mesh; join it with `koi certmesh join`.",
                    bounded(host, 64)
                ))
            })?;
            let version = |r: &Roster| r.mesh.audit_head.as_ref().map_or(0, |h| h.seq);
            if entry.proxy_entries == stored {
                return Ok(ProxyEntriesAnswer {
                    host: entry.hostname,
                    stored: stored.len(),
                    roster_version: version(&roster),
                });
            }
            session
                .audit(
                    PROXY_ENTRIES_SET,
                    &bounded(via, crate::refusals::MAX_NAME_CHARS),
                    json!({
                        "hostname": entry.hostname,
                        "count": stored.len(),
                        "names": stored.iter().map(|e| format!("{}:{}", e.name, e.listen_port)).collect::<Vec<_>>(),
                        "peer": peer.to_string(),
                    }),
                )
                .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
            let count = stored.len();
            entry.proxy_entries = stored;
            let host = entry.hostname.clone();
            roster.upsert(entry);
            session
                .save_roster(self.layout(), &mut roster)
                .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
            Ok(ProxyEntriesAnswer {
                host,
                stored: count,
                roster_version: version(&roster),
            })
        })();
        if let Err(refusal) = &result {
            let detail = format!("set-proxy-entries by {via}: {refusal}");
            let refused = Refused {
                peer,
                reason: refusal.reason(),
                detail: &detail,
                hostname: host,
                operator: None,
            };
            self.record_refusal(guard.as_mut(), &refused);
        }
        result
    }
}

/// The `set-proxy-entries` method.
pub async fn run(
    ctx: Context,
    p: SetProxyEntriesParams,
) -> Result<ProxyEntriesAnswer, MethodError> {
    let via = crate::request_names::via(&ctx, "set-proxy-entries")?;
    validate(&p.entries).map_err(|e| error::fail(e, "Fix the entry and send the list again."))?;
    let authority = App::of(&ctx)?.authority();
    let (membership, is_ca) = crate::request_names::this_machine(&authority, "set-proxy-entries")?;
    if is_ca {
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        let host = membership.hostname.clone();
        return ctx
            .blocking("set proxy entries", move || {
                Ok(authority.set_proxy_entries(&host, &p.entries, &via, peer))
            })
            .await?
            .map_err(MethodError::from);
    }
    let body = crate::names_api::ProxyEntriesRequest { entries: p.entries };
    crate::names_api::forward(
        &authority,
        &membership,
        crate::names_api::PROXY_ENTRIES_PATH,
        &body,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, port: u16, backend: &str) -> ProxyEntryParam {
        ProxyEntryParam {
            name: name.into(),
            listen_port: port,
            backend: backend.into(),
        }
    }

    #[test]
    fn entries_are_bounded_and_validated() {
        let ok = validate(&[entry("Grafana", 443, "http://localhost:3000")]).unwrap();
        assert_eq!(ok[0].name, "grafana");
        assert!(
            validate(&vec![entry("a", 1, "b"); 65])
                .unwrap_err()
                .contains("at most 64")
        );
        assert!(
            validate(&[entry("a b", 443, "x")])
                .unwrap_err()
                .contains("entry 1")
        );
        assert!(validate(&[entry("a", 0, "x")]).is_err());
        assert!(validate(&[entry("a", 1, "")]).is_err());
        assert!(validate(&[entry("a", 1, &"x".repeat(257))]).is_err());
        assert!(validate(&[entry("a", 1, "http://x\n")]).is_err());
    }
}
