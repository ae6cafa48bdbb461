//! Pending names at renewal: the names other plugins requested for a machine
//! ([`crate::request_names`]) join its certificate at its next renewal. [`apply_pending`] checks
//! each again against the scope and ownership — those still allowed are added to the leaf, those
//! no longer allowed are dropped with their reason (a renewal never fails because of a requested
//! name) — and [`still_pending`] keeps on the entry only what the new certificate does not hold.
//! Used by pulled renewal ([`crate::renew_api`]) and the CA's own ([`crate::ca_renew`]); pushed
//! renewal calls the same two functions.

use koi_certmesh_core::{LeafRequest, Member, Roster, Scope};
use serde::Serialize;
use serde_json::json;

use crate::request_names::{RefusedName, check_name};

/// `{host: [names]}` of the entries with pending names (for the CA's `status`).
pub fn pending_by_host(roster: &Roster) -> serde_json::Value {
    roster
        .members
        .iter()
        .filter(|m| !m.pending_names.is_empty())
        .map(|m| (m.hostname.clone(), json!(m.pending_names)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// What [`apply_pending`] did at a renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PendingApplied {
    /// Pending names added to the certificate.
    pub added: Vec<String>,
    /// Pending names no longer allowed, each with its reason; they are dropped.
    pub dropped: Vec<RefusedName>,
}

/// At a renewal of `host`: adds its pending names to `leaf`, each checked again against the
/// scope and ownership (names no longer allowed are dropped with their reason, not refused: the
/// renewal itself must not fail because of a name another plugin asked for).
pub fn apply_pending(
    scope: &Scope,
    roster: &Roster,
    host: &str,
    leaf: &mut LeafRequest,
) -> PendingApplied {
    let mut out = PendingApplied::default();
    let Some(entry) = roster.member(host) else {
        return out;
    };
    for raw in &entry.pending_names {
        let name = match check_name(scope, raw) {
            Ok(n) => n,
            Err(reason) => {
                out.dropped.push(RefusedName {
                    name: raw.clone(),
                    reason,
                });
                continue;
            }
        };
        if let Some(c) = roster.first_conflict([name.as_str()], [], Some(host)) {
            out.dropped.push(RefusedName {
                name,
                reason: c.to_string(),
            });
            continue;
        }
        if leaf.hostname != name && !leaf.dns_names.contains(&name) {
            leaf.dns_names.push(name.clone());
            out.added.push(name);
        }
    }
    out
}

/// The pending names left after a renewal issued `dns_names`: those neither in the new
/// certificate nor dropped.
pub fn still_pending(
    entry: Option<&Member>,
    dns_names: &[String],
    applied: &PendingApplied,
) -> Vec<String> {
    entry.map_or_else(Vec::new, |e| {
        e.pending_names
            .iter()
            .filter(|n| !dns_names.contains(n))
            .filter(|n| !applied.dropped.iter().any(|d| &d.name == *n))
            .cloned()
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use koi_certmesh_core::{MemberStatus, Role};

    fn member(host: &str, names: &[&str], pending: &[&str]) -> Member {
        Member {
            hostname: host.into(),
            dns_names: names.iter().map(|s| (*s).to_owned()).collect(),
            ip_addresses: Vec::new(),
            serial: "01".into(),
            fingerprint: "00".into(),
            issued_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            role: Role::Member,
            status: MemberStatus::Active,
            operator: None,
            reload_hook: None,
            proxy_entries: Vec::new(),
            revoked_at: None,
            previous_fingerprint: None,
            device: None,
            pending_names: pending.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn at_renewal_pending_names_are_checked_again_and_the_ones_no_longer_allowed_dropped() {
        let scope = Scope::new(&["lan"], &[] as &[&str]).unwrap();
        let mut roster = Roster::new(
            koi_certmesh_core::TrustProfile::Personal,
            "ff".into(),
            scope.clone(),
            "ca".into(),
            None,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        // taken.lan was pending for b, then another machine got it first.
        roster.upsert(member(
            "b",
            &["b.lan"],
            &["grafana.lan", "taken.lan", "b.lan"],
        ));
        roster.upsert(member("c", &["c.lan", "taken.lan"], &[]));
        let mut leaf = LeafRequest::new("b");
        leaf.dns_names = vec!["b.lan".into()];
        let applied = apply_pending(&scope, &roster, "b", &mut leaf);
        assert_eq!(applied.added, vec!["grafana.lan".to_owned()]);
        assert_eq!(applied.dropped.len(), 1);
        assert_eq!(applied.dropped[0].name, "taken.lan");
        assert!(
            applied.dropped[0].reason.contains("c"),
            "{:?}",
            applied.dropped
        );
        assert_eq!(
            leaf.dns_names,
            vec!["b.lan".to_owned(), "grafana.lan".to_owned()]
        );
        // Nothing stays pending once the certificate holds the rest.
        let entry = roster.member("b").cloned();
        assert!(still_pending(entry.as_ref(), &leaf.dns_names, &applied).is_empty());
        // A name the certificate did not get (the signing dropped it) stays pending.
        let issued = vec!["b.lan".to_owned()];
        assert_eq!(
            still_pending(entry.as_ref(), &issued, &applied),
            vec!["grafana.lan".to_owned()]
        );
    }
}
