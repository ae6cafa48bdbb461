//! `koi certmesh unlock`: open the CA vault in the daemon's certmesh process so it can sign.
//! Until then every signing path answers "CA is locked. Run koi certmesh unlock to resume
//! signing." Without a daemon the passphrase is checked (and the unlock audited) but nothing stays
//! unlocked, which the answer says.

use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::{App, actor};
use crate::authority::{CaSession, UnlockReport};
use crate::error;
use crate::files::Membership;

/// Params of `unlock`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockParams {
    /// Read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
    /// Operator name for the audit log.
    #[serde(default)]
    pub operator: Option<String>,
}

/// Result of `unlock`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UnlockResult {
    /// Whether the CA now stays unlocked (true only under `koi daemon`).
    pub unlocked: bool,
    /// What the unlock did.
    #[serde(flatten)]
    pub report: UnlockReport,
    /// A note on what happens next.
    pub note: String,
}

/// The `unlock` method.
pub async fn run(ctx: Context, p: UnlockParams) -> Result<UnlockResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let layout = authority.layout().clone();
    if !layout.is_ca() && crate::standby_state::load(&layout).is_some() {
        return crate::standby_unlock::run(&ctx, p.passphrase_file.as_deref()).await;
    }
    if !layout.is_ca() {
        if let Some(m) = Membership::load(&layout)? {
            // The CA's key lives on the CA only: its operator unlocks it there.
            let ca = m.ca_name.as_deref().unwrap_or("the CA");
            let at = m
                .ca_endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default();
            return Err(error::fail(
                format!(
                    "This machine is a member of mesh {}… whose CA is {ca}{at}; only the CA has a \
                     key to unlock.",
                    m.ca_fingerprint.chars().take(16).collect::<String>()
                ),
                format!("Ask the operator of {ca} to run `koi certmesh unlock` on {ca}."),
            ));
        }
        return Err(error::fail(
            "This machine is not in a mesh, so there is no CA key to unlock.",
            "Start a mesh here with `koi certmesh create`, or join one with `koi certmesh join`.",
        ));
    }
    let daemon = ctx.mode() == RunMode::Daemon;
    if daemon && authority.is_unlocked() {
        let fingerprint = authority.with_session(|s| Ok(s.unlocked().ca().fingerprint()))?;
        return Ok(UnlockResult {
            unlocked: true,
            report: UnlockReport {
                ca_fingerprint: fingerprint,
                pending_entries_signed: 0,
                torn_bytes_repaired: 0,
            },
            note: "The CA was already unlocked.".into(),
        });
    }
    if daemon {
        authority.hold_writer_lock()?;
    }
    authority.check_term()?;
    let _writer = authority.writer_for_command()?;
    let pass = crate::secrets::passphrase(&ctx, p.passphrase_file.as_deref(), false).await?;
    ctx.progress("Opening the CA vault (Argon2id, 64 MiB)…", None, None);
    let who = actor(p.operator.as_deref());
    let purpose = if daemon {
        "unlock"
    } else {
        "unlock (one-shot check)"
    };
    // Argon2id (64 MiB), and under the daemon signing the refusals recorded while locked:
    // off the protocol workers. One-shot, the session is dropped (the key zeroized) right away.
    let report = ctx
        .blocking("unlock", move || {
            let (session, report) = CaSession::open(&layout, &pass, &who, purpose)?;
            if daemon {
                authority.install(session);
            }
            Ok(report)
        })
        .await?;
    if daemon {
        Ok(UnlockResult {
            unlocked: true,
            report,
            note: "The CA is unlocked and signing until koi daemon stops.".into(),
        })
    } else {
        Ok(UnlockResult {
            unlocked: false,
            report,
            note: "The passphrase is right, but no koi daemon is running, so nothing stays \
                   unlocked. Start `koi daemon`, then run `koi certmesh unlock` again."
                .into(),
        })
    }
}
