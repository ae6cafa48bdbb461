//! Where Koi keeps things: `KOI_HOME` (default `~/.koi`) and the directories under it.

use std::path::{Path, PathBuf};

/// The Koi state directory and its layout.
#[derive(Debug, Clone)]
pub struct KoiHome {
    root: PathBuf,
}

impl KoiHome {
    /// `$KOI_HOME`, else `~/.koi`, else `./.koi` when no home directory is known.
    pub fn from_env() -> Self {
        let root = match std::env::var_os("KOI_HOME") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => dirs::home_dir().map_or_else(|| PathBuf::from(".koi"), |h| h.join(".koi")),
        };
        Self { root }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `plugins/`: a per-user plugin directory searched after `KOI_PLUGIN_PATH`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// `state/`: caches and runtime state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
}
