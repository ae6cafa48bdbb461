//! Device certificates over time (issue 11 item 8): the `--days` lifetime of `koi certmesh issue`
//! (default [`DEFAULT_DAYS`], at most [`MAX_DAYS`], the limit some TLS clients enforce), the
//! devices whose certificates expire within [`EXPIRING_WITHIN_DAYS`] (shown by `status` on the
//! CA), and `koi certmesh issue --renew NAME`: a new certificate, with a new serial, for the key
//! certmesh wrote for that device, in the folder recorded in its roster entry.
//!
//! `--renew` re-uses a key only when it is the one koi wrote for this entry: the folder's
//! `cert.pem` must be the certificate the roster records (same SHA-256) and `key.pem`'s public
//! key must be that certificate's. Anything else — a replaced key, a replaced certificate, a
//! missing file, a link — is refused with the command that issues a new key instead. Files are
//! read and replaced through [`crate::out_dir`] (O_NOFOLLOW, temporary name, rename).

use koi_certmesh_core::names::canonical_name;
use koi_certmesh_core::{DeviceIssue, LeafRequest, Member, Role, Roster};
use koi_sdk::MethodError;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::CaSession;
use crate::error;
use crate::issue::IssueResult;
use crate::layout::Layout;
use crate::renew_api::CERTIFICATE_RENEWED;
use crate::{names, out_dir, ownership};

/// Lifetime of a device certificate when `--days` is not given.
pub const DEFAULT_DAYS: i64 = 397;
/// Longest lifetime `--days` accepts (825 days: the platform limit some clients enforce).
pub const MAX_DAYS: i64 = 825;
/// Shortest lifetime `--days` accepts.
pub const MIN_DAYS: i64 = 1;
/// `status` on the CA lists device certificates that expire within this many days.
pub const EXPIRING_WITHIN_DAYS: i64 = 30;

/// `--days`, checked: `given`, else `fallback`; refused outside [`MIN_DAYS`]..=[`MAX_DAYS`].
pub fn checked_days(given: Option<i64>, fallback: i64) -> Result<i64, MethodError> {
    let days = given.unwrap_or(fallback);
    if (MIN_DAYS..=MAX_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(error::fail(
            format!(
                "--days {days} is out of range: a device certificate lasts {MIN_DAYS} to {MAX_DAYS} days ({MAX_DAYS} is the limit some TLS clients enforce)."
            ),
            format!(
                "Pass --days between {MIN_DAYS} and {MAX_DAYS}, or leave it out for {DEFAULT_DAYS}."
            ),
        ))
    }
}

/// A device certificate that expires soon (an entry of `status`'s `devices_expiring`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ExpiringDevice {
    /// The device's identity in the roster.
    pub name: String,
    /// Serial of its current certificate (hex).
    pub serial: String,
    /// Expiry (RFC 3339).
    pub not_after: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// The command that renews it with the same key.
    pub next: String,
}

/// The device entries of `roster` that expire within [`EXPIRING_WITHIN_DAYS`] of `now`,
/// soonest first.
pub fn expiring(roster: &Roster, now: OffsetDateTime) -> Vec<ExpiringDevice> {
    let horizon = now + Duration::days(EXPIRING_WITHIN_DAYS);
    let mut out: Vec<(OffsetDateTime, ExpiringDevice)> = roster
        .members
        .iter()
        .filter(|m| m.role == Role::Device && m.expires_at <= horizon)
        .map(|m| {
            (
                m.expires_at,
                ExpiringDevice {
                    name: m.hostname.clone(),
                    serial: m.serial.clone(),
                    not_after: names::rfc3339(m.expires_at),
                    days_left: (m.expires_at - now).whole_days(),
                    next: format!("koi certmesh issue --renew {}", m.hostname),
                },
            )
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out.into_iter().map(|(_, d)| d).collect()
}

/// The status summary's words for `devices` ("" when none expire soon).
pub fn status_text(devices: &[ExpiringDevice]) -> String {
    if devices.is_empty() {
        return String::new();
    }
    let list: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                "{} (serial {}, expires {}, {} day(s) left)",
                d.name, d.serial, d.not_after, d.days_left
            )
        })
        .collect();
    format!(
        "; {} device certificate(s) expire within {EXPIRING_WITHIN_DAYS} days: {} — run `koi certmesh issue --renew NAME`",
        devices.len(),
        list.join(", ")
    )
}

/// What `issue --renew` was asked for.
#[derive(Debug)]
pub struct RenewAsk {
    /// The device's identity (canonical).
    pub name: String,
    /// New further DNS names (canonical); `None` keeps the entry's.
    pub dns_names: Option<Vec<String>>,
    /// New IP addresses; `None` keeps the entry's.
    pub ip_addresses: Option<Vec<IpAddr>>,
    /// `--days`, if given (else the entry's).
    pub days: Option<i64>,
}

fn fresh_issue_next(name: &str, dir: &str, force: bool) -> String {
    format!(
        "Run `koi certmesh issue {name} --out '{dir}'{}` to issue a new key and certificate there instead, or put back the key.pem and cert.pem koi wrote.",
        if force { " --force" } else { "" }
    )
}

/// Re-issues device `ask.name` for the key koi wrote for it, inside a signing session: checks
/// the entry, the folder and the key, signs, replaces the files, audits
/// [`CERTIFICATE_RENEWED`] and updates the roster.
pub fn renew(
    session: &mut CaSession,
    layout: &Layout,
    roster_path: &Path,
    who: &str,
    ask: RenewAsk,
) -> Result<IssueResult, MethodError> {
    let now = OffsetDateTime::now_utc();
    let mut roster = Roster::load(roster_path).map_err(error::core)?;
    let name = ask.name;
    if let Some(machine) = roster.member(&name).filter(|m| m.role != Role::Device) {
        return Err(error::fail(
            format!(
                "{name} is a mesh machine ({} certificate, serial {}), not a device; machines renew their own certificates.",
                crate::wire::serde_name(&machine.role),
                machine.serial
            ),
            "A member renews with `koi certmesh renew --now` on that machine; `issue --renew` is for device certificates only (`koi certmesh status --json` lists every entry and its role).",
        ));
    }
    let Some(entry) = roster.member(&name).cloned() else {
        return Err(error::fail(
            format!(
                "There is no device certificate named {name} in this mesh's roster; --renew re-issues an existing one."
            ),
            format!(
                "Run `koi certmesh issue {name}` to issue a new one (`koi certmesh status --json` lists every entry)."
            ),
        ));
    };
    let Some(recorded) = entry.device.clone() else {
        return Err(error::fail(
            format!(
                "{name} was issued before koi recorded where device files go, so koi cannot find the key it wrote."
            ),
            format!(
                "Run `koi certmesh issue {name} --out DIR` to issue a new key and certificate (DIR: where the device's files are)."
            ),
        ));
    };
    let days = checked_days(ask.days, recorded.days)?;
    let mut request = LeafRequest::new(entry.hostname.clone());
    request.dns_names = ask.dns_names.unwrap_or_else(|| {
        entry
            .dns_names
            .iter()
            .filter(|n| canonical_name(n).ok().as_deref() != Some(entry.hostname.as_str()))
            .cloned()
            .collect()
    });
    request.ip_addresses = ask
        .ip_addresses
        .unwrap_or_else(|| entry.ip_addresses.clone());
    request.validity = Some(Duration::days(days));
    ownership::check(&roster, &request, &entry.hostname).map_err(MethodError::new)?;

    let ca_pem = session.unlocked().ca().cert_pem().to_owned();
    // force: the foreign-file rule is replaced by the stricter checks below (links stay refused).
    let out = out_dir::open(
        layout,
        &roster,
        &entry.hostname,
        Some(Path::new(&recorded.out_dir)),
        &ca_pem,
        true,
    )?;
    let dir = out.files.dir.clone();
    let cert_pem = out.read_small("cert.pem");
    let cert_der = cert_pem.as_deref().and_then(|p| crate::x509::der(p));
    let cert_ours = cert_der
        .as_deref()
        .is_some_and(|der| koi_certmesh_core::fingerprint_sha256(der) == entry.fingerprint);
    let Some(cert_der) = cert_der.filter(|_| cert_ours) else {
        return Err(error::fail(
            format!(
                "{dir}/cert.pem is not the certificate koi issued for {name} (serial {}); koi re-uses a key only next to its own certificate.",
                entry.serial
            ),
            fresh_issue_next(&name, &dir, true),
        ));
    };
    let spki = X509Certificate::from_der(&cert_der)
        .map(|(_, c)| c.public_key().raw.to_vec())
        .map_err(|e| MethodError::new(format!("Failed to read {dir}/cert.pem: {e}")))?;
    let key_pem = out.read_small("key.pem");
    let key_ours = key_pem
        .as_deref()
        .and_then(|k| koi_certmesh_core::issue::public_key_der_of(k).ok())
        .is_some_and(|k| k == spki);
    let Some(key_pem) = key_pem.filter(|_| key_ours) else {
        return Err(error::fail(
            format!(
                "{dir}/key.pem is missing or is not the key koi wrote for {name} (its public key is not the one in cert.pem); koi re-issues only for a key it wrote."
            ),
            fresh_issue_next(&name, &dir, false),
        ));
    };
    let cert = session
        .unlocked()
        .ca()
        .issue_for_device_key(&key_pem, &request, now)
        .map_err(error::core)?;
    out.write(&cert.cert_pem, &key_pem, &cert.ca_pem)?;
    let expires_at = names::rfc3339(cert.not_after);
    session.audit(
        CERTIFICATE_RENEWED,
        who,
        json!({
            "device": entry.hostname,
            "role": "device",
            "old_serial": entry.serial,
            "serial": cert.serial_hex,
            "fingerprint": cert.fingerprint,
            "dns_names": cert.dns_names,
            "ip_addresses": cert.ip_addresses,
            "expires_at": expires_at,
            "days": days,
            "key_kept": true,
            "files": dir,
        }),
    )?;
    let mut member = Member::from_issued(&entry.hostname, &cert, Role::Device, entry.operator);
    member.device = Some(DeviceIssue {
        out_dir: recorded.out_dir,
        days,
    });
    roster.upsert(member);
    session.save_roster_at(roster_path, &mut roster)?;
    Ok(IssueResult {
        name: entry.hostname,
        dns_names: cert.dns_names.clone(),
        ip_addresses: cert.ip_addresses.iter().map(ToString::to_string).collect(),
        serial: cert.serial_hex.clone(),
        expires_at,
        files: out.files.clone(),
        days,
        previous_serial: Some(entry.serial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_bounded_and_default_to_397() {
        assert_eq!(checked_days(None, DEFAULT_DAYS).unwrap(), 397);
        assert_eq!(checked_days(Some(1), DEFAULT_DAYS).unwrap(), 1);
        assert_eq!(checked_days(Some(825), DEFAULT_DAYS).unwrap(), 825);
        for bad in [0, -3, 826] {
            let e = checked_days(Some(bad), DEFAULT_DAYS).unwrap_err();
            assert!(e.message().contains("1 to 825"), "{}", e.message());
        }
    }
}
