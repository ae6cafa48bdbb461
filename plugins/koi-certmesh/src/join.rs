//! `koi certmesh join [--ca HOST:PORT] [--fingerprint SHA256] [--code CODE] [--operator NAME]`:
//! enroll this machine in a mesh.
//!
//! 1. Find the CA: `--ca`, or `_certmesh._tcp` through koi-mdns (via the host).
//! 2. Pin it: fetch `/v1/certmesh/health`, show the root's SHA-256 for confirmation, or require
//!    it to equal `--fingerprint`. An mDNS-advertised fingerprint that disagrees is refused.
//! 3. Ask for the code (secret prompt) unless `--code` is given.
//! 4. Generate a P-256 key here and send only a CSR; the key never leaves this process except
//!    to `key.pem` (0600).
//! 5. Check the answer (our public key, the pinned root), write
//!    `certs/<hostname>/{cert,key,ca,fullchain}.pem` and `membership.json`, install the root into
//!    the trust stores.

use hyper::Method;
use koi_certmesh_core::normalize_fingerprint;
use koi_sdk::{Context, MethodError};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::app::App;
use crate::client::{self, Answer, CaEndpoint};
use crate::error::{self, Refusal};
use crate::files::{CertFiles, MEMBERSHIP_VERSION, Membership};
use crate::layout;
use crate::names;
use crate::tls::CaPin;
use crate::trust;
use crate::truststore::TrustReport;
use crate::wire::{HealthResponse, JoinRequest, JoinResponse, MeshInfo, SERVICE_TYPE};

/// Params of `join`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinParams {
    /// The CA's API address, HOST[:PORT] (default: find it with mDNS; port 5641).
    #[serde(default)]
    pub ca: Option<String>,
    /// The CA fingerprint to require (SHA-256 of its root, from `koi certmesh status` on the CA).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The six-digit code (for scripts; it works once). Asked for when absent.
    #[serde(default)]
    #[schemars(extend("x-koi-secret" = true))]
    pub code: Option<String>,
    /// Operator name for the CA's audit log.
    #[serde(default)]
    pub operator: Option<String>,
    /// Extra DNS name for this machine's certificate (repeatable; must be inside the scope).
    #[serde(default)]
    pub name: Vec<String>,
    /// Do not install the root into this machine's trust stores.
    #[serde(default)]
    pub no_trust: bool,
}

/// Result of `join`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JoinResult {
    /// The mesh joined.
    pub mesh: MeshInfo,
    /// The CA's API address used.
    pub ca: String,
    /// This machine's certificate files.
    pub certificate: CertFiles,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// Addresses the CA left out, each with the reason: outside the scope, or held by another
    /// entry.
    pub dropped_addresses: Vec<String>,
    /// Every name and address this machine's certificate holds, in one line: clients reach this
    /// machine over TLS by these and no others.
    pub certificate_holds: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
    /// Where the root was installed (absent with --no-trust).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustReport>,
}

/// A CA found through mDNS.
struct Found {
    endpoint: CaEndpoint,
    advertised_fingerprint: Option<String>,
    label: String,
}

/// The addresses of an mDNS answer this machine can dial: link-local ones (with a `%` zone) left
/// out, IPv4 before IPv6.
fn reachable_addresses(addresses: &Value) -> Vec<&str> {
    let mut addresses: Vec<&str> = addresses
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|a| !a.contains('%'))
        .collect();
    addresses.sort_by_key(|a| a.contains(':'));
    addresses
}

/// How long join waits for koi-mdns to answer a 3 s browse or resolve: a hung koi-mdns must not
/// hold a join until the host's call timeout.
const MDNS_ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Calls koi-mdns's `method` through the host, giving up after [`MDNS_ANSWER_LIMIT`] with the
/// code the host uses for a plugin that cannot answer.
async fn call_mdns(ctx: &Context, method: &str, params: &Value) -> Result<Value, MethodError> {
    match tokio::time::timeout(MDNS_ANSWER_LIMIT, ctx.call("mdns", method, params)).await {
        Ok(answer) => answer,
        Err(_) => Err(MethodError::with_code(
            koi_sdk::protocol::codes::PLUGIN_UNAVAILABLE,
            format!(
                "koi-mdns did not answer `{method}` within {} s",
                MDNS_ANSWER_LIMIT.as_secs()
            ),
        )),
    }
}

async fn discover(ctx: &Context) -> Result<Found, MethodError> {
    let answer: Value = call_mdns(
        ctx,
        "discover",
        &json!({"service_type": SERVICE_TYPE, "timeout": 3.0}),
    )
    .await
        .map_err(|e| {
            error::fail(
                format!("Could not look for a CA with mDNS: {}.", e.message()),
                "Pass the CA's address with --ca HOST:PORT (shown by `koi certmesh status` on the CA), or install koi-mdns.",
            )
        })?;
    let mut found = Vec::new();
    for service in answer["services"].as_array().into_iter().flatten() {
        // A standby CA advertises too, but only the primary enrolls.
        if service["txt"][crate::presence::ROLE_KEY].as_str() == Some(crate::presence::STANDBY) {
            continue;
        }
        let port = service["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        let addresses = reachable_addresses(&service["addresses"]);
        if let (Some(port), Some(address)) = (port, addresses.first()) {
            found.push(Found {
                endpoint: CaEndpoint {
                    host: (*address).to_owned(),
                    port,
                },
                advertised_fingerprint: service["txt"]["fp"].as_str().map(normalize_fingerprint),
                label: format!(
                    "{} ({address}:{port})",
                    service["instance"].as_str().unwrap_or("?")
                ),
            });
        }
    }
    match found.len() {
        0 => Err(error::fail(
            "No certmesh CA answered on the local network (mDNS, 3 s).",
            "Is `koi daemon` running on the CA with koi-mdns installed? Or pass --ca HOST:PORT.",
        )),
        1 => Ok(found.remove(0)),
        _ if !ctx.interactive() => Err(error::fail(
            format!(
                "{} certmesh CAs answered: {}.",
                found.len(),
                found
                    .iter()
                    .map(|f| f.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "Pick one with --ca HOST:PORT.",
        )),
        _ => {
            let labels: Vec<&str> = found.iter().map(|f| f.label.as_str()).collect();
            let (index, _) = ctx
                .choose("Several CAs answered. Join which?", &labels, Some(0))
                .await?;
            Ok(found.swap_remove(index.min(found.len() - 1)))
        }
    }
}

/// Learns (first contact) or checks (`--fingerprint`) the CA's fingerprint.
async fn pin_ca(
    ctx: &Context,
    found: &Found,
    given: Option<&str>,
) -> Result<(String, HealthResponse), MethodError> {
    let expected = given.map(normalize_fingerprint);
    if let Some(fp) = &expected
        && fp.len() != 64
    {
        return Err(error::fail(
            format!(
                "--fingerprint has {} hex digits; a SHA-256 fingerprint has 64.",
                fp.len()
            ),
            "Copy it from `koi certmesh status` on the CA.",
        ));
    }
    let pin = CaPin::new(expected.clone());
    let health = match client::request::<(), HealthResponse>(
        &found.endpoint,
        &pin,
        None,
        Method::GET,
        "/v1/certmesh/health",
        None,
    )
    .await?
    {
        Answer::Ok(h) => h,
        Answer::Refused { status, body } => {
            return Err(error::fail(
                format!(
                    "The CA at {} answered {status}: {}",
                    found.endpoint, body.error
                ),
                "Check `koi certmesh status` on that machine.",
            ));
        }
    };
    let seen = pin
        .seen_root()
        .map(|der| koi_certmesh_core::fingerprint_sha256(der.as_ref()))
        .ok_or_else(|| MethodError::new("The CA presented no root certificate."))?;
    if let Some(advertised) = &found.advertised_fingerprint
        && *advertised != seen
    {
        return Err(error::fail(
            format!(
                "The CA at {} presents fingerprint {seen}, but mDNS advertised {advertised}.",
                found.endpoint
            ),
            "Something on the network may be impersonating the CA. Compare with `koi certmesh status` on the CA and pass --ca and --fingerprint.",
        ));
    }
    if expected.is_none() {
        if !ctx.interactive() {
            return Err(ctx.no_terminal(
                &format!(
                    "The CA at {} presents fingerprint {seen}, which must be confirmed",
                    found.endpoint
                ),
                format!(
                    "Check it against `koi certmesh status` on the CA and pass --fingerprint {seen}, or run the command in a terminal to be asked."
                ),
            ));
        }
        let ok = ctx
            .confirm(
                &format!(
                    "The CA at {} presents fingerprint\n  {seen}\nDoes it match `koi certmesh status` on the CA?",
                    found.endpoint
                ),
                false,
            )
            .await?;
        if !ok {
            return Err(error::fail(
                "You did not confirm the CA's fingerprint; nothing was sent.",
                "Compare the fingerprint with `koi certmesh status` on the CA, then join again.",
            ));
        }
    }
    Ok((seen, health))
}

fn refused(
    endpoint: &CaEndpoint,
    ca_name: &str,
    status: u16,
    body: &crate::wire::ErrorBody,
) -> MethodError {
    if body.reason == Refusal::Locked.reason() {
        // The CA's own text tells its operator to unlock; on this machine that command cannot
        // work (it is not the CA), so the member is told whom to ask.
        return error::fail(
            format!(
                "The certmesh CA {ca_name} at {endpoint} is locked: its key stays sealed until its \
                 operator unlocks it, so it cannot enroll this machine ({status}). Nothing was \
                 changed here."
            ),
            format!(
                "Ask the operator of {ca_name} to run `koi certmesh unlock` on {ca_name}, then run \
                 `koi certmesh join` here again with a fresh code."
            ),
        );
    }
    MethodError::new(format!(
        "The certmesh CA {ca_name} at {endpoint} refused to enroll this machine ({status}): {}",
        body.error
    ))
}

/// How a typed or passed code fails the six-digit format (without repeating the code), or
/// `None` when it is six ASCII digits. Spaces are ignored (apps show `123 456`).
pub fn code_problem(code: &str) -> Option<String> {
    let digits = koi_certmesh_core::totp::DIGITS;
    let n = code.chars().count();
    if !code.chars().all(|c| c.is_ascii_digit()) {
        Some(format!(
            "has {n} character(s), not all digits; a code is {digits} digits"
        ))
    } else if n != digits {
        Some(format!("has {n} digit(s); a code is {digits} digits"))
    } else {
        None
    }
}

/// The code without the spaces an authenticator app shows in it.
fn normalize_code(code: &str) -> Zeroizing<String> {
    Zeroizing::new(code.chars().filter(|c| !c.is_whitespace()).collect())
}

/// Typed codes with the wrong format are asked for again, at most this many times in all.
const CODE_TRIES: usize = 3;

/// Asks for the code at the terminal until one has the six-digit format.
pub(crate) async fn ask_code(ctx: &Context) -> Result<Zeroizing<String>, MethodError> {
    for _ in 0..CODE_TRIES {
        let typed = ctx
            .secret(
                "Enrollment code (six digits from the authenticator app)",
                false,
            )
            .await?;
        let code = normalize_code(&typed);
        match code_problem(&code) {
            None => return Ok(code),
            Some(problem) => ctx.show_text(&format!(
                "That code {problem}. Nothing was sent to the CA; type the code again."
            )),
        }
    }
    Err(error::fail(
        format!("{CODE_TRIES} codes in a row were not six digits; nothing was sent to the CA."),
        "Run `koi certmesh join` again and type the six digits the authenticator app shows.",
    ))
}

/// Where to connect for `--ca`: an address as given; a `.local` name resolved through koi-mdns
/// (via the host: the system resolver often has no mDNS); any other name looked up now, so a
/// name that does not resolve gets its own error instead of an "unreachable" one.
async fn resolve_ca(ctx: &Context, given: CaEndpoint) -> Result<CaEndpoint, MethodError> {
    if given.host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(given);
    }
    let lower = given.host.to_ascii_lowercase();
    if !lower.trim_end_matches('.').ends_with(".local") {
        let found = tokio::net::lookup_host((given.host.as_str(), given.port))
            .await
            .map(|mut addrs| addrs.next().is_some())
            .unwrap_or(false);
        if found {
            return Ok(given);
        }
        return Err(error::fail(
            format!(
                "The CA name {} does not resolve on this machine (DNS has no address for it).",
                given.host
            ),
            "Pass the CA's address with --ca ADDR (`koi certmesh status` on the CA shows it), \
                 or its mDNS name: --ca HOST.local.",
        ));
    }
    let answer: Value = call_mdns(ctx, "resolve", &json!({"host": given.host, "timeout": 3.0}))
        .await
        .map_err(|e| {
            if e.code() < 0 {
                error::fail(
                    format!(
                        "Cannot resolve {} through koi-mdns: {}",
                        given.host,
                        e.message()
                    ),
                    "Install koi-mdns beside koi (`koi plugins list` shows where plugins are \
                     looked for), or pass the CA's address with --ca ADDR.",
                )
            } else {
                error::fail(
                    format!(
                        "No machine answered for {} over mDNS: {}",
                        given.host,
                        e.message()
                    ),
                    format!(
                        "Check the name with `koi mdns resolve {}` (the CA's `koi certmesh status` \
                         shows its host name) and that the CA is on this link; or pass its \
                         address with --ca ADDR.",
                        given.host
                    ),
                )
            }
        })?;
    let addresses = reachable_addresses(&answer["addresses"]);
    let address = addresses.first().ok_or_else(|| {
        error::fail(
            format!(
                "{} answered over mDNS with no address this machine can reach (only link-local ones).",
                given.host
            ),
            "Pass the CA's address with --ca ADDR (`koi certmesh status` on the CA shows it).",
        )
    })?;
    Ok(CaEndpoint {
        host: (*address).to_owned(),
        port: given.port,
    })
}

/// The `join` method.
pub async fn run(ctx: Context, p: JoinParams) -> Result<JoinResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    if layout.is_ca() {
        return Err(error::fail(
            "This machine is a certmesh CA; it is already in its own mesh.",
            "Join from another machine.",
        ));
    }
    // A code that cannot be one is caught here: sent, it would cost an attempt at the CA.
    let mut given_code = p.code.as_deref().map(normalize_code);
    if let Some(problem) = given_code.as_deref().and_then(|c| code_problem(c)) {
        if !ctx.interactive() {
            return Err(error::fail(
                format!("--code {problem}. Nothing was sent to the CA, so no attempt was counted."),
                "Pass the six digits the authenticator app shows now with --code.",
            ));
        }
        ctx.show_text(&format!(
            "--code {problem}; you will be asked for the code instead."
        ));
        given_code = None;
    }
    let _writer = authority.writer_for_command()?;
    let hostname = layout::hostname()?;
    let found = match &p.ca {
        Some(text) => Found {
            endpoint: resolve_ca(&ctx, CaEndpoint::parse(text)?).await?,
            advertised_fingerprint: None,
            label: text.clone(),
        },
        None => discover(&ctx).await?,
    };
    let existing = Membership::load(&layout)?;
    // A locked CA is not pre-checked here: the CA itself refuses (503) and audits the attempt.
    let (fingerprint, health) = pin_ca(&ctx, &found, p.fingerprint.as_deref()).await?;
    if let Some(existing) = existing.filter(|m| m.ca_fingerprint != fingerprint) {
        return Err(error::fail(
            format!(
                "This machine is already a member of another mesh (CA fingerprint {}).",
                existing.ca_fingerprint
            ),
            format!(
                "To move to the mesh at {}, leave the current one first (`koi certmesh leave`), \
                 then run `koi certmesh join` again.",
                found.endpoint
            ),
        ));
    }
    let mut operator = p.operator.clone();
    if operator.is_none() && ctx.interactive() && health.mesh.profile != "personal" {
        let typed = ctx
            .prompt("Operator name (for the CA's audit log)", None)
            .await?;
        operator = Some(typed.trim().to_owned()).filter(|o| !o.is_empty());
    }
    let code: Zeroizing<String> = match given_code {
        Some(c) => c,
        None if ctx.interactive() => ask_code(&ctx).await?,
        None => {
            return Err(ctx.no_terminal(
                "The enrollment code is needed",
                "Pass --code CODE (it works once), or run the command in a terminal to be asked.",
            ));
        }
    };

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| MethodError::new(format!("Failed to generate this machine's key: {e}")))?;
    let csr = CertificateParams::new(vec![hostname.clone()])
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| MethodError::new(format!("Failed to build the certificate request: {e}")))?;
    let request = JoinRequest {
        hostname: hostname.clone(),
        code,
        csr_pem: csr,
        ip_addresses: names::lan_addresses(),
        extra_names: p.name.clone(),
        operator: operator.clone(),
    };
    let pin = CaPin::new(Some(fingerprint.clone()));
    let answer = client::request::<JoinRequest, JoinResponse>(
        &found.endpoint,
        &pin,
        None,
        Method::POST,
        "/v1/certmesh/join",
        Some(&request),
    )
    .await?;
    let issued = match answer {
        Answer::Ok(a) => a,
        Answer::Refused { status, body } => {
            return Err(refused(
                &found.endpoint,
                &health.mesh.primary,
                status,
                &body,
            ));
        }
    };
    if crate::x509::public_key(&issued.cert_pem).as_deref() != Some(key.public_key_raw()) {
        return Err(MethodError::new(format!(
            "The CA at {} returned a certificate for a different key; nothing was written.",
            found.endpoint
        )));
    }
    if crate::x509::fingerprint(&issued.ca_pem).as_deref() != Some(fingerprint.as_str()) {
        return Err(MethodError::new(format!(
            "The CA at {} returned a root that is not the one pinned; nothing was written.",
            found.endpoint
        )));
    }
    let key_pem = Zeroizing::new(key.serialize_pem());
    drop(key);
    let files = CertFiles::at(&layout, &hostname);
    // Four files and membership.json, each written and fsynced: off the protocol workers.
    let membership = Membership {
        version: MEMBERSHIP_VERSION,
        hostname: hostname.clone(),
        role: "member".into(),
        ca_fingerprint: fingerprint.clone(),
        ca_endpoint: Some(found.endpoint.to_string()),
        profile: issued.mesh.profile.clone(),
        zone: issued.mesh.zone.clone(),
        joined_at: names::rfc3339(OffsetDateTime::now_utc()),
        serial: issued.serial.clone(),
        expires_at: issued.expires_at.clone(),
        dns_names: issued.dns_names.clone(),
        ip_addresses: issued.ip_addresses.clone(),
        operator,
        ca_name: Some(issued.mesh.primary.clone()),
    };
    {
        let files = files.clone();
        let (cert_pem, ca_pem) = (issued.cert_pem.clone(), issued.ca_pem.clone());
        let dir = layout.dir();
        ctx.blocking("join", move || {
            files.write(&cert_pem, &key_pem, &ca_pem)?;
            membership.save_in(&dir)
        })
        .await?;
    }
    let trust = if p.no_trust {
        None
    } else {
        Some(trust::install_root(&ctx, &layout, &fingerprint).await?)
    };
    let certificate_holds = issued
        .dns_names
        .iter()
        .chain(&issued.ip_addresses)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    Ok(JoinResult {
        certificate_holds,
        mesh: issued.mesh,
        ca: found.endpoint.to_string(),
        certificate: files,
        dns_names: issued.dns_names,
        ip_addresses: issued.ip_addresses,
        dropped_addresses: issued.dropped_addresses,
        expires_at: issued.expires_at,
        trust,
    })
}
