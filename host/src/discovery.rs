//! Plugin discovery: executables named `koi-<moniker>` in, in order, each directory of
//! `KOI_PLUGIN_PATH`, `$KOI_HOME/plugins`, the directory of the running `koi`, and each directory of
//! `PATH`. The first executable match for a moniker wins; later ones are reported as shadowed.
//! Built-in command names cannot be taken by plugins. Names with a `.` (`koi-x.bak`, `koi-x.py`)
//! or otherwise invalid monikers are ignored.
//!
//! Finding one plugin (`koi <moniker> ...`) looks only for `koi-<moniker>` in each directory, as git
//! does for its external commands; listing directories happens only when all plugins are needed.

use crate::paths::KoiHome;
use koi_protocol::manifest::is_valid_moniker;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Commands the host implements itself; a plugin with one of these names is never used.
pub const BUILTINS: &[&str] = &[
    "status",
    "version",
    "help",
    "plugins",
    "daemon",
    "completions",
];

/// Where a candidate was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A directory in `KOI_PLUGIN_PATH`.
    KoiPluginPath,
    /// `$KOI_HOME/plugins`.
    KoiHome,
    /// The directory holding the `koi` executable.
    HostDirectory,
    /// A directory in `PATH`.
    Path,
}

/// Why a candidate is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shadow {
    /// Its name is a built-in command.
    Builtin,
    /// An earlier executable with the same moniker wins.
    Plugin(PathBuf),
}

/// One `koi-<moniker>` file found during the search.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The moniker.
    pub moniker: String,
    /// The file.
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// Whether it has an execute bit.
    pub executable: bool,
    /// File size, part of the manifest-cache key.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch, part of the manifest-cache key.
    pub mtime_ns: i128,
    /// Set when another plugin or a built-in takes precedence.
    pub shadowed_by: Option<Shadow>,
}

impl Candidate {
    /// Whether this candidate is the one `koi <moniker>` runs.
    pub fn is_active(&self) -> bool {
        self.executable && self.shadowed_by.is_none()
    }
}

/// The search path, and what was found on it (scanned on first need).
#[derive(Debug, Default)]
pub struct Discovery {
    dirs: Vec<(PathBuf, Source)>,
    scanned: OnceLock<Vec<Candidate>>,
}

impl Discovery {
    /// The standard search path; nothing is read yet.
    pub fn from_env(home: &KoiHome) -> Self {
        let mut dirs: Vec<(PathBuf, Source)> = Vec::new();
        if let Some(paths) = std::env::var_os("KOI_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&paths).map(|p| (p, Source::KoiPluginPath)));
        }
        dirs.push((home.plugins_dir(), Source::KoiHome));
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            dirs.push((dir, Source::HostDirectory));
        }
        if let Some(paths) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&paths).map(|p| (p, Source::Path)));
        }
        Self::with_dirs(dirs)
    }

    /// A search over the given directories, in order.
    pub fn with_dirs(dirs: Vec<(PathBuf, Source)>) -> Self {
        let mut seen = HashSet::new();
        let dirs = dirs
            .into_iter()
            .filter(|(dir, _)| !dir.as_os_str().is_empty())
            .filter(|(dir, _)| {
                seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()))
            })
            .collect();
        Self {
            dirs,
            scanned: OnceLock::new(),
        }
    }

    /// The directories searched, in order (for "not found" messages).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Every candidate on the search path, in search order (lists the directories once).
    pub fn candidates(&self) -> &[Candidate] {
        self.scanned.get_or_init(|| scan(&self.dirs))
    }

    /// The plugins `koi` will run, one per moniker, sorted by moniker.
    pub fn active(&self) -> Vec<&Candidate> {
        let mut active: Vec<&Candidate> =
            self.candidates().iter().filter(|c| c.is_active()).collect();
        active.sort_by(|a, b| a.moniker.cmp(&b.moniker));
        active
    }

    /// The plugin `koi <moniker>` runs: the first executable `koi-<moniker>` on the search path.
    /// Before a full scan this checks one path per directory instead of listing them.
    pub fn find(&self, moniker: &str) -> Option<Candidate> {
        if let Some(all) = self.scanned.get() {
            return all
                .iter()
                .find(|c| c.moniker == moniker && c.is_active())
                .cloned();
        }
        if !is_valid_moniker(moniker) || BUILTINS.contains(&moniker) {
            return None;
        }
        let name = format!("koi-{moniker}");
        self.dirs.iter().find_map(|(dir, source)| {
            candidate(dir.join(&name), moniker, *source).filter(|c| c.executable)
        })
    }
}

fn candidate(path: PathBuf, moniker: &str, source: Source) -> Option<Candidate> {
    let meta = std::fs::metadata(&path).ok()?; // follows symlinks
    if !meta.is_file() {
        return None;
    }
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Some(Candidate {
        moniker: moniker.to_owned(),
        path,
        source,
        executable: meta.permissions().mode() & 0o111 != 0,
        size: meta.len(),
        mtime_ns,
        shadowed_by: None,
    })
}

fn scan(dirs: &[(PathBuf, Source)]) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for (dir, source) in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<Candidate> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let moniker = name.strip_prefix("koi-")?;
                if !is_valid_moniker(moniker) {
                    return None;
                }
                candidate(entry.path(), moniker, *source)
            })
            .collect();
        found.sort_by(|a, b| a.moniker.cmp(&b.moniker));
        candidates.extend(found);
    }
    let mut winners: HashMap<String, PathBuf> = HashMap::new();
    for c in &mut candidates {
        if BUILTINS.contains(&c.moniker.as_str()) {
            c.shadowed_by = Some(Shadow::Builtin);
        } else if let Some(winner) = winners.get(&c.moniker) {
            c.shadowed_by = Some(Shadow::Plugin(winner.clone()));
        } else if c.executable {
            winners.insert(c.moniker.clone(), c.path.clone());
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn first_executable_wins_and_the_rest_are_flagged() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        touch(a.path(), "koi-x", 0o644); // not executable: skipped, does not win
        touch(b.path(), "koi-x", 0o755);
        touch(b.path(), "koi-status", 0o755); // built-in name
        touch(b.path(), "koi-y.bak", 0o755); // ignored
        touch(b.path(), "koi-Bad", 0o755); // ignored
        let c = tempfile::tempdir().expect("tmp");
        touch(c.path(), "koi-x", 0o755);
        let dirs = vec![
            (a.path().into(), Source::KoiPluginPath),
            (b.path().into(), Source::KoiHome),
            (c.path().into(), Source::Path),
        ];
        let quick = Discovery::with_dirs(dirs.clone());
        let found = quick.find("x").expect("targeted lookup");
        assert!(quick.find("status").is_none() && quick.find("y").is_none());
        let d = Discovery::with_dirs(dirs);
        assert_eq!(d.candidates().len(), 4, "{:?}", d.candidates());
        let active = d.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].path, b.path().join("koi-x"));
        assert_eq!(
            found.path, active[0].path,
            "the targeted lookup agrees with the scan"
        );
        let later = d
            .candidates()
            .iter()
            .find(|c| c.source == Source::Path)
            .expect("the PATH copy");
        assert_eq!(
            later.shadowed_by,
            Some(Shadow::Plugin(b.path().join("koi-x")))
        );
        assert!(
            d.candidates()
                .iter()
                .any(|c| c.moniker == "status" && c.shadowed_by == Some(Shadow::Builtin))
        );
        assert!(
            d.candidates()
                .iter()
                .any(|c| c.moniker == "x" && !c.executable)
        );
    }
}
