//! `koi proxy remove NAME` and `koi proxy list`: small verbs over the stored entries (`remove`
//! then mirrors the remaining list in this machine's roster entry, [`crate::mirror`]).

use crate::config::Entry;
use crate::state::Proxy;
use koi_sdk::{Context, MethodError, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Params of `remove`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RemoveParams {
    /// The entry's name.
    pub name: String,
}

/// Result of `remove`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    /// The entry that was removed.
    pub removed: Entry,
    /// Whether the remaining entries are mirrored in this machine's roster entry, in words.
    pub roster: String,
}

/// `remove`.
pub async fn remove(ctx: Context, p: RemoveParams) -> Result<Removed, MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    let name = p.name;
    let removed = proxy
        .update(&ctx, move |entries| {
            let at = entries.iter().position(|e| e.name == name).ok_or_else(|| {
                let known: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                MethodError::invalid_params(format!(
                    "No entry is named {name:?} (entries: {}); `koi proxy list` shows them.",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            Ok(entries.remove(at))
        })
        .await?;
    let roster = crate::mirror::send(&ctx, &proxy).await;
    Ok(Removed { removed, roster })
}

/// Result of `list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Listed {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// `list`.
pub async fn list(ctx: Context, _: NoParams) -> Result<Listed, MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    Ok(Listed {
        entries: proxy.entries(),
    })
}
