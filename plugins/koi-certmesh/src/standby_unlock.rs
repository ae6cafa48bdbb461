//! `koi certmesh unlock` on a standby CA: opens the standby's own vault
//! (`certmesh/standby/ca/vault.sealed`, sealed at promotion under the passphrase chosen there)
//! and, under `koi daemon`, keeps the key in this process ([`crate::standby_state::Held`]) until
//! the daemon stops. A standby signs nothing while the primary serves (failover, issue 11 item 7,
//! is what would use the key); the unlock proves the passphrase and the vault, and `status`
//! shows `standby.locked: false`. Without a daemon the passphrase is checked and nothing stays
//! unlocked, which the answer says.

use koi_certmesh_core::CaStore;
use koi_sdk::protocol::handshake::RunMode;
use koi_sdk::{Context, MethodError};

use crate::app::App;
use crate::authority::UnlockReport;
use crate::unlock::UnlockResult;

/// Unlocks the standby's vault (`passphrase_file` or a prompt at the caller's terminal).
pub async fn run(
    ctx: &Context,
    passphrase_file: Option<&str>,
) -> Result<UnlockResult, MethodError> {
    let app = App::of(ctx)?;
    let daemon = ctx.mode() == RunMode::Daemon;
    if daemon && let Some(fingerprint) = app.standby.fingerprint() {
        return Ok(UnlockResult {
            unlocked: true,
            report: UnlockReport {
                ca_fingerprint: fingerprint,
                pending_entries_signed: 0,
                torn_bytes_repaired: 0,
            },
            note: "The standby CA was already unlocked.".into(),
        });
    }
    let pass = crate::secrets::passphrase(ctx, passphrase_file, false).await?;
    ctx.progress(
        "Opening the standby's CA vault (Argon2id, 64 MiB)…",
        None,
        None,
    );
    let store = CaStore::new(crate::standby_state::ca_dir(app.authority().layout()));
    let held = app.clone();
    let fingerprint = ctx
        .blocking("standby unlock", move || {
            let unlocked = store.unlock(&pass).map_err(|e| {
                crate::error::fail(
                    format!("The standby's CA vault did not open: {e}"),
                    "Type the passphrase chosen at `koi certmesh promote` on this machine (not the primary's).",
                )
            })?;
            let fingerprint = unlocked.ca().fingerprint();
            if daemon {
                held.standby.install(unlocked);
            }
            Ok(fingerprint)
        })
        .await?;
    let report = UnlockReport {
        ca_fingerprint: fingerprint,
        pending_entries_signed: 0,
        torn_bytes_repaired: 0,
    };
    Ok(if daemon {
        UnlockResult {
            unlocked: true,
            report,
            note: "The standby CA is unlocked until koi daemon stops; it signs nothing while the \
                   primary serves."
                .into(),
        }
    } else {
        UnlockResult {
            unlocked: false,
            report,
            note: "The passphrase is right, but no koi daemon is running, so nothing stays \
                   unlocked. Start `koi daemon`, then run `koi certmesh unlock` again."
                .into(),
        }
    })
}
