//! Who may hold a name or address. A leaf may carry only names and addresses that no other
//! roster entry (member, CA, device) holds; [`check`] asks the roster
//! ([`koi_certmesh_core::Roster::first_conflict`]) and turns a conflict into a refusal that names
//! the holder and a next step. Join uses it for every name (the automatic `host.local` /
//! `host.<zone>` ones and `extra_names`); `issue` for every name and `--ip`.
//!
//! A joining member's addresses are different: it reports every private address of its
//! interfaces, and some are shared by many machines (Docker's `172.17.0.1`, a VPN's address). So
//! [`drop_held_addresses`] leaves out an address another entry holds and reports it, instead of
//! refusing the whole join; either way no leaf holds an address another entry holds.

use koi_certmesh_core::roster::Conflict;
use koi_certmesh_core::{LeafRequest, Roster};
use std::net::IpAddr;

/// The refusal text for a conflict: what, who holds it, and where to see every entry.
pub fn refusal_text(conflict: &Conflict) -> String {
    format!(
        "Refused: {conflict}; a certificate may only hold names and addresses no other entry of \
         the mesh holds. Ask for another name or address (`koi certmesh status --json` on the CA \
         lists every entry's names and addresses)."
    )
}

/// The first name or address of `leaf` that an entry other than `own` holds.
pub fn conflict(roster: &Roster, leaf: &LeafRequest, own: &str) -> Option<Conflict> {
    roster.first_conflict(
        std::iter::once(leaf.hostname.as_str()).chain(leaf.dns_names.iter().map(String::as_str)),
        leaf.ip_addresses.iter().copied(),
        Some(own),
    )
}

/// [`conflict`] as a refusal message.
pub fn check(roster: &Roster, leaf: &LeafRequest, own: &str) -> Result<(), String> {
    match conflict(roster, leaf, own) {
        Some(c) => Err(refusal_text(&c)),
        None => Ok(()),
    }
}

/// Removes from `leaf` every address an entry other than `own` holds, and returns each one with
/// its holder (`"172.17.0.1 (the address 172.17.0.1 belongs to the CA's certificate stone-a
/// (serial …))"`), for the join's answer and audit.
pub fn drop_held_addresses(roster: &Roster, leaf: &mut LeafRequest, own: &str) -> Vec<String> {
    let mut dropped = Vec::new();
    leaf.ip_addresses.retain(|ip: &IpAddr| {
        match roster.first_conflict(std::iter::empty(), [*ip], Some(own)) {
            Some(c) => {
                dropped.push(format!("{ip} ({c})"));
                false
            }
            None => true,
        }
    });
    dropped
}
