//! A member renews its certificate: `koi certmesh renew [--now] [--keep-key]`, and the daemon's
//! renewal service ([`crate::schedule`]) through the same [`renew_once`].
//!
//! One renewal: roll forward any renewal a crash interrupted ([`crate::renew_files::finish`]);
//! make a CSR for a fresh P-256 key (or the current key with `--keep-key`); `POST
//! /v1/certmesh/renew` to the CA recorded at join, over mutual TLS with the current certificate
//! and the pinned root; check the answer (our key, the pinned root); install the files
//! atomically ([`crate::renew_files`]); publish [`CERT_RENEWED`]; record the result
//! ([`crate::schedule::record`]); then run the reload hook ([`crate::hooks`]) — in the daemon as a
//! task of its own, so the renewal never waits for it.

use hyper::Method;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use std::sync::Arc;

use crate::app::App;
use crate::authority::Authority;
use crate::client::{self, Answer, CaEndpoint};
use crate::error;
use crate::files::{CertFiles, Membership};
use crate::hooks::HookRun;
use crate::layout::Layout;
use crate::renew_api::RenewRequest;
use crate::tls::CaPin;
use crate::wire::JoinResponse;

/// The event published after a renewed certificate is in place.
pub const CERT_RENEWED: &str = "certmesh.cert.renewed";

/// One renewal at a time in this process (the service and the verb).
pub(crate) static RENEWING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Payload of [`CERT_RENEWED`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CertRenewed {
    /// This machine's host name as certified.
    pub host: String,
    /// The certificate files (same paths as before; new contents).
    pub paths: CertFiles,
    /// The new certificate's serial (hex).
    pub serial: String,
    /// Every DNS name and address the new certificate holds.
    pub names: Vec<String>,
    /// Its expiry (RFC 3339).
    pub not_after: String,
}

/// Params of `renew`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewParams {
    /// Renew now even if the certificate is not yet due (without it, renews only when due).
    #[serde(default)]
    pub now: bool,
    /// Keep the current key (default: a fresh key, so the key rotates).
    #[serde(default)]
    pub keep_key: bool,
}

/// Result of `renew`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RenewResult {
    /// Whether a renewal happened (false: not due yet, and no --now).
    pub renewed: bool,
    /// The serial before.
    pub old_serial: String,
    /// The serial now.
    pub serial: String,
    /// The expiry before (RFC 3339).
    pub old_not_after: String,
    /// The expiry now (RFC 3339).
    pub not_after: String,
    /// Whether the key changed.
    pub key_changed: bool,
    /// The names and addresses the certificate holds.
    pub names: Vec<String>,
    /// When the next renewal is due (RFC 3339).
    pub next_renewal_at: Option<String>,
    /// The reload hook: its run (one-shot), `started` (daemon), or absent when none is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// The certificate files.
    pub files: CertFiles,
}

fn member_of(layout: &Layout) -> Result<Membership, MethodError> {
    let membership = Membership::load(layout)?.ok_or_else(|| {
        error::fail(
            "This machine is not in a certmesh mesh, so it has no certificate to renew.",
            "Join one with `koi certmesh join`.",
        )
    })?;
    if membership.role != "member" {
        return Err(error::fail(
            "This machine is the mesh's CA; `renew` renews a member's certificate.",
            "Run `koi certmesh renew` on a member.",
        ));
    }
    Ok(membership)
}

/// The `renew` method.
pub async fn run(ctx: Context, p: RenewParams) -> Result<RenewResult, MethodError> {
    let layout = App::of(&ctx)?.authority().layout().clone();
    let membership = member_of(&layout)?;
    let files = CertFiles::at(&layout, &membership.hostname);
    let due = crate::schedule::due_at(&files);
    if !p.now && due.is_some_and(|d| crate::clock::now() < d) {
        let next = due.map(crate::schedule::rfc3339);
        return Ok(RenewResult {
            renewed: false,
            old_serial: membership.serial.clone(),
            serial: membership.serial.clone(),
            old_not_after: membership.expires_at.clone(),
            not_after: membership.expires_at.clone(),
            key_changed: false,
            names: membership
                .dns_names
                .iter()
                .chain(&membership.ip_addresses)
                .cloned()
                .collect(),
            next_renewal_at: next,
            hook: None,
            files,
        });
    }
    let mut result = renew_once(&ctx, p.keep_key, "command").await?;
    result.hook = after_renewal(&ctx, &layout, &result).await;
    Ok(result)
}

/// Publishes, and runs the hook: in the daemon as its own task (returns `started`), in one-shot
/// mode here (returns the outcome).
pub async fn after_renewal(ctx: &Context, layout: &Layout, result: &RenewResult) -> Option<String> {
    let membership = Membership::load(layout).ok().flatten()?;
    let payload = CertRenewed {
        host: membership.hostname.clone(),
        paths: result.files.clone(),
        serial: result.serial.clone(),
        names: result.names.clone(),
        not_after: result.not_after.clone(),
    };
    if let Err(e) = ctx.publish(CERT_RENEWED, &payload).await {
        tracing::info!("could not publish {CERT_RENEWED}: {}", e.message());
    }
    crate::hooks::load(layout).ok()?.reload?;
    if ctx.mode() == RunMode::Daemon {
        let layout = layout.clone();
        ctx.spawn(async move {
            if let Err(e) = crate::hooks::run_configured(&layout, &membership, "renewal").await {
                tracing::warn!("reload hook: {}", e.message());
            }
        });
        return Some("started".into());
    }
    match crate::hooks::run_configured(layout, &membership, "renewal").await {
        Ok(Some(HookRun { outcome, .. })) => Some(outcome),
        Ok(None) => None,
        Err(e) => Some(e.message().to_owned()),
    }
}

/// One renewal (see the module docs); records its outcome for `status` either way.
pub async fn renew_once(
    ctx: &Context,
    keep_key: bool,
    trigger: &str,
) -> Result<RenewResult, MethodError> {
    let _one = RENEWING.lock().await;
    let authority = App::of(ctx)?.authority();
    let layout = authority.layout().clone();
    let outcome = renew_locked(ctx, &authority, keep_key).await;
    crate::schedule::record(&layout, trigger, &outcome);
    outcome
}

async fn renew_locked(
    ctx: &Context,
    authority: &Arc<Authority>,
    keep_key: bool,
) -> Result<RenewResult, MethodError> {
    let layout = authority.layout();
    let membership = member_of(layout)?;
    let writer = {
        let authority = authority.clone();
        ctx.blocking("certmesh writer lock", move || {
            authority.writer_for_command()
        })
        .await?
    };
    {
        let (layout, host) = (layout.clone(), membership.hostname.clone());
        ctx.blocking("finish an interrupted renewal", move || {
            crate::renew_files::finish(&layout, &host)
        })
        .await?;
    }
    let membership = member_of(layout)?;
    let files = CertFiles::at(layout, &membership.hostname);
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| {
            error::fail(
                format!("Cannot read {path}: {e}."),
                "Join the mesh again with `koi certmesh join` to get new certificate files.",
            )
        })
    };
    let old_cert = read(&files.cert)?;
    let old_key = Zeroizing::new(read(&files.key)?);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(&files.fullchain)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| MethodError::new(format!("Cannot parse {}: {e}", files.fullchain)))?;
    let client_key = PrivateKeyDer::from_pem_slice(old_key.as_bytes())
        .map_err(|e| MethodError::new(format!("Cannot parse {}: {e}", files.key)))?;
    let key = if keep_key {
        KeyPair::from_pem(&old_key)
            .map_err(|e| MethodError::new(format!("Cannot load the key {}: {e}", files.key)))?
    } else {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| MethodError::new(format!("Failed to generate a new key: {e}")))?
    };
    let csr_pem = CertificateParams::new(vec![membership.hostname.clone()])
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| MethodError::new(format!("Failed to build the certificate request: {e}")))?;
    let hook = crate::hooks::load(layout).unwrap_or_default();
    let request = RenewRequest {
        csr_pem,
        extra_names: membership.dns_names.clone(),
        ip_addresses: crate::names::lan_addresses(),
        reload_hook: hook.reload.clone(),
        last_hook: hook
            .last
            .as_ref()
            .map(|h| format!("{} at {}", h.outcome, h.started_at)),
    };
    let endpoint_text = membership.ca_endpoint.clone().ok_or_else(|| {
        error::fail(
            "membership.json records no CA address to renew with.",
            "Join the mesh again with `koi certmesh join --ca ADDR`.",
        )
    })?;
    let endpoint = CaEndpoint::parse(&endpoint_text)?;
    let pin = CaPin::new(Some(membership.ca_fingerprint.clone()));
    let answer = client::request::<RenewRequest, JoinResponse>(
        &endpoint,
        &pin,
        Some((chain, client_key)),
        Method::POST,
        "/v1/certmesh/renew",
        Some(&request),
    )
    .await?;
    let issued = match answer {
        Answer::Ok(a) => a,
        Answer::Refused { status, body } => {
            let ca = membership.ca_name.as_deref().unwrap_or("the CA");
            return Err(MethodError::new(format!(
                "The certmesh CA {ca} at {endpoint} refused to renew this machine's certificate \
                 ({status}): {}",
                body.error
            )));
        }
    };
    if crate::x509::public_key(&issued.cert_pem).as_deref() != Some(key.public_key_raw()) {
        return Err(MethodError::new(format!(
            "The CA at {endpoint} returned a certificate for a different key; nothing was written \
             (the current certificate stays)."
        )));
    }
    if crate::x509::fingerprint(&issued.ca_pem).as_deref()
        != Some(membership.ca_fingerprint.as_str())
    {
        return Err(MethodError::new(format!(
            "The CA at {endpoint} returned a root that is not the one pinned; nothing was written \
             (the current certificate stays)."
        )));
    }
    let key_changed = crate::x509::public_key(&old_cert).as_deref() != Some(key.public_key_raw());
    let key_pem = Zeroizing::new(key.serialize_pem());
    drop(key);
    let mut updated = membership.clone();
    updated.serial.clone_from(&issued.serial);
    updated.expires_at.clone_from(&issued.expires_at);
    updated.dns_names.clone_from(&issued.dns_names);
    updated.ip_addresses.clone_from(&issued.ip_addresses);
    {
        let (layout, updated, issued) = (layout.clone(), updated.clone(), issued.clone());
        ctx.blocking("install the renewed certificate", move || {
            crate::renew_files::install(
                &layout,
                &updated,
                &issued.cert_pem,
                &key_pem,
                &issued.ca_pem,
            )
        })
        .await?;
    }
    drop(writer);
    tracing::info!(old = %membership.serial, new = %issued.serial, key_changed, "certificate renewed");
    Ok(RenewResult {
        renewed: true,
        old_serial: membership.serial,
        serial: issued.serial,
        old_not_after: membership.expires_at,
        not_after: issued.expires_at,
        key_changed,
        names: issued
            .dns_names
            .iter()
            .chain(&issued.ip_addresses)
            .cloned()
            .collect(),
        next_renewal_at: crate::schedule::due_at(&files).map(crate::schedule::rfc3339),
        hook: None,
        files,
    })
}
