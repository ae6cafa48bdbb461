//! Small naming rules shared by the verbs and the API: what a host name may be, the mesh's
//! unicast zone (`lan`, or the first scope domain so names stay inside the name constraints),
//! and the timestamp format.

use koi_certmesh_core::Roster;
use time::OffsetDateTime;

/// The default unicast zone (never `.local`, which belongs to mDNS).
pub const DEFAULT_ZONE: &str = "lan";

/// A host name is one DNS label: 1–63 letters, digits and hyphens, not starting or ending with
/// a hyphen.
pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid host name: use one DNS label of lower-case letters, digits and hyphens (at most 63)."
        ))
    }
}

/// The zone members' `host.<zone>` names live in.
pub fn zone_of(roster: &Roster) -> String {
    roster
        .mesh
        .scope
        .domains
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_ZONE.to_owned())
}

/// RFC 3339 in UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// This machine's LAN addresses for its certificate: private IPv4 (RFC 1918) and unique-local
/// IPv6, never loopback, link-local or public ones.
pub fn lan_addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.is_private(),
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_single_lower_case_labels() {
        assert!(check_hostname("stone-01").is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", "a b", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }
}
