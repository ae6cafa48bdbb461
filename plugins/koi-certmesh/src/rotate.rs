//! `koi certmesh rotate-secret`, on the CA: replace the enrollment (TOTP) secret and show the new
//! QR code and otpauth URI exactly as `create` does. Needs the CA key: under `koi daemon` the
//! unlocked CA, without one the passphrase (file or prompt) for this one command. Codes from the
//! old secret stop working at once; members keep their certificates and their roster entries.
//!
//! Order: the `secret_rotated` audit entry is signed first (the log's convention: an entry
//! before the state it describes), then the vault is rewritten atomically with the new secret
//! (old or new on disk after a crash, never neither), the code guard is reset, and the roster
//! records the new audit head. A crash between the entry and the vault leaves the old secret in
//! force; running `rotate-secret` again rotates it. This is also how to get a code after a
//! `create` that was interrupted before it showed one.

use koi_certmesh_core::Roster;
use koi_certmesh_core::audit::events;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::{App, actor};
use crate::authority::CaSession;
use crate::create::{enrollment_uri, show_enrollment_code};
use crate::error;
use crate::signing::with_signing_session;
use crate::wire::MeshInfo;

/// Params of `rotate-secret`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateParams {
    /// Operator name for the audit log.
    #[serde(default)]
    pub operator: Option<String>,
    /// Without a daemon: read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// Result of `rotate-secret`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RotateResult {
    /// The mesh (unchanged: same root, same members).
    pub mesh: MeshInfo,
    /// The new enrollment secret as an otpauth URI (the same secret the QR code shows). Keep it
    /// private.
    #[schemars(extend("x-koi-secret" = true))]
    pub otpauth_uri: String,
    /// Members and devices in the roster, all still valid.
    pub members_kept: usize,
    /// What to do next.
    pub next: Vec<String>,
}

/// The `rotate-secret` method.
pub async fn run(ctx: Context, p: RotateParams) -> Result<RotateResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    let who = actor(p.operator.as_deref());
    let audit_actor = who.clone();
    let rotate = move |session: &mut CaSession| -> Result<RotateResult, MethodError> {
        let mut roster = Roster::load(&layout.roster()).map_err(error::core)?;
        session.audit(
            events::SECRET_ROTATED,
            &audit_actor,
            json!({
                "ca_fingerprint": roster.mesh.ca_fingerprint,
                "members_kept": roster.members.len(),
            }),
        )?;
        let secret = session.rotate_enrollment_secret(&layout)?;
        let uri = enrollment_uri(secret, &roster.mesh.primary)?;
        session.save_roster(&layout, &mut roster)?;
        Ok(RotateResult {
            mesh: MeshInfo::of(&roster),
            otpauth_uri: uri.to_string(),
            members_kept: roster.members.len(),
            next: vec![
                "Scan the new QR code; codes from the old one are refused from now on.".into(),
                "On another machine: `koi certmesh join` and type the code the app shows.".into(),
            ],
        })
    };
    let result = with_signing_session(
        authority,
        &ctx,
        p.passphrase_file.as_deref(),
        who,
        "rotate-secret",
        rotate,
    )
    .await?;
    show_enrollment_code(&ctx, &result.otpauth_uri);
    Ok(result)
}
