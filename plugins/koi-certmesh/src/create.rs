//! `koi certmesh create`: make this machine the CA of a new mesh.
//!
//! The mesh state is built in `certmesh.creating/` and renamed to `certmesh/` in one step, so a
//! crash (even `kill -9`) leaves either no mesh or a whole one; a leftover staging directory is
//! removed by the next `create`. (This machine's own certificate files, in `certs/<host>/`, are
//! written just before the rename; after a crash the next `create` overwrites them.) Order inside: the sealed vault (Argon2id → AES-256-GCM; no plaintext key
//! ever reaches disk), the first audit entry (`pond_initialized`), this machine's own certificate
//! (it enrolls itself as the `primary` member), the roster, then the rename. Afterwards the root
//! goes into this machine's trust stores, the enrollment QR code is shown through the host, and
//! under `koi daemon` the CA stays unlocked and starts answering joins.

use koi_certmesh_core::atomic::ensure_private_dir;
use koi_certmesh_core::audit::events;
use koi_certmesh_core::profiles::Requirement;
use koi_certmesh_core::{
    AuditLog, CaOptions, CaStore, CertAuthority, KdfParams, Member, Passphrase, Role, Roster,
    Scope, TotpSecret, TrustProfile,
};
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::app::{App, actor};
use crate::authority::CaSession;
use crate::entropy::{self, EntropySource};
use crate::error;
use crate::files::{CertFiles, MEMBERSHIP_VERSION, Membership};
use crate::layout::{self, Layout};
use crate::names;
use crate::trust;
use crate::truststore::TrustReport;
use crate::wire::{MeshInfo, ScopeView};

/// Trust profile choices on the command line.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProfileChoice {
    /// One person's machines: enrollment open, no approval.
    Personal,
    /// A small team: enrollment closed until opened, operator asked.
    Team,
    /// An institution: scope and operator required.
    Organization,
}

impl From<ProfileChoice> for TrustProfile {
    fn from(p: ProfileChoice) -> Self {
        match p {
            ProfileChoice::Personal => TrustProfile::Personal,
            ProfileChoice::Team => TrustProfile::Team,
            ProfileChoice::Organization => TrustProfile::Organization,
        }
    }
}

/// Params of `create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Trust profile (asked at a terminal; `personal` otherwise).
    #[serde(default)]
    pub profile: Option<ProfileChoice>,
    /// Operator name, written to the audit log (required by `organization`).
    #[serde(default)]
    pub operator: Option<String>,
    /// Permitted DNS domain (repeatable); becomes an X.509 name constraint and the name zone
    /// (default: lan, home.arpa and local).
    #[serde(default)]
    pub domain: Vec<String>,
    /// Permitted subnet in CIDR form (repeatable), e.g. 10.77.0.0/24.
    #[serde(default)]
    pub subnet: Vec<String>,
    /// Extra entropy for the CA key, mixed with the OS RNG (default: mash at a terminal, system otherwise).
    #[serde(default)]
    pub entropy: Option<EntropySource>,
    /// Read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
    /// Do not install the root into this machine's trust stores.
    #[serde(default)]
    pub no_trust: bool,
    /// Make a root without name constraints (dangerous: a leaked key could sign for any website).
    #[serde(default)]
    pub unconstrained: bool,
    /// Let members renew a certificate that already expired (at most 30 days ago, still their
    /// roster's current one). Default off: an expired member joins again with a code.
    #[serde(default)]
    pub allow_expired_renewal: bool,
}

/// What `create --unconstrained` prints: what a leaked CA key could then do.
pub const UNCONSTRAINED_WARNING: &str = "WARNING: this mesh's root is UNCONSTRAINED. Anyone who \
obtains the CA key (its vault and passphrase) can sign certificates for ANY name — any website, \
bank or mail server, `localhost`, any public address — and every machine that trusts this mesh \
will accept them. Without --unconstrained the root is limited to lan, home.arpa, local and \
private addresses (or to your --domain/--subnet).";

/// Result of `create`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreateResult {
    /// The new mesh.
    pub mesh: MeshInfo,
    /// Permitted domains and subnets (empty domains = any name, private addresses only).
    pub scope: ScopeView,
    /// Whether the root constrains no DNS names (`--unconstrained`).
    pub unconstrained: bool,
    /// Whether members may join now.
    pub enrollment_open: bool,
    /// The enrollment secret as an otpauth URI (the same secret the QR code shows). Keep it private.
    #[schemars(extend("x-koi-secret" = true))]
    pub otpauth_uri: String,
    /// This machine's own certificate files.
    pub certificate: CertFiles,
    /// When this machine's certificate expires.
    pub expires_at: String,
    /// Where the root was installed (absent with --no-trust).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustReport>,
    /// Whether the CA is unlocked and answering joins now (under `koi daemon`).
    pub serving: bool,
    /// What to do next.
    pub next: Vec<String>,
}

/// The enrollment secret as an otpauth URI: issuer `Koi certmesh`, account the CA's host name.
/// `create` and `rotate-secret` both show exactly this.
pub(crate) fn enrollment_uri(
    secret: &TotpSecret,
    ca_hostname: &str,
) -> Result<Zeroizing<String>, MethodError> {
    secret
        .otpauth_uri("Koi certmesh", ca_hostname)
        .map_err(error::core)
}

/// Shows the enrollment QR code through the host (`create` and `rotate-secret`); the URI itself
/// goes in the result's `otpauth_uri`, a field marked `x-koi-secret`.
pub(crate) fn show_enrollment_code(ctx: &Context, uri: &str) {
    ctx.show_qr(
        uri,
        Some("Scan with an authenticator app: its six-digit codes let machines join this mesh"),
    );
}

/// Refuses to touch an existing mesh or membership.
fn refuse_existing(layout: &Layout) -> Result<(), MethodError> {
    if layout.is_ca() {
        let fp = Roster::load(&layout.roster())
            .map(|r| r.mesh.ca_fingerprint)
            .unwrap_or_else(|_| "unreadable roster".into());
        return Err(error::fail(
            format!(
                "This machine is already the CA of a mesh (CA fingerprint {fp}). Nothing was changed."
            ),
            format!(
                "If `create` was interrupted before it showed the enrollment code, or the code is \
                 lost, run `koi certmesh rotate-secret` for a new one (members keep their \
                 certificates). To start over instead, run `koi certmesh leave` first (it \
                 destroys this CA and keeps its audit log under {}).",
                layout.home().join("certmesh-left").display()
            ),
        ));
    }
    if let Some(m) = Membership::load(layout)? {
        return Err(error::fail(
            format!(
                "This machine is a member of the mesh with CA fingerprint {}; it cannot also create one.",
                m.ca_fingerprint
            ),
            "Leave that mesh first with `koi certmesh leave`, then run `koi certmesh create` again.",
        ));
    }
    if let Ok(mut entries) = std::fs::read_dir(layout.dir())
        && entries.next().is_some()
    {
        return Err(error::fail(
            format!(
                "{} exists and is not empty, but holds no mesh.",
                layout.dir().display()
            ),
            "Move it away (or empty it) and run `koi certmesh create` again.",
        ));
    }
    Ok(())
}

async fn choose_profile(
    ctx: &Context,
    given: Option<ProfileChoice>,
) -> Result<TrustProfile, MethodError> {
    if let Some(p) = given {
        return Ok(p.into());
    }
    if !ctx.interactive() {
        return Ok(TrustProfile::Personal);
    }
    let (index, _) = ctx
        .choose(
            "Who is this mesh for?",
            &[
                "personal — my own machines (enrollment open, no approval)",
                "team — a small office (enrollment opened when needed, operator asked)",
                "organization — an institution (scope and operator required)",
            ],
            Some(0),
        )
        .await?;
    Ok(TrustProfile::ALL
        .get(index)
        .copied()
        .unwrap_or(TrustProfile::Personal))
}

async fn choose_operator(
    ctx: &Context,
    profile: TrustProfile,
    given: Option<String>,
) -> Result<Option<String>, MethodError> {
    let given = given.map(|o| o.trim().to_owned()).filter(|o| !o.is_empty());
    if given.is_some() || !profile.defaults().prompts_for_operator || !ctx.interactive() {
        return Ok(given);
    }
    let typed = ctx
        .prompt("Operator name (written to the audit log)", None)
        .await?;
    Ok(Some(typed.trim().to_owned()).filter(|o| !o.is_empty()))
}

/// What the blocking part built.
struct Built {
    roster: Roster,
    files: CertFiles,
    expires_at: String,
    otpauth_uri: Zeroizing<String>,
}

/// What `create` was asked for, once validated.
struct Plan {
    hostname: String,
    profile: TrustProfile,
    operator: Option<String>,
    scope: Scope,
    pass: Passphrase,
    source: EntropySource,
    entropy: Option<Zeroizing<Vec<u8>>>,
    allow_expired_renewal: bool,
}

/// Everything inside the staging directory, then the rename.
fn build(layout: &Layout, plan: Plan) -> Result<Built, MethodError> {
    let Plan {
        hostname,
        profile,
        operator,
        scope,
        pass,
        source,
        entropy,
        allow_expired_renewal,
    } = plan;
    let (hostname, operator, pass) = (hostname.as_str(), operator.as_deref(), &pass);
    let staging = layout.staging_dir();
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            error::fail(
                format!("Failed to remove the leftover {}: {e}.", staging.display()),
                "Remove it by hand and run `koi certmesh create` again.",
            )
        })?;
    }
    ensure_private_dir(layout.home()).map_err(error::core)?;
    ensure_private_dir(&staging).map_err(error::core)?;
    let now = OffsetDateTime::now_utc();
    let who = actor(operator);

    let mut options = CaOptions::new(format!("Koi certmesh CA ({hostname})"), scope.clone());
    options.extra_entropy = entropy;
    let ca = CertAuthority::create(&options, now).map_err(error::core)?;
    let totp = TotpSecret::generate();
    let otpauth_uri = enrollment_uri(&totp, hostname)?;
    let unlocked = CaStore::new(Layout::ca_dir_in(&staging))
        .create(ca, totp, pass, KdfParams::RECOMMENDED)
        .map_err(error::core)?;
    let ca = unlocked.ca();
    let mut roster = Roster::new(
        profile,
        ca.fingerprint(),
        scope,
        hostname.to_owned(),
        operator.map(str::to_owned),
        now,
    );
    roster.mesh.allow_expired_renewal = allow_expired_renewal;
    let mut audit = AuditLog::open(&staging.join("audit.log"), ca).map_err(error::core)?;
    audit
        .append(
            ca,
            events::POND_INITIALIZED,
            &who,
            json!({
                "hostname": hostname,
                "profile": profile.as_str(),
                "operator": operator,
                "ca_fingerprint": ca.fingerprint(),
                "scope": roster.mesh.scope,
                "unconstrained": roster.mesh.scope.dns_unconstrained(),
                "enrollment": roster.mesh.enrollment,
                "entropy": source.as_str(),
                "allow_expired_renewal": allow_expired_renewal,
            }),
            now,
        )
        .map_err(error::core)?;

    let zone = names::zone_of(&roster);
    let (mut leaf, _) =
        crate::leaf::leaf_request(ca.scope(), &zone, hostname, &[], &names::lan_addresses())
            .map_err(|r| MethodError::new(r.to_string()))?;
    // Debug builds only (tests of the API certificate's renewal, crate::ca_renew).
    leaf.validity = crate::clock::ca_cert_lifetime();
    let own = ca.issue_for_device(&leaf, now).map_err(error::core)?;
    let files = CertFiles::at(layout, hostname);
    files.write(&own.cert.cert_pem, &own.key_pem, &own.cert.ca_pem)?;
    let expires_at = names::rfc3339(own.cert.not_after);
    audit
        .append(
            ca,
            events::MEMBER_ENROLLED,
            &who,
            json!({
                "hostname": hostname,
                "role": "primary",
                "serial": own.cert.serial_hex,
                "fingerprint": own.cert.fingerprint,
                "dns_names": own.cert.dns_names,
                "ip_addresses": own.cert.ip_addresses,
                "expires_at": expires_at,
            }),
            now,
        )
        .map_err(error::core)?;
    roster.upsert(Member::from_issued(
        hostname,
        &own.cert,
        Role::Primary,
        operator.map(str::to_owned),
    ));
    roster.mesh.audit_head = audit.head();
    roster
        .save(&staging.join("roster.json"))
        .map_err(error::core)?;
    Membership {
        version: MEMBERSHIP_VERSION,
        hostname: hostname.to_owned(),
        role: "primary".into(),
        ca_fingerprint: roster.mesh.ca_fingerprint.clone(),
        ca_endpoint: None,
        profile: profile.as_str().into(),
        zone,
        joined_at: names::rfc3339(now),
        serial: own.cert.serial_hex.clone(),
        expires_at: expires_at.clone(),
        dns_names: own.cert.dns_names.clone(),
        ip_addresses: own
            .cert
            .ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        operator: operator.map(str::to_owned),
        ca_name: None,
    }
    .save_in(&staging)?;
    drop(audit);
    drop(unlocked);
    publish(&staging, &layout.dir())?;
    Ok(Built {
        roster,
        files,
        expires_at,
        otpauth_uri,
    })
}

/// Makes the staging directory the live one in one rename, durably.
fn publish(staging: &Path, live: &Path) -> Result<(), MethodError> {
    // A directory moved whole: koi_sdk::store writes files, so only its fsync is used here.
    let sync = |dir: &Path| {
        koi_sdk::store::sync_dir(dir).map_err(|e| {
            error::fail(
                format!(
                    "Failed to flush {}: {}.",
                    dir.display(),
                    std::io::Error::from(e)
                ),
                "Check the disk.",
            )
        })
    };
    sync(staging)?;
    std::fs::rename(staging, live).map_err(|e| {
        error::fail(
            format!("Failed to move {} into place: {e}.", staging.display()),
            "Check the permissions of KOI_HOME and run `koi certmesh create` again.",
        )
    })?;
    if let Some(parent) = live.parent() {
        sync(parent)?;
    }
    Ok(())
}

/// The `create` method.
pub async fn run(ctx: Context, p: CreateParams) -> Result<CreateResult, MethodError> {
    let app = App::of(&ctx)?;
    let authority = app.authority();
    let layout = authority.layout().clone();
    if ctx.mode() == RunMode::Daemon {
        authority.hold_writer_lock()?;
    }
    let _writer = authority.writer_for_command()?;
    refuse_existing(&layout)?;
    let hostname = layout::hostname()?;
    // The flags are checked before any question, so a bad command line asks nothing.
    let scope = Scope::for_create(&p.domain, &p.subnet, p.unconstrained).map_err(error::core)?;
    // The profile judges what the user asked for; the default scope is applied after.
    let asked = Scope::new(&p.domain, &p.subnet).map_err(error::core)?;
    let profile = choose_profile(&ctx, p.profile).await?;
    // Everything missing that will not be asked for is reported at once, before the question.
    let given = p.operator.as_deref().filter(|o| !o.trim().is_empty());
    let mut missing = profile.missing(&asked, given);
    if given.is_none() && profile.defaults().prompts_for_operator && ctx.interactive() {
        missing.retain(|r| *r != Requirement::Operator);
    }
    profile.refuse(&missing).map_err(error::core)?;
    let operator = choose_operator(&ctx, profile, p.operator).await?;
    profile
        .check_create(&asked, operator.as_deref())
        .map_err(error::core)?;
    if p.unconstrained {
        ctx.show_text(UNCONSTRAINED_WARNING);
    }
    let pass = crate::secrets::passphrase(&ctx, p.passphrase_file.as_deref(), true).await?;
    let source = p
        .entropy
        .unwrap_or_else(|| EntropySource::default_for(&ctx));
    let extra = entropy::collect(&ctx, source).await?;
    ctx.progress("Sealing the CA key (Argon2id, 64 MiB)…", None, None);

    let plan = Plan {
        hostname,
        profile,
        operator: operator.clone(),
        scope,
        pass: pass.clone(),
        source,
        entropy: extra,
        allow_expired_renewal: p.allow_expired_renewal,
    };
    let serve = ctx.mode() == RunMode::Daemon;
    // Argon2id (64 MiB) twice and the first signatures: seconds of CPU, off the protocol workers.
    // Under the daemon the new session is installed there too (installing signs pending entries).
    let (built, serving) = {
        let layout = layout.clone();
        let authority = authority.clone();
        ctx.blocking("create", move || {
            let built = build(&layout, plan)?;
            let serving = if serve {
                let session =
                    CaSession::open(&layout, &pass, &actor(operator.as_deref()), "create")?.0;
                authority.install(session);
                true
            } else {
                false
            };
            Ok((built, serving))
        })
        .await?
    };
    if serving {
        app.mesh_created.notify_one();
    }

    let trust = if p.no_trust {
        None
    } else {
        Some(trust::install_root(&ctx, &layout, &built.roster.mesh.ca_fingerprint).await?)
    };
    show_enrollment_code(&ctx, &built.otpauth_uri);
    let mut next = Vec::new();
    if !serving {
        next.push(
            "Start `koi daemon` and run `koi certmesh unlock` so other machines can join.".into(),
        );
    }
    next.push("On another machine: `koi certmesh join` and type the code the app shows.".into());
    let enrollment_open = built
        .roster
        .mesh
        .enrollment
        .is_open(OffsetDateTime::now_utc());
    if !enrollment_open {
        next.push(format!(
            "Enrollment starts closed for the {} profile: open it with `koi certmesh open-enrollment`.",
            built.roster.mesh.profile
        ));
    }
    Ok(CreateResult {
        mesh: MeshInfo::of(&built.roster),
        scope: ScopeView::of(&built.roster.mesh.scope),
        unconstrained: built.roster.mesh.scope.dns_unconstrained(),
        enrollment_open,
        otpauth_uri: built.otpauth_uri.to_string(),
        certificate: built.files,
        expires_at: built.expires_at,
        trust,
        serving,
        next,
    })
}
