//! Where Koi keeps things: `KOI_HOME` (default `~/.koi`) and the directories under it.
//!
//! Every directory koi creates under (and including) `KOI_HOME` is 0700 from the first instant
//! ([`create_private_dir_all`]). A `KOI_HOME` that already exists keeps its mode: it may be a
//! directory the user chose and shares; what needs privacy below it sits in 0700 subdirectories.

use std::path::{Path, PathBuf};

/// Creates `dir` and any missing parents, each 0700 (owner only). Existing directories are left
/// as they are. The store's helper, so the host and plugins create private directories alike.
pub use koi_store::create_private_dir_all;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_directories_are_0700_parents_included() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        create_private_dir_all(&home.join("run")).expect("create");
        for d in [&home, &home.join("run")] {
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }
}
