//! `koi proxy remove NAME` and `koi proxy list`: small verbs over the stored entries.

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
}

/// `remove`.
pub async fn remove(ctx: Context, p: RemoveParams) -> Result<Removed, MethodError> {
    let proxy = ctx.state::<Proxy>()?;
    let name = p.name;
    proxy
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
            Ok(Removed {
                removed: entries.remove(at),
            })
        })
        .await
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
