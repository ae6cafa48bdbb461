//! The checks and the signature every member certificate goes through, shared by enrollment
//! (`POST /v1/certmesh/join`, [`crate::authority`]) and renewal (`POST /v1/certmesh/renew`,
//! [`crate::renew_api`]), so the two cannot drift apart: [`leaf`] decides the names from the
//! mesh's scope and checks the CSR; [`sign`] leaves out addresses another entry holds, refuses
//! names another entry holds ([`crate::ownership`]) and signs.

use std::net::IpAddr;

use koi_certmesh_core::{IssuedCert, LeafRequest, Roster, UnlockedCa};
use time::OffsetDateTime;

use crate::error::Refusal;

/// The names and addresses for `hostname` (scope only; see [`crate::leaf::leaf_request`]) and
/// the addresses left out, after checking that `csr_pem` is a valid request signed by its key.
pub fn leaf(
    unlocked: &UnlockedCa,
    roster: &Roster,
    hostname: &str,
    extra_names: &[String],
    ip_addresses: &[IpAddr],
    csr_pem: &str,
) -> Result<(LeafRequest, Vec<String>), Refusal> {
    let (leaf, dropped) = crate::leaf::leaf_request(
        unlocked.ca().scope(),
        &crate::names::zone_of(roster),
        hostname,
        extra_names,
        ip_addresses,
    )?;
    koi_certmesh_core::issue::verified_csr_public_key(csr_pem)
        .map_err(|e| Refusal::BadRequest(e.to_string()))?;
    Ok((leaf, dropped))
}

/// Signs `csr_pem` for `leaf` as the entry `hostname`: addresses another entry holds are left
/// out (added to `dropped`), a name another entry holds is refused, and the lifetime is the
/// default unless a debug build's test clock sets it ([`crate::clock::leaf_lifetime`]).
pub fn sign(
    unlocked: &UnlockedCa,
    roster: &Roster,
    mut leaf: LeafRequest,
    dropped: &mut Vec<String>,
    hostname: &str,
    csr_pem: &str,
    now: OffsetDateTime,
) -> Result<IssuedCert, Refusal> {
    dropped.extend(crate::ownership::drop_held_addresses(
        roster, &mut leaf, hostname,
    ));
    crate::ownership::check(roster, &leaf, hostname).map_err(Refusal::NotPermitted)?;
    leaf.validity = crate::clock::leaf_lifetime();
    unlocked
        .ca()
        .issue_from_csr(csr_pem, &leaf, now)
        .map_err(|e| match e {
            koi_certmesh_core::Error::InvalidCsr { .. } => Refusal::BadRequest(e.to_string()),
            koi_certmesh_core::Error::OutOfScope { .. }
            | koi_certmesh_core::Error::InvalidName { .. } => Refusal::NotPermitted(e.to_string()),
            other => Refusal::Internal(other.to_string()),
        })
}
