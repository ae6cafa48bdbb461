//! Manifests for every installed plugin, from the cache where it is valid and from a handshake
//! where it is not (unless the caller forbids starting plugins, as shell completion does).

use crate::cache::ManifestCache;
use crate::discovery::Candidate;
use crate::paths::KoiHome;
use crate::session::Session;
use koi_protocol::{ErrorObject, Manifest, ProtocolVersion};
use std::sync::Arc;

/// One active plugin and what is known about it.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The file that runs.
    pub candidate: Candidate,
    /// The manifest and the plugin's protocol version, or why they could not be had.
    pub manifest: Option<Result<(Manifest, ProtocolVersion), ErrorObject>>,
}

/// Manifests of all active plugins. With `start_missing`, plugins without a valid cache entry are
/// started (concurrently), asked, and shut down, and the cache is updated; otherwise they are
/// listed without a manifest.
pub async fn load_all(
    session: &Arc<Session>,
    home: &KoiHome,
    start_missing: bool,
) -> Vec<PluginInfo> {
    load(session, home, start_missing, false).await
}

/// Manifests of all active plugins, each from a fresh handshake whatever the cache holds: a
/// plugin can begin failing without its file changing (a missing interpreter or library, broken
/// state), and `koi plugins list` must say so rather than repeat an old success. The cache is
/// refreshed, and the entries of plugins that fail are dropped.
pub async fn inspect_all(session: &Arc<Session>, home: &KoiHome) -> Vec<PluginInfo> {
    load(session, home, true, true).await
}

async fn load(
    session: &Arc<Session>,
    home: &KoiHome,
    start_missing: bool,
    fresh: bool,
) -> Vec<PluginInfo> {
    let mut cache = ManifestCache::load(home);
    let mut infos: Vec<PluginInfo> = Vec::new();
    let mut missing = tokio::task::JoinSet::new();
    for candidate in session.discovery.active() {
        match cache.get(candidate).filter(|_| !fresh) {
            Some((manifest, protocol)) => infos.push(PluginInfo {
                candidate: candidate.clone(),
                manifest: Some(Ok((manifest.clone(), protocol))),
            }),
            None if start_missing => {
                let session = session.clone();
                let candidate = candidate.clone();
                missing.spawn(async move {
                    let outcome = match session.start_private(&candidate.moniker).await {
                        Ok(connection) => {
                            let found = (connection.manifest().clone(), connection.protocol());
                            connection.shutdown().await;
                            Ok(found)
                        }
                        Err(e) => Err(e),
                    };
                    PluginInfo {
                        candidate,
                        manifest: Some(outcome),
                    }
                });
            }
            None => infos.push(PluginInfo {
                candidate: candidate.clone(),
                manifest: None,
            }),
        }
    }
    while let Some(joined) = missing.join_next().await {
        if let Ok(info) = joined {
            match &info.manifest {
                Some(Ok((manifest, protocol))) => cache.put(&info.candidate, manifest, *protocol),
                Some(Err(_)) => cache.remove(&info.candidate),
                None => {}
            }
            infos.push(info);
        }
    }
    cache.retain_existing(session.discovery.candidates());
    cache.save();
    infos.sort_by(|a, b| a.candidate.moniker.cmp(&b.candidate.moniker));
    infos
}

/// The manifest of one plugin, from the cache or a handshake (which refreshes the cache).
pub async fn load_one(
    session: &Arc<Session>,
    home: &KoiHome,
    moniker: &str,
) -> Result<Manifest, ErrorObject> {
    let mut cache = ManifestCache::load(home);
    let candidate = session.discovery.find(moniker);
    if let Some((manifest, _)) = candidate.as_ref().and_then(|c| cache.get(c)) {
        return Ok(manifest.clone());
    }
    let connection = session.start_private(moniker).await?;
    let manifest = connection.manifest().clone();
    if let Some(candidate) = candidate {
        cache.put(&candidate, &manifest, connection.protocol());
        cache.save();
    }
    connection.shutdown().await;
    Ok(manifest)
}
