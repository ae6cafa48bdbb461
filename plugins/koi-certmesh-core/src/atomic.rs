//! Durable, atomic file writes and private directories, from [`koi_store`] (where this code now
//! lives, shared by every plugin) with this crate's [`Error`]. A write goes to a fresh temporary
//! file in the target's own directory (0600 from creation, `O_EXCL | O_NOFOLLOW`), is fsynced,
//! renamed over the target, and the directory is fsynced, so a reader or a crash sees either the
//! whole old file or the whole new one — never a mix, never a missing file. Directories holding
//! secrets are made 0700.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Permission bits for every file this crate writes (owner read/write only).
pub const FILE_MODE: u32 = koi_store::PRIVATE_FILE_MODE;
/// Permission bits for every directory this crate creates (owner only).
pub const DIR_MODE: u32 = koi_store::PRIVATE_DIR_MODE;

/// This crate's error for a store error: an I/O failure keeps its action, path and cause.
fn from_store(e: koi_store::StoreError) -> Error {
    match e {
        koi_store::StoreError::Io {
            action,
            path,
            source,
        } => Error::Io {
            action,
            path,
            source,
        },
        other => Error::Io {
            action: "use",
            path: other.path().to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Creates `dir` (and parents) if needed and restricts it to the owner (0700). Every directory
/// this creates is 0700 from the first instant — `KOI_HOME` and `certs/` included, when they are
/// new; `dir` itself is tightened even if it existed.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    koi_store::ensure_private_dir(dir).map_err(from_store)
}

/// True for a name [`write_atomic`] gives its temporary files (see [`koi_store::temp`]).
pub fn is_temp_name(name: &str) -> bool {
    koi_store::is_temp_name(name)
}

/// Removes the temporary files a killed [`write_atomic`] left in `dir` (not recursive) and
/// returns how many. The caller must hold whatever lock excludes every writer of `dir`, or it
/// could remove a live writer's file. A missing `dir` is not an error.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    koi_store::remove_all_temp_files(dir).map_err(from_store)
}

/// Opens (creating if needed, 0600) a file for appending; a symbolic link is refused.
pub(crate) fn open_append_private(path: &Path) -> std::io::Result<File> {
    koi_store::open_append(path, FILE_MODE).map_err(std::io::Error::from)
}

/// Fsyncs a directory so that a rename or a creation inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    koi_store::sync_dir(dir).map_err(from_store)
}

/// Writes `bytes` to `path` atomically and durably, as a 0600 file.
///
/// The parent directory must exist. On any error the previous content of `path` is untouched and
/// the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    koi_store::write_atomic(path, bytes, FILE_MODE).map_err(from_store)
}
