//! `certmesh/members` and the [`MEMBERS_CHANGED`] event: the mesh's machines as other plugins
//! (dns, proxy, health) need them — host, names, addresses, expiry, role — never keys, serials or
//! hooks.
//!
//! On the CA the answer comes from its roster. On a member it comes from the roster its heartbeat
//! last fetched over mutual TLS ([`remember`], called by [`crate::heartbeat`]), kept in
//! `certmesh/members.json` with only those public fields; it is empty until the first beat. A
//! machine in no mesh answers `role: "none"` and no members.
//!
//! Only active machines are listed: the CA (`"ca"`) and members (`"member"`; a standby CA is a
//! member machine). Devices certified with `koi certmesh issue` run no koi and are left out, as
//! are revoked and pending entries.
//!
//! The event: the daemon-mode service [`SERVICE`] looks at `roster.json` (on the CA) or
//! `members.json` (on a member) every [`WATCH_INTERVAL`] — a `stat`, the file is read only when
//! it changed — and publishes [`MEMBERS_CHANGED`] with the new roster version whenever the version
//! differs from the last one published (and once at start). So every roster change is announced
//! whichever code path made it: join, renewal (pulled or pushed), names requested, proxy entries,
//! a device issued. When the file goes away (this machine left the mesh, or the CA destroyed it)
//! it publishes version 0, and `members` then answers `role: "none"`.

use std::time::{Duration, SystemTime};

use koi_certmesh_core::{MemberStatus, Role, Roster};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::files::Membership;
use crate::layout::Layout;
use crate::wire::{RosterMember, RosterResponse};

/// The event published when the roster changed.
pub const MEMBERS_CHANGED: &str = "certmesh.members.changed";
/// The service's name (in `status` under `details.daemon_services`).
pub const SERVICE: &str = "members";
/// How often the service looks at the roster file.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Members kept from a fetched roster (the CA's answer is at most 1 MB anyway).
pub const MAX_CACHED_MEMBERS: usize = 4096;

/// Payload of [`MEMBERS_CHANGED`]: re-call `certmesh/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MembersChanged {
    /// The roster version now.
    pub roster_version: u64,
}

/// Params of `members` (none).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersParams {}

/// One machine of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MemberView {
    /// Its host name (the roster key).
    pub host: String,
    /// The DNS names its certificate holds.
    pub names: Vec<String>,
    /// The addresses its certificate holds.
    pub addresses: Vec<String>,
    /// When its certificate expires (RFC 3339).
    pub not_after: String,
    /// `ca` or `member`.
    pub role: String,
}

/// Result of `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MembersAnswer {
    /// This machine's role: `ca`, `member` or `none` (in no mesh).
    pub role: String,
    /// The roster version the list comes from (0 when unknown).
    pub roster_version: u64,
    /// The mesh's DNS domains (its scope's, or the default zone `lan`).
    pub zone_hint: Vec<String>,
    /// The mesh's machines.
    pub members: Vec<MemberView>,
}

impl MembersAnswer {
    fn none() -> Self {
        MembersAnswer {
            role: "none".into(),
            roster_version: 0,
            zone_hint: Vec::new(),
            members: Vec::new(),
        }
    }

    /// The answer from the CA's roster.
    pub fn of_roster(roster: &Roster) -> Self {
        let members = roster
            .members
            .iter()
            .filter(|m| m.status == MemberStatus::Active)
            .filter_map(|m| {
                let role = match m.role {
                    Role::Primary => "ca",
                    Role::Member | Role::Standby => "member",
                    Role::Device => return None,
                };
                Some(MemberView {
                    host: m.hostname.clone(),
                    names: m.dns_names.clone(),
                    addresses: m.ip_addresses.iter().map(ToString::to_string).collect(),
                    not_after: crate::names::rfc3339(m.expires_at),
                    role: role.into(),
                })
            })
            .collect();
        MembersAnswer {
            role: "ca".into(),
            roster_version: roster.mesh.audit_head.as_ref().map_or(0, |h| h.seq),
            zone_hint: zone_hint(&roster.mesh.scope.domains, &crate::names::zone_of(roster)),
            members,
        }
    }

    /// The answer from a roster fetched from the CA (on a member).
    pub fn of_fetched(roster: &RosterResponse) -> Self {
        let members = roster
            .members
            .iter()
            .take(MAX_CACHED_MEMBERS)
            .filter(|m| m.status == "active")
            .filter_map(|m: &RosterMember| {
                let role = match m.role.as_str() {
                    "primary" => "ca",
                    "member" | "standby" => "member",
                    _ => return None,
                };
                Some(MemberView {
                    host: m.hostname.clone(),
                    names: m.dns_names.clone(),
                    addresses: m.ip_addresses.clone(),
                    not_after: m.expires_at.clone(),
                    role: role.into(),
                })
            })
            .collect();
        MembersAnswer {
            role: "member".into(),
            roster_version: roster.mesh.roster_version,
            zone_hint: zone_hint(&roster.mesh.domains, &roster.mesh.zone),
            members,
        }
    }
}

fn zone_hint(domains: &[String], zone: &str) -> Vec<String> {
    if domains.is_empty() {
        vec![zone.to_owned()]
    } else {
        domains.to_vec()
    }
}

fn cache(layout: &Layout) -> JsonFile<MembersAnswer> {
    JsonFile::new(layout.dir().join("members.json"))
}

/// Keeps the public fields of a roster the heartbeat fetched (on a member).
pub fn remember(layout: &Layout, roster: &RosterResponse) {
    if let Err(e) = cache(layout).save(&MembersAnswer::of_fetched(roster)) {
        tracing::warn!("could not keep the fetched roster for certmesh/members: {e}");
    }
}

/// What `members` answers on this machine now. Blocking (reads files).
pub fn current(layout: &Layout) -> Result<MembersAnswer, MethodError> {
    if layout.is_ca() {
        let roster = Roster::load(&layout.roster()).map_err(crate::error::core)?;
        return Ok(MembersAnswer::of_roster(&roster));
    }
    match Membership::load(layout)? {
        Some(m) if m.role == "member" => {
            let mut answer = cache(layout).load().ok().flatten().unwrap_or_else(|| {
                let mut a = MembersAnswer::none();
                a.role = "member".into();
                a
            });
            answer.role = "member".into();
            Ok(answer)
        }
        _ => Ok(MembersAnswer::none()),
    }
}

/// The `members` method.
pub async fn run(ctx: Context, _p: MembersParams) -> Result<MembersAnswer, MethodError> {
    let layout = App::of(&ctx)?.authority().layout().clone();
    ctx.blocking("read the roster", move || current(&layout))
        .await
}

/// The file whose changes mean a new roster version here, with its (mtime, length).
fn watched(layout: &Layout) -> Option<(SystemTime, u64)> {
    let path = if layout.is_ca() {
        layout.roster()
    } else {
        layout.dir().join("members.json")
    };
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The daemon-mode service publishing [`MEMBERS_CHANGED`]; returns at shutdown.
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    if ctx.mode() != RunMode::Daemon {
        return Ok(());
    }
    let layout = App::of(&ctx)?.authority().layout().clone();
    let mut seen: Option<(SystemTime, u64)> = None;
    let mut published: Option<u64> = None;
    loop {
        let now = watched(&layout);
        if now != seen {
            seen = now;
            let version = if now.is_none() {
                // The machine left the mesh (or the CA destroyed it): version 0, role "none".
                Some(0)
            } else {
                let l = layout.clone();
                ctx.blocking("read the roster", move || current(&l))
                    .await
                    .ok()
                    .filter(|a| a.role != "none")
                    .map(|a| a.roster_version)
            };
            if let Some(v) = version
                && published != Some(v)
            {
                match ctx
                    .publish(MEMBERS_CHANGED, &MembersChanged { roster_version: v })
                    .await
                {
                    Ok(_) => published = Some(v),
                    Err(e) => {
                        // Looked at again next time.
                        seen = None;
                        tracing::info!("could not publish {MEMBERS_CHANGED}: {}", e.message());
                    }
                }
            }
        }
        tokio::select! {
            _ = ctx.cancelled() => return Ok(()),
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_hint_is_the_scope_or_the_default_zone() {
        assert_eq!(zone_hint(&[], "lan"), vec!["lan".to_owned()]);
        assert_eq!(
            zone_hint(&["a.example".into(), "b.example".into()], "a.example"),
            vec!["a.example".to_owned(), "b.example".to_owned()]
        );
    }
}
