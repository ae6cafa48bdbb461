//! Getting the CA passphrase: from `--passphrase-file` (for automation; one trailing newline is
//! dropped) or from a no-echo prompt through the host. It lives only in zeroizing types.

use koi_certmesh_core::Passphrase;
use koi_sdk::{Context, MethodError};
use zeroize::Zeroizing;

use crate::error;

/// Reads or asks for the passphrase; `confirm` asks twice (when creating).
pub async fn passphrase(
    ctx: &Context,
    file: Option<&str>,
    confirm: bool,
) -> Result<Passphrase, MethodError> {
    if let Some(path) = file {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            error::fail(
                format!("Failed to read the passphrase file {path}: {e}."),
                "Check the path; the file should be readable only by you (chmod 600).",
            )
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            error::fail(
                format!("The passphrase file {path} is not UTF-8 text."),
                "Write the passphrase as plain text.",
            )
        })?;
        let trimmed = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        return Ok(Passphrase::new(trimmed.to_owned()));
    }
    if !ctx.interactive() {
        return Err(error::fail(
            "No terminal to ask for the CA passphrase.",
            "Pass --passphrase-file FILE (readable only by you).",
        ));
    }
    let message = if confirm {
        "Passphrase for the CA key (at least 8 characters; it cannot be recovered)"
    } else {
        "CA passphrase"
    };
    let typed = ctx.secret(message, confirm).await?;
    Ok(Passphrase::new(typed.to_string()))
}
