//! Where certmesh keeps its files under `KOI_HOME`, this machine's host name, and the lock that
//! makes one process at a time the writer of the CA's state.
//!
//! ```text
//! $KOI_HOME/certmesh/            0700  created atomically (built in certmesh.creating/, renamed)
//!     ca/ca.pem                        root certificate (public)
//!     ca/vault.sealed                  CA key + TOTP secret, Argon2id → AES-256-GCM
//!     roster.json                      the mesh's record of itself (CA only)
//!     audit.log                        hash-chained, CA-signed JSON lines (CA only)
//!     audit-pending.jsonl              refusals seen while locked, signed in at the next unlock
//!     audit-pending.signing            the same, while an unlock signs them in
//!     totp-state.json                  replay / lockout state of enrollment codes
//!     membership.json                  what this machine was told when it joined (every member)
//!     standby/                         a standby CA's sealed vault, roster manifest, audit copy
//!                                      and record (crate::standby_state)
//! $KOI_HOME/certs/<hostname>/    0700  cert.pem, key.pem, ca.pem, fullchain.pem (all 0600)
//! $KOI_HOME/state/certmesh.lock        flock: the writer of the CA state
//! ```
//!
//! Every directory koi creates here is 0700, `KOI_HOME` and `certs/` included. Whoever takes the
//! writer lock first sweeps what a killed writer left ([`Layout::sweep_leftovers`]): the atomic
//! writer's temporary files in `certmesh/`, `certmesh/ca/` and `certs/*/`, and a staging
//! `certmesh.creating/`; it also tightens an older `certs/` to 0700. Every writer of these
//! directories holds the lock, so the sweep never removes a live writer's file.

use std::fs::File;
use std::path::{Path, PathBuf};

use koi_sdk::MethodError;

/// Paths of one `KOI_HOME`.
#[derive(Debug, Clone)]
pub struct Layout {
    home: PathBuf,
}

impl Layout {
    /// The layout under `home`.
    pub fn new(home: &Path) -> Self {
        Layout {
            home: home.to_path_buf(),
        }
    }
    /// `$KOI_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }
    /// `$KOI_HOME/certmesh`.
    pub fn dir(&self) -> PathBuf {
        self.home.join("certmesh")
    }
    /// Where `create` builds a mesh before renaming it into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.home.join("certmesh.creating")
    }
    /// The CA store directory inside `dir`.
    pub fn ca_dir_in(dir: &Path) -> PathBuf {
        dir.join("ca")
    }
    /// `certmesh/ca`.
    pub fn ca_dir(&self) -> PathBuf {
        Self::ca_dir_in(&self.dir())
    }
    /// `certmesh/roster.json`.
    pub fn roster(&self) -> PathBuf {
        self.dir().join("roster.json")
    }
    /// `certmesh/audit.log`.
    pub fn audit(&self) -> PathBuf {
        self.dir().join("audit.log")
    }
    /// `certmesh/audit-pending.jsonl`.
    pub fn audit_pending(&self) -> PathBuf {
        self.dir().join("audit-pending.jsonl")
    }
    /// `certmesh/audit-pending.signing`: pending refusals being signed in by an unlock.
    pub fn audit_pending_signing(&self) -> PathBuf {
        self.dir().join("audit-pending.signing")
    }
    /// `certmesh/totp-state.json`.
    pub fn totp_state(&self) -> PathBuf {
        self.dir().join("totp-state.json")
    }
    /// `certmesh/membership.json`.
    pub fn membership(&self) -> PathBuf {
        self.dir().join("membership.json")
    }
    /// `certs/<hostname>`.
    pub fn certs(&self, hostname: &str) -> PathBuf {
        self.home.join("certs").join(hostname)
    }
    /// True when this machine is a CA (a roster exists).
    pub fn is_ca(&self) -> bool {
        self.roster().exists()
    }

    /// Takes the writer lock without waiting. Under `koi daemon` the CA's certmesh process holds
    /// it for its whole life; one-shot commands hold it for one command.
    pub fn lock_writer(&self) -> Result<File, MethodError> {
        let state = self.home.join("state");
        koi_certmesh_core::atomic::ensure_private_dir(&state).map_err(crate::error::core)?;
        let path = state.join("certmesh.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                MethodError::new(format!("Failed to open {}: {e}.", path.display()))
                    .hint("Check that KOI_HOME is writable by this user.")
            })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                self.sweep_leftovers()?;
                Ok(file)
            }
            Err(_) => Err(MethodError::new(
                "Another koi process is managing this machine's certmesh state right now \
                 (usually `koi daemon`).",
            )
            .hint(
                "Run the command without `--no-daemon` so it is forwarded to the daemon, or stop \
                 the other command first.",
            )),
        }
    }
}

impl Layout {
    /// Removes what a writer killed mid-write left behind and tightens `certs/` to 0700; returns
    /// how many files and directories it removed. Call only while holding the writer lock.
    pub fn sweep_leftovers(&self) -> Result<usize, MethodError> {
        use koi_certmesh_core::atomic::remove_stale_temp_files;
        let mut dirs = vec![self.dir(), self.ca_dir()];
        let certs = self.home.join("certs");
        if certs.is_dir() {
            koi_certmesh_core::atomic::ensure_private_dir(&certs).map_err(crate::error::core)?;
            for entry in std::fs::read_dir(&certs).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        let mut removed = 0;
        for dir in &dirs {
            removed += remove_stale_temp_files(dir).map_err(crate::error::core)?;
        }
        let staging = self.staging_dir();
        if staging.is_dir() {
            std::fs::remove_dir_all(&staging).map_err(|e| {
                crate::error::fail(
                    format!(
                        "Failed to remove {}, left by an interrupted `koi certmesh create`: {e}.",
                        staging.display()
                    ),
                    "Remove it by hand; it is not a live mesh (that is certmesh/).",
                )
            })?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed files left by an interrupted certmesh writer"
            );
        }
        Ok(removed)
    }
}

/// This machine's host name: lower-case, the first label only, checked to be a DNS label.
pub fn hostname() -> Result<String, MethodError> {
    let uname = rustix::system::uname();
    let raw = uname.nodename().to_string_lossy().to_ascii_lowercase();
    let first = raw.split('.').next().unwrap_or_default().to_owned();
    crate::names::check_hostname(&first).map_err(|reason| {
        MethodError::new(format!("This machine's host name is unusable: {reason}")).hint(
            "Set a host name of letters, digits and hyphens (`hostnamectl set-hostname NAME`).",
        )
    })?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TEMP: &str = ".tmp-0123456789abcdef";

    fn plant(home: &Path) -> Vec<PathBuf> {
        let planted = vec![
            home.join(format!("certmesh/.roster.json{TEMP}")),
            home.join(format!("certmesh/ca/.vault.sealed{TEMP}")),
            home.join(format!("certs/stone/.key.pem{TEMP}")),
        ];
        for p in &planted {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"half-written").unwrap();
        }
        std::fs::write(home.join("certmesh/roster.json"), b"{}").unwrap();
        std::fs::create_dir_all(home.join("certmesh.creating/ca")).unwrap();
        std::fs::set_permissions(home.join("certs"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        planted
    }

    #[test]
    fn taking_the_writer_lock_sweeps_what_a_killed_writer_left() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let planted = plant(dir.path());
        let _lock = layout.lock_writer().unwrap();
        for p in &planted {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        assert!(!layout.staging_dir().exists());
        assert!(layout.roster().exists(), "a real file was removed");
        let mode = std::fs::metadata(dir.path().join("certs"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_live_writers_temp_files_survive_a_second_locker() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let held = layout.lock_writer().unwrap();
        let planted = plant(dir.path());
        assert!(layout.lock_writer().is_err());
        for p in &planted {
            assert!(p.exists(), "{} removed under a live writer", p.display());
        }
        drop(held);
    }
}
