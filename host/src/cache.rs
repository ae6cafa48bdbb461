//! The manifest cache (`$KOI_HOME/state/plugin-manifests.json`): manifests keyed by plugin path,
//! valid while the file's size and mtime and the protocol version are unchanged. It lets `koi help`
//! and shell completion answer without starting any plugin. Written with `koi_store::write_atomic`
//! (0600, unique temp name, file and directory fsync); a killed writer's temp file is swept at load.

use crate::discovery::Candidate;
use crate::paths::KoiHome;
use koi_protocol::{Manifest, PROTOCOL_VERSION, ProtocolVersion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

const FILE_NAME: &str = "plugin-manifests.json";
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    /// The host's protocol version when the entry was written (part of the key).
    protocol: ProtocolVersion,
    /// The protocol version the plugin answered with.
    plugin_protocol: ProtocolVersion,
    manifest: Manifest,
}

/// The loaded cache.
#[derive(Debug)]
pub struct ManifestCache {
    path: PathBuf,
    file: CacheFile,
    dirty: bool,
}

impl ManifestCache {
    /// Loads the cache; a missing or unreadable file is an empty cache.
    pub fn load(home: &KoiHome) -> Self {
        let path = home.state_dir().join(FILE_NAME);
        // Best effort: a leftover only costs a little disk until the next load.
        let _ = koi_store::remove_stale_temp_files_of(&path);
        let file = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.format == FORMAT)
            .unwrap_or_default();
        Self {
            path,
            file,
            dirty: false,
        }
    }

    /// The cached manifest for `candidate`, if still valid.
    pub fn get(&self, candidate: &Candidate) -> Option<(&Manifest, ProtocolVersion)> {
        let entry = self.file.entries.get(&key(candidate))?;
        (entry.size == candidate.size
            && entry.mtime_ns == candidate.mtime_ns
            && entry.protocol == PROTOCOL_VERSION
            // Written by a koi that did not check method names: ask the plugin again.
            && entry.manifest.first_problem().is_none())
        .then_some((&entry.manifest, entry.plugin_protocol))
    }

    /// Records a manifest fresh from a handshake.
    pub fn put(
        &mut self,
        candidate: &Candidate,
        manifest: &Manifest,
        plugin_protocol: ProtocolVersion,
    ) {
        if self.get(candidate) == Some((manifest, plugin_protocol)) {
            return;
        }
        self.file.entries.insert(
            key(candidate),
            Entry {
                size: candidate.size,
                mtime_ns: candidate.mtime_ns,
                protocol: PROTOCOL_VERSION,
                plugin_protocol,
                manifest: manifest.clone(),
            },
        );
        self.dirty = true;
    }

    /// Forgets the manifest of a plugin that failed its handshake.
    pub fn remove(&mut self, candidate: &Candidate) {
        self.dirty |= self.file.entries.remove(&key(candidate)).is_some();
    }

    /// Drops entries for plugins that no longer exist.
    pub fn retain_existing(&mut self, candidates: &[Candidate]) {
        let before = self.file.entries.len();
        self.file
            .entries
            .retain(|path, _| candidates.iter().any(|c| key(c) == *path));
        self.dirty |= self.file.entries.len() != before;
    }

    /// Writes the cache if it changed. Failure only costs speed, so it is logged, not returned.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.file.format = FORMAT;
        if let Err(e) = self.write_atomically() {
            tracing::debug!(path = %self.path.display(), "could not write the manifest cache: {e}");
        }
        self.dirty = false;
    }

    fn write_atomically(&self) -> Result<(), koi_store::StoreError> {
        let bytes = serde_json::to_vec(&self.file).map_err(|e| koi_store::StoreError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = self.path.parent() {
            crate::paths::create_private_dir_all(dir)
                .map_err(|e| koi_store::StoreError::io("create the directory", dir, e))?;
        }
        koi_store::write_atomic(&self.path, &bytes, koi_store::PRIVATE_FILE_MODE)
    }
}

fn key(candidate: &Candidate) -> String {
    candidate.path.display().to_string()
}
