//! `certmesh/request-names`: other plugins (dns, proxy) and the CLI ask for DNS names to join a
//! machine's certificate at its next renewal. The REST API is refused: it has no
//! authentication, and a name in a certificate is a claim every mesh machine trusts.
//!
//! On the CA ([`Authority::request_names`]) the names may be for any machine of the mesh (the
//! CA's own plugins are trusted). Each name is checked now — DNS syntax, the mesh's scope, and
//! ownership: no other entry may hold it as a certificate name nor have it pending — and the
//! accepted ones are stored as pending on that roster entry (`pending_names`, at most
//! [`MAX_PENDING_PER_HOST`] per entry, and at most [`MAX_CERT_NAMES`] names in a certificate with
//! them) and audited as [`NAMES_REQUESTED`]. A request whose
//! names are all refused is recorded through the bounded refusal records
//! ([`crate::refusals`]), so a flood cannot grow the audit log at will. Asking again for names
//! already held or pending changes nothing and writes nothing.
//!
//! On a member the names can only be for the member itself; they are forwarded to the CA over
//! mutual TLS with the member's current certificate (`POST /v1/certmesh/names`,
//! [`crate::names_api`]), where the host is the certificate's entry, never a body field.
//!
//! At renewal the pending names are checked again and added: [`crate::pending_names`].

use koi_certmesh_core::{Member, MemberStatus, Role, Roster, Scope};
use koi_sdk::protocol::context::Caller;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::authority::Authority;
use crate::error::{self, Refusal};
use crate::files::Membership;
use crate::refusals::{Refused, bounded};

/// Audit event: names were requested for a machine.
pub const NAMES_REQUESTED: &str = "names_requested";
/// Names in one request.
pub const MAX_NAMES_PER_REQUEST: usize = 32;
/// Names pending on one roster entry.
pub const MAX_PENDING_PER_HOST: usize = 32;
/// DNS names one certificate may reach through requests (its own and the pending ones).
pub const MAX_CERT_NAMES: usize = 100;
/// Longest DNS name.
pub const MAX_NAME_LEN: usize = 253;
/// Longest `requester`.
pub const MAX_REQUESTER_CHARS: usize = 32;

/// Params of `request-names`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestNamesParams {
    /// The machine whose certificate gets the names (default: this machine). Only the CA may
    /// name another machine.
    #[serde(default)]
    pub host: Option<String>,
    /// DNS names to add (at most 32, each at most 253 characters).
    pub names: Vec<String>,
    /// Who asks (`dns`, `proxy`, …; at most 32 characters), for the audit log.
    #[serde(default)]
    pub requester: Option<String>,
}

/// A name that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefusedName {
    /// The name as asked (escaped and cut when it was hostile).
    pub name: String,
    /// Why, and what would work.
    pub reason: String,
}

/// Result of `request-names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NamesAnswer {
    /// The machine the names are for.
    pub host: String,
    /// Names now pending for it.
    pub accepted: Vec<String>,
    /// Names it already holds or already had pending (nothing changed for them).
    pub already: Vec<String>,
    /// Names refused, each with its reason.
    pub refused: Vec<RefusedName>,
    /// When the accepted names take effect, and how to make it happen now.
    pub effective: String,
}

/// The checks any caller's input gets before anything else: counts, lengths, control
/// characters. `Err` is the whole request's refusal.
pub fn check_request(names: &[String], requester: Option<&str>) -> Result<(), String> {
    if names.is_empty() {
        return Err("No names given: pass at least one DNS name (e.g. grafana.lan).".into());
    }
    if names.len() > MAX_NAMES_PER_REQUEST {
        return Err(format!(
            "{} names in one request; at most {MAX_NAMES_PER_REQUEST} are accepted. Send fewer \
             names per request.",
            names.len()
        ));
    }
    if let Some(r) = requester
        && (r.chars().count() > MAX_REQUESTER_CHARS || r.chars().any(char::is_control))
    {
        return Err(format!(
            "The requester {} is not accepted: use at most {MAX_REQUESTER_CHARS} characters and \
             no control characters (e.g. \"dns\" or \"proxy\").",
            bounded(r, 40)
        ));
    }
    Ok(())
}

/// One name's syntax and scope: its canonical form, or why not.
pub(crate) fn check_name(scope: &Scope, raw: &str) -> Result<String, String> {
    if raw.len() > MAX_NAME_LEN {
        return Err(format!(
            "longer than {MAX_NAME_LEN} characters, the limit of a DNS name"
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err("it contains control characters".into());
    }
    scope.check_dns(raw).map_err(|e| match e {
        koi_certmesh_core::Error::OutOfScope { .. } => {
            format!("outside the mesh scope ({scope}); ask for a name inside it")
        }
        other => other.to_string(),
    })
}

/// Who else holds or has asked for `name` (canonical), as a refusal reason.
fn owner_elsewhere(roster: &Roster, name: &str, host: &str) -> Option<String> {
    if let Some(c) = roster.first_conflict([name], [], Some(host)) {
        return Some(format!(
            "{c}; names belong to one machine (run `koi certmesh members` to see who holds what)"
        ));
    }
    let own = koi_certmesh_core::names::comparable(host);
    roster
        .members
        .iter()
        .filter(|m| koi_certmesh_core::names::comparable(&m.hostname) != own)
        .find(|m| m.pending_names.iter().any(|p| p == name))
        .map(|m| {
            format!(
                "already requested for {} (pending until its next renewal); names belong to one \
                 machine",
                m.hostname
            )
        })
}

/// The roster entry names may be requested for, or why not.
fn entry_for<'a>(roster: &'a Roster, host: &str) -> Result<&'a Member, Refusal> {
    let entry = roster.member(host).ok_or_else(|| {
        Refusal::NotPermitted(format!(
            "{} is not a machine of this mesh; names can be requested only for machines \
             that joined (run `koi certmesh members` to list them).",
            bounded(host, 64)
        ))
    })?;
    if entry.status != MemberStatus::Active || matches!(entry.role, Role::Device) {
        return Err(Refusal::NotPermitted(format!(
            "{} is a {} entry in status {}; names can be requested only for active machines \
             running koi (a device's names are set with `koi certmesh issue` on the CA).",
            entry.hostname,
            crate::wire::serde_name(&entry.role),
            crate::wire::serde_name(&entry.status)
        )));
    }
    Ok(entry)
}

/// When pending names of `entry` take effect.
fn effective(entry: &Member, primary: bool) -> String {
    let lifetime = entry.expires_at - entry.issued_at;
    let due = crate::names::rfc3339(entry.issued_at + lifetime * 2 / 3);
    if primary {
        format!(
            "at the next renewal of {}'s certificate (due around {due}); the CA renews it by \
             itself under `koi daemon`",
            entry.hostname
        )
    } else {
        format!(
            "at the next renewal of {host} (due around {due}); `koi certmesh renew --now` on \
             {host} applies it at once",
            host = entry.hostname
        )
    }
}

impl Authority {
    /// Checks and stores names requested for `host` (see the module docs). `peer` and `via`
    /// (`plugin dns`, `member stone-05`) are for the audit log. Blocking (reads, signs, writes).
    pub fn request_names(
        &self,
        host: &str,
        names: &[String],
        requester: Option<&str>,
        via: &str,
        peer: std::net::IpAddr,
    ) -> Result<NamesAnswer, Refusal> {
        let mut guard = self.session();
        let result = (|| {
            if !self.layout().is_ca() {
                return Err(Refusal::NotCa);
            }
            check_request(names, requester).map_err(Refusal::BadRequest)?;
            let Some(session) = guard.as_mut() else {
                return Err(Refusal::Locked);
            };
            let mut roster = Roster::load(&self.layout().roster())
                .map_err(|e| Refusal::Internal(e.to_string()))?;
            let entry = entry_for(&roster, host)?.clone();
            let scope = session.unlocked().ca().scope().clone();
            let mut answer = NamesAnswer {
                host: entry.hostname.clone(),
                accepted: Vec::new(),
                already: Vec::new(),
                refused: Vec::new(),
                effective: String::new(),
            };
            let mut pending = entry.pending_names.clone();
            for raw in names {
                let name = match check_name(&scope, raw) {
                    Ok(n) => n,
                    Err(reason) => {
                        answer.refused.push(RefusedName {
                            name: bounded(raw, 80),
                            reason,
                        });
                        continue;
                    }
                };
                let held = koi_certmesh_core::names::comparable(&entry.hostname) == name
                    || entry.dns_names.contains(&name);
                if held || pending.contains(&name) {
                    if !answer.already.contains(&name) {
                        answer.already.push(name);
                    }
                    continue;
                }
                if let Some(reason) = owner_elsewhere(&roster, &name, &entry.hostname) {
                    answer.refused.push(RefusedName { name, reason });
                    continue;
                }
                if entry.dns_names.len() + pending.len() >= MAX_CERT_NAMES {
                    answer.refused.push(RefusedName {
                        name,
                        reason: format!(
                            "{}'s certificate would hold more than {MAX_CERT_NAMES} names, the \
                             limit for requested names",
                            entry.hostname
                        ),
                    });
                    continue;
                }
                if pending.len() >= MAX_PENDING_PER_HOST {
                    answer.refused.push(RefusedName {
                        name,
                        reason: format!(
                            "{} already has {MAX_PENDING_PER_HOST} names pending, the limit; \
                             they join its certificate at its next renewal, then ask again",
                            entry.hostname
                        ),
                    });
                    continue;
                }
                pending.push(name.clone());
                answer.accepted.push(name);
            }
            let primary = entry.role == Role::Primary;
            answer.effective = if pending.is_empty() {
                format!(
                    "nothing changes: {} holds every accepted name already",
                    entry.hostname
                )
            } else {
                effective(&entry, primary)
            };
            if answer.accepted.is_empty() {
                // Nothing stored: refusals go to the bounded refusal records, not an entry each.
                let refused = (!answer.refused.is_empty()).then(|| {
                    let list: Vec<String> = answer
                        .refused
                        .iter()
                        .map(|r| format!("{}: {}", r.name, r.reason))
                        .collect();
                    Refusal::NotPermitted(format!(
                        "no name was accepted for {}: {}",
                        entry.hostname,
                        list.join("; ")
                    ))
                });
                return Ok((answer, refused));
            }
            session
                .audit(
                    NAMES_REQUESTED,
                    &bounded(via, crate::refusals::MAX_NAME_CHARS),
                    json!({
                        "hostname": entry.hostname,
                        "requester": requester.map(|r| bounded(r, MAX_REQUESTER_CHARS)),
                        "via": bounded(via, crate::refusals::MAX_NAME_CHARS),
                        "accepted": answer.accepted,
                        "refused": answer.refused,
                        "pending": pending,
                        "peer": peer.to_string(),
                    }),
                )
                .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
            let mut updated = entry;
            updated.pending_names = pending;
            roster.upsert(updated);
            session
                .save_roster(self.layout(), &mut roster)
                .map_err(|e| Refusal::Internal(e.message().to_owned()))?;
            Ok((answer, None))
        })();
        let refusal = match &result {
            Ok((_, refused)) => refused.clone(),
            Err(refusal) => Some(refusal.clone()),
        };
        if let Some(refusal) = &refusal {
            let detail = format!("request-names by {via}: {refusal}");
            let refused = Refused {
                peer,
                reason: refusal.reason(),
                detail: &detail,
                hostname: host,
                operator: requester,
            };
            self.record_refusal(guard.as_mut(), &refused);
        }
        result.map(|(answer, _)| answer)
    }
}

/// `(via, peer)` for the audit log from the call's caller; REST is refused.
fn caller_of(ctx: &Context, method: &str) -> Result<String, MethodError> {
    match ctx.caller() {
        Some(Caller::Rest) => Err(error::fail(
            format!(
                "certmesh/{method} is refused over the REST API: it has no authentication, and \
                 what this method stores ends up in certificates or the roster every mesh \
                 machine trusts."
            ),
            format!(
                "Call it from a plugin through the host (ctx.call(\"certmesh/{method}\", …)) or \
                 run it on this machine's command line (koi certmesh {method} --help shows how)."
            ),
        )),
        Some(Caller::Plugin { plugin }) => Ok(format!("plugin {}", bounded(plugin, 40))),
        Some(Caller::Cli { uid }) => Ok(match uid {
            Some(u) => format!("cli uid {u}"),
            None => "cli".into(),
        }),
        _ => Ok("local".into()),
    }
}

/// `(this machine's membership, whether it is the CA)`, or why it can do neither.
pub(crate) fn this_machine(
    authority: &Authority,
    method: &str,
) -> Result<(Membership, bool), MethodError> {
    let membership = Membership::load(authority.layout())?.ok_or_else(|| {
        error::fail(
            format!("This machine is in no certmesh mesh, so certmesh/{method} has nothing to act on."),
            "Join a mesh with `koi certmesh join` (or create one with `koi certmesh create`), then ask again.",
        )
    })?;
    let is_ca = authority.layout().is_ca();
    Ok((membership, is_ca))
}

/// Caller check (shared with `set-proxy-entries`).
pub(crate) fn via(ctx: &Context, method: &str) -> Result<String, MethodError> {
    caller_of(ctx, method)
}

/// The `request-names` method.
pub async fn run(ctx: Context, p: RequestNamesParams) -> Result<NamesAnswer, MethodError> {
    let via = caller_of(&ctx, "request-names")?;
    check_request(&p.names, p.requester.as_deref())
        .map_err(|e| error::fail(e, "Fix the request and send it again."))?;
    let authority = App::of(&ctx)?.authority();
    let (membership, is_ca) = this_machine(&authority, "request-names")?;
    let host = p
        .host
        .clone()
        .unwrap_or_else(|| membership.hostname.clone());
    if is_ca {
        let peer = std::net::IpAddr::from([127, 0, 0, 1]);
        return ctx
            .blocking("request names", move || {
                Ok(authority.request_names(&host, &p.names, p.requester.as_deref(), &via, peer))
            })
            .await?
            .map_err(MethodError::from);
    }
    if koi_certmesh_core::names::comparable(&host)
        != koi_certmesh_core::names::comparable(&membership.hostname)
    {
        return Err(error::fail(
            format!(
                "This machine ({}) is a member of the mesh, not its CA: it can request names \
                 only for itself, not for {}.",
                membership.hostname,
                bounded(&host, 64)
            ),
            format!(
                "Leave out `host` to ask for this machine, or ask on the CA ({}), where \
                 plugins may request names for any machine of the mesh.",
                membership
                    .ca_name
                    .as_deref()
                    .unwrap_or("the machine that ran `koi certmesh create`")
            ),
        ));
    }
    let body = crate::names_api::NamesRequest {
        names: p.names,
        requester: p.requester,
    };
    crate::names_api::forward(&authority, &membership, crate::names_api::NAMES_PATH, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bounded_before_anything_else() {
        assert!(check_request(&[], None).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("n{i}.lan")).collect();
        assert!(
            check_request(&many, None)
                .unwrap_err()
                .contains("at most 32")
        );
        assert!(check_request(&["a.lan".into()], Some("dns")).is_ok());
        assert!(check_request(&["a.lan".into()], Some(&"x".repeat(33))).is_err());
        assert!(check_request(&["a.lan".into()], Some("d\u{1b}[2J")).is_err());
    }

    #[test]
    fn names_are_checked_for_length_control_characters_and_scope() {
        let scope = Scope::new(&["lan"], &[] as &[&str]).unwrap();
        assert_eq!(check_name(&scope, "Grafana.LAN.").unwrap(), "grafana.lan");
        assert!(
            check_name(&scope, "x.example.com")
                .unwrap_err()
                .contains("outside the mesh scope")
        );
        assert!(
            check_name(&scope, &format!("{}.lan", "a".repeat(260)))
                .unwrap_err()
                .contains("253")
        );
        assert!(
            check_name(&scope, "a\nb.lan")
                .unwrap_err()
                .contains("control")
        );
        assert!(check_name(&scope, "bad_name.lan").is_err());
    }
}
