//! Getting the CA passphrase: from `--passphrase-file` (for automation; one trailing newline is
//! dropped) or from a no-echo prompt through the host — which works for every call from a `koi`
//! at a terminal, one-shot or under `koi daemon` (the per-call `ctx.interactive()`), so a
//! passphrase never has to live in a file for interactive use. It lives only in zeroizing types.
//!
//! A new passphrase (`create`) is checked as soon as it is typed: one that is too short, or a
//! confirmation that differs, is explained and asked again (up to [`TRIES`] times) before any
//! slow step such as the keystroke mash; a file's passphrase is checked before them too.

use koi_certmesh_core::Passphrase;
use koi_certmesh_core::keystore::MIN_PASSPHRASE_CHARS;
use koi_sdk::{Context, MethodError};
use zeroize::Zeroizing;

use crate::error;

/// How many times a new passphrase is asked for before `create` gives up.
pub const TRIES: usize = 3;

/// Why a new passphrase is refused, or `None` if it will do.
fn weak(pass: &str) -> Option<String> {
    let chars = pass.chars().count();
    (chars < MIN_PASSPHRASE_CHARS).then(|| {
        format!(
            "That passphrase has {chars} character{}; it needs at least {MIN_PASSPHRASE_CHARS}.",
            if chars == 1 { "" } else { "s" }
        )
    })
}

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
        if confirm && let Some(problem) = weak(trimmed) {
            return Err(error::fail(
                format!("The passphrase in {path} is too short. {problem} Nothing was created."),
                "Write a longer passphrase into the file and run the command again.",
            ));
        }
        return Ok(Passphrase::new(trimmed.to_owned()));
    }
    if !ctx.interactive() {
        return Err(ctx.no_terminal(
            "The CA passphrase is needed",
            "Run the command in a terminal to be asked for it, or pass --passphrase-file FILE (readable only by you).",
        ));
    }
    if !confirm {
        let typed = ctx.secret("CA passphrase", false).await?;
        return Ok(Passphrase::new(typed.to_string()));
    }
    new_passphrase(ctx).await
}

/// Asks for a new passphrase: checked when typed, then confirmed; each problem is explained and
/// both entries asked again, [`TRIES`] times at most.
async fn new_passphrase(ctx: &Context) -> Result<Passphrase, MethodError> {
    let message = format!(
        "Passphrase for the CA key (at least {MIN_PASSPHRASE_CHARS} characters; it cannot be recovered)"
    );
    let mut last = String::new();
    for _ in 0..TRIES {
        let first = ctx.secret(&message, false).await?;
        if let Some(problem) = weak(&first) {
            ctx.show_text(&format!("{problem} Try again."));
            last = problem;
            continue;
        }
        let second = ctx.secret("Passphrase again, to confirm", false).await?;
        if *first == *second {
            return Ok(Passphrase::new(first.to_string()));
        }
        last = "The two entries did not match.".into();
        ctx.show_text("The two entries did not match. Try again.");
    }
    Err(MethodError::with_code(
        koi_sdk::protocol::codes::USER_INPUT_UNAVAILABLE,
        format!(
            "No usable passphrase after {TRIES} tries (the last: {}). Nothing was created.",
            last.trim_end_matches('.')
        ),
    )
    .hint(format!(
        "Run `koi certmesh create` again and type a passphrase of at least {MIN_PASSPHRASE_CHARS} characters twice."
    )))
}
