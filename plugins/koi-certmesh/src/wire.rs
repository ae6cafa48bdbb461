//! The inter-node API's JSON bodies (`/v1/certmesh/*`), shared by the CA's server and the
//! member's client so both sides agree by construction. Request bodies refuse unknown fields.

use std::net::IpAddr;

use koi_certmesh_core::Roster;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The API version in `/v1/...` and in health answers.
pub const API_VERSION: u32 = 1;
/// The default port of the inter-node API.
pub const DEFAULT_API_PORT: u16 = 5641;
/// The mDNS service type the CA advertises.
pub const SERVICE_TYPE: &str = "_certmesh._tcp";
/// Largest request body the CA reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /v1/certmesh/join`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The member's host name (one DNS label).
    pub hostname: String,
    /// The six-digit enrollment code. Never logged.
    pub code: Zeroizing<String>,
    /// PKCS#10 request (PEM) signed by the member's own new P-256 key.
    pub csr_pem: String,
    /// The member's private LAN addresses (kept when inside the scope).
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    /// Extra DNS names asked for (refused if outside the scope).
    #[serde(default)]
    pub extra_names: Vec<String>,
    /// Who is enrolling the machine.
    #[serde(default)]
    pub operator: Option<String>,
}

/// Mesh facts a member is told.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MeshInfo {
    /// SHA-256 of the root certificate.
    pub ca_fingerprint: String,
    /// Trust profile.
    pub profile: String,
    /// Zone of `host.<zone>` names.
    pub zone: String,
    /// Host name of the primary CA.
    pub primary: String,
    /// The roster's version as the heartbeat reports it: the sequence number of the last audit
    /// entry the roster records (every roster change is audited, so it grows with each change;
    /// 0 before the first). Absent (read as 0) in answers from CAs older than the heartbeat.
    #[serde(default)]
    pub roster_version: u64,
    /// The scope's DNS domains (empty: any name), for `certmesh/members`' `zone_hint` on
    /// members. Absent in answers from CAs older than `certmesh/members`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// The primary's term (1 for the CA that created the mesh; [`crate::standby`]). Absent (read
    /// as 1) in answers from CAs older than the standby CA.
    #[serde(default = "koi_certmesh_core::roster::first_term")]
    pub term: u64,
}

impl MeshInfo {
    /// From the CA's roster.
    pub fn of(roster: &Roster) -> Self {
        MeshInfo {
            ca_fingerprint: roster.mesh.ca_fingerprint.clone(),
            profile: roster.mesh.profile.to_string(),
            zone: crate::names::zone_of(roster),
            primary: roster.mesh.primary.clone(),
            roster_version: roster.mesh.audit_head.as_ref().map_or(0, |h| h.seq),
            domains: roster.mesh.scope.domains.clone(),
            term: roster.mesh.term,
        }
    }
}

/// Answer to a successful join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// Host name certified.
    pub hostname: String,
    /// The leaf (PEM).
    pub cert_pem: String,
    /// The root (PEM).
    pub ca_pem: String,
    /// Serial (hex).
    pub serial: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// Addresses left out, each with the reason: outside the scope, or held by another entry.
    pub dropped_addresses: Vec<String>,
    /// The mesh.
    pub mesh: MeshInfo,
}

impl JoinResponse {
    /// The answer for `hostname`'s new certificate `issued` (from join or renewal), with the
    /// addresses left out of it and the mesh as `roster` now describes it.
    pub fn new(
        hostname: &str,
        issued: koi_certmesh_core::issue::IssuedCert,
        dropped_addresses: Vec<String>,
        roster: &koi_certmesh_core::roster::Roster,
    ) -> Self {
        Self {
            hostname: hostname.to_owned(),
            serial: issued.serial_hex,
            expires_at: crate::names::rfc3339(issued.not_after),
            dns_names: issued.dns_names,
            ip_addresses: issued
                .ip_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            dropped_addresses,
            cert_pem: issued.cert_pem,
            ca_pem: issued.ca_pem,
            mesh: MeshInfo::of(roster),
        }
    }
}

/// `GET /v1/certmesh/health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HealthResponse {
    /// Always `ok` when the API answers.
    pub status: String,
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Whether the CA key is sealed (joins are refused until `koi certmesh unlock`).
    pub locked: bool,
    /// Whether enrollment is open.
    pub enrollment_open: bool,
    /// The mesh.
    pub mesh: MeshInfo,
}

/// A member as `GET /v1/certmesh/roster` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RosterMember {
    /// Host name.
    pub hostname: String,
    /// `primary`, `member` or `device`.
    pub role: String,
    /// `active`, `pending` or `revoked`.
    pub status: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// Serial (hex).
    pub serial: String,
    /// Certificate fingerprint.
    pub fingerprint: String,
    /// Issued (RFC 3339).
    pub issued_at: String,
    /// Expires (RFC 3339).
    pub expires_at: String,
}

impl RosterMember {
    /// The public view of every roster member.
    pub fn all(roster: &Roster) -> Vec<Self> {
        roster
            .members
            .iter()
            .map(|m| RosterMember {
                hostname: m.hostname.clone(),
                role: serde_name(&m.role),
                status: serde_name(&m.status),
                dns_names: m.dns_names.clone(),
                ip_addresses: m.ip_addresses.iter().map(ToString::to_string).collect(),
                serial: m.serial.clone(),
                fingerprint: m.fingerprint.clone(),
                issued_at: crate::names::rfc3339(m.issued_at),
                expires_at: crate::names::rfc3339(m.expires_at),
            })
            .collect()
    }
}

/// The serde name of a unit enum variant (`Role::Primary` → `primary`).
pub fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `GET /v1/certmesh/roster`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RosterResponse {
    /// The mesh.
    pub mesh: MeshInfo,
    /// Its members.
    pub members: Vec<RosterMember>,
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short machine-readable reason (`bad_code`, `ca_locked`, …).
    pub reason: String,
    /// What went wrong and what to do next.
    pub error: String,
}

/// A mesh's scope as shown to users.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ScopeView {
    /// Permitted DNS domains (empty: any host name).
    pub domains: Vec<String>,
    /// Permitted subnets (empty: any private LAN address).
    pub subnets: Vec<String>,
}

impl ScopeView {
    /// From the core scope.
    pub fn of(scope: &koi_certmesh_core::Scope) -> Self {
        ScopeView {
            domains: scope.domains.clone(),
            subnets: scope.subnets.iter().map(ToString::to_string).collect(),
        }
    }
}
