//! `koi certmesh issue NAME... [--ip ADDR]... [--out DIR]`, on the CA: a certificate and key for a
//! device that cannot run koi (printer, NAS, router), like `mkcert` or `step ca certificate`.
//! The key is generated here and written straight to disk (0600); it never crosses the pipe. The
//! names obey the mesh scope; the device goes into the roster (role `device`) and the audit log.
//!
//! Names are canonical ([`koi_certmesh_core::names::canonical_name`]: `NAS.LAN.` is `nas.lan`, the
//! same roster entry, so issuing it again re-issues that device). Every name and address is
//! checked against every other roster entry ([`crate::ownership`]); the files go only where
//! [`crate::out_dir`] allows (no links, no other entry's folder, no foreign files without
//! `--force`).

use koi_certmesh_core::audit::events;
use koi_certmesh_core::names::canonical_name;
use koi_certmesh_core::{LeafRequest, Member, Role, Roster};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use time::OffsetDateTime;

use crate::app::{App, actor};
use crate::authority::{CaSession, ENROLLMENT_REFUSED};
use crate::error;
use crate::files::CertFiles;
use crate::names;
use crate::signing::with_signing_session;
use crate::{out_dir, ownership};

/// Params of `issue`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueParams {
    /// DNS names for the device; the first is its identity in the roster. With --renew: new
    /// further names (none keeps the entry's).
    #[serde(default)]
    pub names: Vec<String>,
    /// IP addresses for the device (repeatable; private addresses inside the scope).
    #[serde(default)]
    pub ip: Vec<String>,
    /// Directory for cert.pem, key.pem, ca.pem and fullchain.pem (default: KOI_HOME/certs/NAME).
    #[serde(default)]
    pub out: Option<String>,
    /// Operator name for the audit log.
    #[serde(default)]
    pub operator: Option<String>,
    /// Without a daemon: read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
    /// Overwrite files in --out that koi did not write for this device (links are never followed).
    #[serde(default)]
    pub force: bool,
    /// Lifetime in days: 1 to 825, default 397 (with --renew: the entry's).
    #[serde(default)]
    pub days: Option<i64>,
    /// Re-issue the device NAME with the key koi wrote for it, in its recorded folder (new
    /// serial; same names unless NAMES or --ip are given).
    #[serde(default)]
    pub renew: Option<String>,
}

/// Result of `issue`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct IssueResult {
    /// The device's identity (first name).
    pub name: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// Serial (hex).
    pub serial: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// Where the files are (the key is 0600).
    pub files: CertFiles,
    /// Lifetime in days.
    pub days: i64,
    /// With --renew: the serial of the certificate it replaces (the key is the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_serial: Option<String>,
}

/// The absolute `--out` directory, if one was given.
fn out_path(ctx: &Context, given: Option<&str>) -> Result<Option<PathBuf>, MethodError> {
    let Some(given) = given else {
        return Ok(None);
    };
    let path = PathBuf::from(given);
    if path.is_absolute() {
        Ok(Some(path))
    } else if ctx.mode() == RunMode::OneShot {
        Ok(Some(
            std::env::current_dir()
                .map_err(|e| MethodError::new(format!("Failed to resolve --out {given}: {e}")))?
                .join(path),
        ))
    } else {
        Err(error::fail(
            format!("--out {given} is relative, and koi daemon does not run in your directory."),
            "Pass an absolute path, e.g. --out \"$PWD/printer\".",
        ))
    }
}

/// Records a refused issuance in the audit log and returns the error.
fn refuse(session: &mut CaSession, who: &str, device: &str, e: MethodError) -> MethodError {
    let _ = session.audit(
        ENROLLMENT_REFUSED,
        who,
        json!({"reason": "not_permitted", "detail": e.message(), "device": device}),
    );
    e
}

/// The `issue` method.
pub async fn run(ctx: Context, p: IssueParams) -> Result<IssueResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    if !layout.is_ca() {
        return Err(error::fail(
            "This machine is not a certmesh CA; only the CA issues device certificates.",
            "Run `koi certmesh issue` on the CA.",
        ));
    }
    if let Some(name) = p.renew.clone() {
        return renew(ctx, p, name).await;
    }
    let days = crate::devices::checked_days(p.days, crate::devices::DEFAULT_DAYS)?;
    if p.names.is_empty() {
        return Err(error::fail(
            "Name at least one DNS name for the device.",
            "e.g. `koi certmesh issue printer.lan --ip 10.0.0.7`.",
        ));
    }
    let mut dns: Vec<String> = Vec::new();
    for raw in &p.names {
        let n = canonical_name(raw).map_err(error::core)?;
        if !dns.contains(&n) {
            dns.push(n);
        }
    }
    let first = dns.remove(0);
    let mut ips = Vec::new();
    for text in &p.ip {
        ips.push(text.parse::<IpAddr>().map_err(|_| {
            error::fail(
                format!("--ip {text} is not an IP address."),
                "Pass an IPv4 or IPv6 address, e.g. --ip 10.0.0.7.",
            )
        })?);
    }
    let given = out_path(&ctx, p.out.as_deref())?;
    let mut request = LeafRequest::new(first.clone());
    request.dns_names = dns;
    request.ip_addresses = ips;
    request.validity = Some(time::Duration::days(days));
    let who = actor(p.operator.as_deref());
    let p_passphrase_file = p.passphrase_file.clone();
    let p_operator = p.operator.clone();
    let force = p.force;

    let roster_path = layout.roster();
    let layout_for_files = layout.clone();
    let issue = move |session: &mut CaSession| -> Result<IssueResult, MethodError> {
        let now = OffsetDateTime::now_utc();
        let roster = Roster::load(&roster_path).map_err(error::core)?;
        if let Some(existing) = roster.member(&first).filter(|m| m.role != Role::Device) {
            let e = error::fail(
                format!(
                    "{first} is the name of a mesh machine ({} certificate {}, serial {}), not a device; issuing would replace its certificate.",
                    crate::wire::serde_name(&existing.role),
                    existing.hostname,
                    existing.serial
                ),
                "Pick another name for the device (`koi certmesh status --json` lists every entry).",
            );
            return Err(refuse(session, &who, &first, e));
        }
        if let Err(text) = ownership::check(&roster, &request, &first) {
            return Err(refuse(session, &who, &first, MethodError::new(text)));
        }
        let ca_pem = session.unlocked().ca().cert_pem().to_owned();
        let out = out_dir::open(
            &layout_for_files,
            &roster,
            &first,
            given.as_deref(),
            &ca_pem,
            force,
        )?;
        let files = out.files.clone();
        let device = match session.unlocked().ca().issue_for_device(&request, now) {
            Ok(d) => d,
            Err(e) => {
                let e = error::core(e);
                return Err(refuse(session, &who, &first, e));
            }
        };
        out.write(&device.cert.cert_pem, &device.key_pem, &device.cert.ca_pem)?;
        let expires_at = names::rfc3339(device.cert.not_after);
        session.audit(
            events::CERT_ISSUED,
            &who,
            json!({
                "device": first,
                "role": "device",
                "serial": device.cert.serial_hex,
                "fingerprint": device.cert.fingerprint,
                "dns_names": device.cert.dns_names,
                "ip_addresses": device.cert.ip_addresses,
                "expires_at": expires_at,
                "days": days,
                "files": files.dir,
            }),
        )?;
        let mut roster = roster;
        let mut member =
            Member::from_issued(&first, &device.cert, Role::Device, p.operator.clone());
        member.device = Some(koi_certmesh_core::DeviceIssue {
            out_dir: files.dir.clone(),
            days,
        });
        roster.upsert(member);
        session.save_roster_at(&roster_path, &mut roster)?;
        Ok(IssueResult {
            name: first.clone(),
            dns_names: device.cert.dns_names.clone(),
            ip_addresses: device
                .cert
                .ip_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            serial: device.cert.serial_hex.clone(),
            expires_at,
            files: files.clone(),
            days,
            previous_serial: None,
        })
    };
    with_signing_session(
        authority,
        &ctx,
        p_passphrase_file.as_deref(),
        actor(p_operator.as_deref()),
        "issue",
        issue,
    )
    .await
}

/// `issue --renew NAME`: the checks that need no CA key, then [`crate::devices::renew`] in a
/// signing session.
async fn renew(ctx: Context, p: IssueParams, name: String) -> Result<IssueResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    let name = canonical_name(&name).map_err(error::core)?;
    if p.out.is_some() || p.force {
        return Err(error::fail(
            "--renew writes where the device's files already are and replaces only koi's own files; --out and --force do not apply.",
            format!(
                "Run `koi certmesh issue --renew {name}` without --out and --force (or `koi certmesh issue {name} --out DIR` for a new key elsewhere)."
            ),
        ));
    }
    let dns_names = if p.names.is_empty() {
        None
    } else {
        let mut v = Vec::new();
        for raw in &p.names {
            let n = canonical_name(raw).map_err(error::core)?;
            if n != name && !v.contains(&n) {
                v.push(n);
            }
        }
        Some(v)
    };
    let ip_addresses = if p.ip.is_empty() {
        None
    } else {
        let mut v = Vec::new();
        for text in &p.ip {
            v.push(text.parse::<IpAddr>().map_err(|_| {
                error::fail(
                    format!("--ip {text} is not an IP address."),
                    "Pass an IPv4 or IPv6 address, e.g. --ip 10.0.0.7.",
                )
            })?);
        }
        Some(v)
    };
    if let Some(days) = p.days {
        crate::devices::checked_days(Some(days), crate::devices::DEFAULT_DAYS)?;
    }
    let ask = crate::devices::RenewAsk {
        name,
        dns_names,
        ip_addresses,
        days: p.days,
    };
    let who = actor(p.operator.as_deref());
    let roster_path = layout.roster();
    with_signing_session(
        authority,
        &ctx,
        p.passphrase_file.as_deref(),
        who.clone(),
        "issue --renew",
        move |session: &mut CaSession| {
            crate::devices::renew(session, &layout, &roster_path, &who, ask)
        },
    )
    .await
}
