//! The signing session of one command ([`with_signing_session`]): the verbs that sign on the CA
//! (`issue`, `rotate-secret`, `open-enrollment`, `close-enrollment`) run their work through it, so
//! each holds the writer lock and uses the daemon's unlocked key, or in one-shot mode opens the
//! vault for that command alone.

use std::sync::Arc;

use koi_sdk::MethodError;

use crate::authority::{Authority, CaSession};
use crate::error;

/// Runs `f` with a signing session: under the daemon the unlocked one (or the locked refusal);
/// in one-shot mode a session opened for this command with the passphrase (file or prompt).
/// Holds the writer lock throughout and runs `f` off the async threads.
pub async fn with_signing_session<T: Send + 'static>(
    authority: Arc<Authority>,
    ctx: &koi_sdk::Context,
    passphrase_file: Option<&str>,
    actor: String,
    purpose: &'static str,
    f: impl FnOnce(&mut CaSession) -> Result<T, MethodError> + Send + 'static,
) -> Result<T, MethodError> {
    if !authority.layout().is_ca() {
        return Err(error::fail(
            "This machine is not a certmesh CA.",
            "Run this on the CA (the machine that ran `koi certmesh create`).",
        ));
    }
    let writer = authority.writer_for_command()?;
    if ctx.mode() == koi_sdk::protocol::handshake::RunMode::Daemon {
        return ctx
            .blocking(purpose, move || {
                let _writer = writer;
                authority.with_session(f)
            })
            .await;
    }
    let pass = crate::secrets::passphrase(ctx, passphrase_file, false).await?;
    let layout = authority.layout().clone();
    ctx.blocking(purpose, move || {
        let _writer = writer;
        let (mut session, _) = CaSession::open(&layout, &pass, &actor, purpose)?;
        f(&mut session)
    })
    .await
}
