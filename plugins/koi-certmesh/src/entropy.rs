//! `--entropy`: extra randomness the user supplies for the CA key. Whatever the user gives is
//! hashed and *mixed with* the OS RNG (see `koi_certmesh_core::ca`), never used alone.
//!
//! - `mash`: raw keystroke timings collected by the host (`host/keystrokes`), with a progress bar
//!   towards [`MASH_KEYSTROKES`] keystrokes. We credit each keystroke with only 2 bits (the
//!   low-order jitter of human timing), so 128 keystrokes ≈ 256 bits.
//! - `passphrase`: a phrase typed without echo.
//! - `manual`: random characters typed visibly.
//! - `system`: the OS RNG only (automation; the default without a terminal).

use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error;

/// Keystrokes collected in `mash` mode.
pub const MASH_KEYSTROKES: u32 = 128;
/// Shortest `passphrase`/`manual` input accepted.
pub const MIN_TYPED_CHARS: usize = 20;

/// Where the CA key's extra entropy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntropySource {
    /// Mash the keyboard: keystroke timings.
    Mash,
    /// Type a phrase (hidden).
    Passphrase,
    /// Type random characters (visible).
    Manual,
    /// The OS RNG only.
    System,
}

impl EntropySource {
    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EntropySource::Mash => "mash",
            EntropySource::Passphrase => "passphrase",
            EntropySource::Manual => "manual",
            EntropySource::System => "system",
        }
    }

    /// The source used when none is given: `mash` at a terminal, `system` otherwise.
    pub fn default_for(ctx: &Context) -> Self {
        if ctx.interactive() {
            EntropySource::Mash
        } else {
            EntropySource::System
        }
    }
}

/// Collects the user's entropy as a 32-byte digest (`None` for `system`).
pub async fn collect(
    ctx: &Context,
    source: EntropySource,
) -> Result<Option<Zeroizing<Vec<u8>>>, MethodError> {
    let needs_terminal = source != EntropySource::System;
    if needs_terminal && !ctx.interactive() {
        return Err(ctx.no_terminal(
            &format!("--entropy {} needs a person typing", source.as_str()),
            "Run it in a terminal, or pass --entropy system for automation.",
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(b"koi-certmesh user entropy");
    match source {
        EntropySource::System => return Ok(None),
        EntropySource::Mash => {
            let keys = ctx
                .keystrokes(
                    "Mash the keyboard: random keys at an uneven pace (the timing is what counts).",
                    MASH_KEYSTROKES,
                )
                .await?;
            for k in keys.iter() {
                hasher.update([k.byte]);
                hasher.update(k.nanos.to_le_bytes());
            }
        }
        EntropySource::Passphrase | EntropySource::Manual => {
            let typed = typed_entropy(ctx, source).await?;
            hasher.update(typed.as_bytes());
        }
    }
    Ok(Some(Zeroizing::new(hasher.finalize().to_vec())))
}

/// Asks for a typed phrase (`passphrase`, hidden) or random characters (`manual`, visible); one
/// that is too short is explained and asked again, [`crate::secrets::TRIES`] times at most.
async fn typed_entropy(
    ctx: &Context,
    source: EntropySource,
) -> Result<Zeroizing<String>, MethodError> {
    for _ in 0..crate::secrets::TRIES {
        let typed: Zeroizing<String> = if source == EntropySource::Passphrase {
            ctx.secret(
                "Type a long phrase nobody could guess (hidden; it is hashed, not stored)",
                false,
            )
            .await?
        } else {
            Zeroizing::new(
                ctx.prompt(
                    "Type at least 20 random characters (hashed into the key, not stored)",
                    None,
                )
                .await?,
            )
        };
        if typed.chars().count() >= MIN_TYPED_CHARS {
            return Ok(typed);
        }
        ctx.show_text(&format!(
            "That was fewer than {MIN_TYPED_CHARS} characters. Try again."
        ));
    }
    Err(error::fail(
        format!(
            "Fewer than {MIN_TYPED_CHARS} characters were typed {} times; nothing was created.",
            crate::secrets::TRIES
        ),
        "Run `koi certmesh create` again and type more, or use --entropy mash or --entropy system.",
    ))
}
