//! `koi certmesh promote`, run on a member: it becomes a standby CA (issue 11 item 6).
//!
//! 1. CLI only (the method is local-only, and a plugin caller is refused too): the code and the
//!    new passphrase are typed at the CLI's terminal (`ctx.secret`, per call, also under the
//!    daemon); without a terminal `--code` and `--passphrase-file` are required.
//! 2. The standby's passphrase is asked first (it is the slow, typed part), then the code, which
//!    is sent at once with a fresh X25519 public key ([`crate::transfer`]) to the primary
//!    recorded at join, over mutual TLS with this member's certificate and the pinned root.
//! 3. The answer is opened here only: the CA key must match the root this member pinned, the
//!    roster manifest must carry the CA's signature, the audit log must verify. Then the key and
//!    TOTP secret are sealed under the standby's own passphrase (Argon2id → AES-256-GCM, the
//!    vault format of `create`), the whole standby directory is built in `standby.staging/` and
//!    renamed into place ([`crate::standby_state`]), and the plaintext buffers are zeroized.
//! 4. The standby starts locked: `koi certmesh unlock` with the new passphrase opens it.
//!
//! `standby_promoted` is audited on the primary before the log is copied, so the standby's copy
//! carries the same CA-signed entry: both machines' logs hold it and both verify.

use std::path::Path;

use hyper::Method;
use koi_certmesh_core::audit::AuditVerdict;
use koi_certmesh_core::{KdfParams, Passphrase};
use koi_sdk::protocol::context::Caller;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::app::App;
use crate::client::{self, Answer, CaEndpoint};
use crate::error;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;
use crate::standby_api::{PROMOTE_PATH, PromoteRequest, PromoteResponse, SignedManifest};
use crate::standby_state::{self, StandbyState};
use crate::tls::CaPin;
use crate::transfer::{self, StandbyKey};

/// Params of `promote`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteParams {
    /// The six-digit code from the mesh's authenticator (for scripts; it works once). Asked for
    /// when absent.
    #[serde(default)]
    #[schemars(extend("x-koi-secret" = true))]
    pub code: Option<String>,
    /// Read the standby's new passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// Result of `promote`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PromoteResult {
    /// This machine's host name, now a standby.
    pub standby: String,
    /// The primary CA it came from.
    pub primary: String,
    /// The term.
    pub term: u64,
    /// The roster version of the signed manifest received.
    pub roster_version: u64,
    /// Entries in the audit log received (verified).
    pub audit_entries: u64,
    /// Always true: the standby starts locked.
    pub locked: bool,
    /// What to do next.
    pub note: String,
}

fn refuse_caller(ctx: &Context) -> Result<(), MethodError> {
    match ctx.caller() {
        Some(Caller::Cli { .. }) | None => Ok(()),
        Some(_) => Err(error::fail(
            "certmesh/promote runs only from the koi command line: it moves the CA key to this \
             machine, and its code and passphrase are typed at the operator's terminal.",
            "Run `koi certmesh promote` in a terminal on the member that should become a standby.",
        )),
    }
}

/// The `promote` method.
pub async fn run(ctx: Context, p: PromoteParams) -> Result<PromoteResult, MethodError> {
    refuse_caller(&ctx)?;
    let app = App::of(&ctx)?;
    let authority = app.authority();
    let layout = authority.layout().clone();
    if layout.is_ca() {
        return Err(error::fail(
            "This machine is the mesh's primary CA; it cannot be its own standby.",
            "Run `koi certmesh promote` on a member of this mesh.",
        ));
    }
    let membership = Membership::load(&layout)?.ok_or_else(|| {
        error::fail(
            "This machine is not in a mesh, so it cannot become a standby CA.",
            "Join the mesh first with `koi certmesh join`, then run `koi certmesh promote`.",
        )
    })?;
    let endpoint_text = membership.ca_endpoint.clone().ok_or_else(|| {
        error::fail(
            "membership.json records no address of the primary CA.",
            "Join the mesh again with `koi certmesh join --ca ADDR`, then promote.",
        )
    })?;
    let endpoint = CaEndpoint::parse(&endpoint_text)?;
    if !ctx.interactive() && (p.code.is_none() || p.passphrase_file.is_none()) {
        return Err(ctx.no_terminal(
            "The enrollment code and the standby's new passphrase are needed",
            "Run `koi certmesh promote` in a terminal to be asked, or pass --code CODE and \
             --passphrase-file FILE (readable only by you).",
        ));
    }
    let pass = crate::secrets::passphrase(&ctx, p.passphrase_file.as_deref(), true).await?;
    let code = match p.code {
        Some(c) => Zeroizing::new(c.trim().to_owned()),
        None => crate::join::ask_code(&ctx).await?,
    };
    let key = StandbyKey::generate().map_err(|e| MethodError::new(format!("{e}.")))?;
    let files = CertFiles::at(&layout, &membership.hostname);
    let auth = files.tls_identity().map_err(|e| {
        error::fail(
            format!("{e}."),
            "Renew (`koi certmesh renew --now`) or join again, then promote.",
        )
    })?;
    let ca_name = membership
        .ca_name
        .clone()
        .unwrap_or_else(|| "the CA".into());
    ctx.progress(
        &format!("Asking {ca_name} at {endpoint} for the CA (mutual TLS, sealed transfer)…"),
        None,
        None,
    );
    let request = PromoteRequest {
        code,
        standby_key: key.public_b64(),
    };
    let pin = CaPin::new(Some(membership.ca_fingerprint.clone()));
    let answer = client::request_up_to::<PromoteRequest, PromoteResponse>(
        &endpoint,
        &pin,
        Some(auth),
        Method::POST,
        PROMOTE_PATH,
        Some(&request),
        transfer::MAX_TRANSFER_BYTES * 2,
    )
    .await?;
    drop(request);
    let response = match answer {
        Answer::Ok(r) => r,
        Answer::Refused { status, body } => {
            let next = match body.reason.as_str() {
                "bad_code" => "Read a fresh code from the authenticator app and run `koi certmesh promote` again.".to_owned(),
                "locked" => format!("Ask the operator of {ca_name} to run `koi certmesh unlock` there, then promote again."),
                "locked_out" => "Wait for the lockout to end, then promote again with a fresh code.".to_owned(),
                _ => format!("Check `koi certmesh status` on {ca_name}, then promote again."),
            };
            return Err(error::fail(
                format!(
                    "The primary CA {ca_name} at {endpoint} refused the promotion ({status} {}): {}",
                    body.reason, body.error
                ),
                next,
            ));
        }
    };
    ctx.progress(
        "Sealing the CA under this standby's passphrase (Argon2id, 64 MiB)…",
        None,
        None,
    );
    let held = app.clone();
    let result = ctx
        .blocking("promote", move || {
            let _writer = wait_for_writer(&held.authority())?;
            let out = install(&layout, &membership, &endpoint, key, &response, &pass)?;
            held.standby.forget();
            Ok(out)
        })
        .await?;
    Ok(result)
}

/// How long a promotion waits for another writer of this machine's certmesh state.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The writer lock, waiting up to [`WRITER_WAIT`] for it: a promotion whose CLI was killed or
/// closed goes on in the daemon for a moment (sealing takes a few hundred ms), and a promote
/// run again at once must wait for it rather than fail. Blocking.
fn wait_for_writer(
    authority: &crate::authority::Authority,
) -> Result<Option<std::fs::File>, MethodError> {
    let deadline = std::time::Instant::now() + WRITER_WAIT;
    loop {
        match authority.writer_for_command() {
            Ok(writer) => return Ok(writer),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Opens, verifies, seals and renames the standby directory into place.
fn install(
    layout: &Layout,
    membership: &Membership,
    endpoint: &CaEndpoint,
    key: StandbyKey,
    response: &PromoteResponse,
    pass: &Passphrase,
) -> Result<PromoteResult, MethodError> {
    let bad = |what: String| {
        error::fail(
            format!(
                "The standby transfer from {endpoint} was refused here: {what}. Nothing was written."
            ),
            "Run `koi certmesh promote` again; if it repeats, check `koi certmesh log --verify` on the primary.",
        )
    };
    let plain = key
        .open(
            &membership.ca_fingerprint,
            &membership.hostname,
            response.term,
            &response.sealed,
        )
        .map_err(bad)?;
    let parts = transfer::unpack(&plain, 3).map_err(bad)?;
    let files = CertFiles::at(layout, &membership.hostname);
    let ca_pem = std::fs::read_to_string(&files.ca)
        .map_err(|e| bad(format!("cannot read the pinned root {}: {e}", files.ca)))?;
    let pinned = crate::x509::der(&ca_pem)
        .map(|d| koi_certmesh_core::fingerprint_sha256(&d))
        .unwrap_or_default();
    if pinned != membership.ca_fingerprint {
        return Err(bad(format!("{} is not the pinned root", files.ca)));
    }
    let signed: SignedManifest = serde_json::from_slice(parts[1])
        .map_err(|e| bad(format!("the roster manifest does not parse ({e})")))?;
    let roster_version =
        match crate::standby_sync::check(&ca_pem, &membership.ca_fingerprint, &signed, 0)
            .map_err(bad)?
        {
            crate::standby_sync::Verdict::Newer(v) | crate::standby_sync::Verdict::Same(v) => v,
            crate::standby_sync::Verdict::Rollback { offered, .. } => offered,
        };
    let staging = standby_state::staging_dir(layout);
    let _ = std::fs::remove_dir_all(&staging);
    koi_certmesh_core::atomic::ensure_private_dir(&staging).map_err(error::core)?;
    let built = build(&staging, &ca_pem, parts[0], parts[2], &signed, pass);
    let audit_entries = match built {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    drop(plain);
    let state = StandbyState {
        version: standby_state::STATE_VERSION,
        role: "standby".into(),
        term: response.term,
        primary: response.primary.clone(),
        primary_endpoint: endpoint.to_string(),
        ca_fingerprint: membership.ca_fingerprint.clone(),
        promoted_at: crate::schedule::rfc3339(std::time::SystemTime::now()),
        roster_version,
        last_sync_at: None,
        last_sync_ok_at: None,
        last_sync_error: None,
        rollbacks_rejected: 0,
        audit_entries,
        last_audit_sync_error: None,
    };
    standby_state::save_in(&staging, &state).map_err(|e| MethodError::new(format!("{e}.")))?;
    swap_into_place(layout, &staging)?;
    tracing::info!(
        "certmesh: this machine is now a standby CA of {} (term {}); it starts locked",
        response.primary,
        response.term
    );
    Ok(PromoteResult {
        standby: membership.hostname.clone(),
        primary: response.primary.clone(),
        term: response.term,
        roster_version,
        audit_entries,
        locked: true,
        note: "This machine is a standby CA. Its copy of the CA key is sealed under the \
               passphrase you chose and starts locked: run `koi certmesh unlock` here to open \
               it. The roster syncs from the primary under `koi daemon`."
            .into(),
    })
}

/// Seals the key and writes the manifest and audit log into `staging`: the audit log's entries.
fn build(
    staging: &Path,
    ca_pem: &str,
    secrets: &[u8],
    log: &[u8],
    signed: &SignedManifest,
    pass: &Passphrase,
) -> Result<u64, MethodError> {
    let unlocked = koi_certmesh_core::standby::seal_transferred(
        &staging.join("ca"),
        ca_pem,
        secrets,
        pass,
        KdfParams::RECOMMENDED,
    )
    .map_err(error::core)?;
    let public = unlocked.ca().public_key_sec1();
    drop(unlocked);
    let log_path = staging.join("audit.log");
    koi_certmesh_core::atomic::write_atomic(&log_path, log).map_err(error::core)?;
    let entries = match koi_certmesh_core::audit::verify(&log_path, &public, None)
        .map_err(error::core)?
    {
        AuditVerdict::Intact { entries, .. } => entries,
        other => {
            return Err(error::fail(
                format!(
                    "The audit log received from the primary does not verify ({other:?}). Nothing was installed."
                ),
                "Run `koi certmesh log --verify` on the primary, then promote again.",
            ));
        }
    };
    let bytes = serde_json::to_vec_pretty(signed).map_err(|e| MethodError::new(e.to_string()))?;
    koi_certmesh_core::atomic::write_atomic(&staging.join("roster-manifest.json"), &bytes)
        .map_err(error::core)?;
    Ok(entries)
}

/// Replaces `certmesh/standby` with `staging` (an earlier standby directory is moved aside
/// first and removed after).
fn swap_into_place(layout: &Layout, staging: &Path) -> Result<(), MethodError> {
    let target = standby_state::dir(layout);
    let old = layout.dir().join("standby.old");
    let _ = std::fs::remove_dir_all(&old);
    let io = |what: &str, e: std::io::Error| {
        error::fail(
            format!("Failed to {what}: {e}."),
            "Check that KOI_HOME is writable, then run `koi certmesh promote` again.",
        )
    };
    if target.exists() {
        std::fs::rename(&target, &old).map_err(|e| io("move the previous standby aside", e))?;
    }
    std::fs::rename(staging, &target).map_err(|e| io("install the standby directory", e))?;
    if let Ok(d) = std::fs::File::open(layout.dir()) {
        let _ = d.sync_all();
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
