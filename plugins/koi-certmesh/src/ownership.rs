//! Who may hold a name or address. A leaf may carry only names and addresses that no other
//! roster entry (member, CA, device) holds; [`check`] asks the roster
//! ([`koi_certmesh_core::Roster::first_conflict`]) and turns a conflict into a refusal that names
//! the holder and a next step. Join uses it for every name (the automatic `host.local` /
//! `host.<zone>` ones and `extra_names`) and every address; `issue` for every name and `--ip`.

use koi_certmesh_core::roster::Conflict;
use koi_certmesh_core::{LeafRequest, Roster};

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
