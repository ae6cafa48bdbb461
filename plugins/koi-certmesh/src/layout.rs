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
//! $KOI_HOME/certs/<hostname>/    0700  cert.pem, key.pem, ca.pem, fullchain.pem (all 0600)
//! $KOI_HOME/state/certmesh.lock        flock: the writer of the CA state
//! ```

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
            Ok(()) => Ok(file),
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
