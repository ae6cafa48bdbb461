//! The names and addresses a member's leaf certificate gets, decided from the mesh's scope
//! alone ([`leaf_request`]); who may hold them is [`crate::ownership`]'s concern. Used by `join`
//! (on the CA, for the joining member) and `create` (for the CA machine's own certificate).

use std::net::IpAddr;

use koi_certmesh_core::{LeafRequest, Scope};

use crate::error::Refusal;

/// The names and addresses a member's certificate gets: `host`, `host.local` and `host.<zone>`
/// where the scope allows them (silently left out otherwise), the names the member asked for
/// (canonical form; refused if out of scope), and its private LAN addresses inside the scope
/// (others dropped and reported). Ownership (no other entry may hold any of them) is checked by
/// the caller against the roster ([`crate::ownership`]).
pub fn leaf_request(
    scope: &Scope,
    zone: &str,
    hostname: &str,
    extra_names: &[String],
    addresses: &[IpAddr],
) -> Result<(LeafRequest, Vec<String>), Refusal> {
    let mut names: Vec<String> = Vec::new();
    for auto in [
        hostname.to_owned(),
        format!("{hostname}.local"),
        format!("{hostname}.{zone}"),
    ] {
        if let Ok(n) = scope.check_dns(&auto)
            && !names.contains(&n)
        {
            names.push(n);
        }
    }
    for extra in extra_names {
        let n = scope
            .check_dns(extra)
            .map_err(|e| Refusal::NotPermitted(e.to_string()))?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        return Err(Refusal::NotPermitted(format!(
            "None of {hostname}, {hostname}.local, {hostname}.{zone} is inside the mesh's scope. \
             Ask for an in-scope name with `--name`."
        )));
    }
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for ip in addresses {
        match scope.check_ip(*ip) {
            Ok(()) if !kept.contains(ip) => kept.push(*ip),
            Ok(()) => {}
            Err(_) => dropped.push(format!("{ip} (outside the mesh's scope)")),
        }
    }
    let mut req = LeafRequest::new(names.remove(0));
    req.dns_names = names;
    req.ip_addresses = kept;
    Ok((req, dropped))
}
