//! The store's one error type. Every message names the file, the cause and a next step that
//! exists in that state (move the file aside, upgrade koi, fix a permission), so a plugin can show
//! it as it is.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing a store file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed.
    #[error(
        "Failed to {action} {}: {source}. Check that the directory exists, belongs to this user and is writable, and that the disk is not full.",
        path.display()
    )]
    Io {
        /// What was being done ("create", "rename into place", "read", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// The file is a symbolic link, which the store refuses to follow.
    #[error(
        "{} is a symbolic link; koi refuses to follow it (it could point at a file another user controls). Replace the link with the file itself (`rm {0}` and put the real file there), then retry.",
        path.display(),
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },

    /// The file exists but is not a regular file (a directory, a socket, ...).
    #[error(
        "{} is not a regular file. Move it aside (`mv {0} {0}.bad`) and retry; without it, koi starts from empty state.",
        path.display()
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
    },

    /// The file is not valid JSON.
    #[error(
        "{} is not valid JSON (line {line}, column {column}: {reason}); it was damaged, for example by a full disk or a hand edit. Move it aside (`mv {0} {0}.bad`) and retry: without it, koi starts from empty state, and {0}.bad keeps the old content for repair by hand.",
        path.display()
    )]
    NotJson {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column of the first error (0 at the end of the file).
        column: usize,
        /// serde_json's description.
        reason: String,
    },

    /// The file is JSON but not of the expected shape (no envelope, or data of another type).
    #[error(
        "{} is not in the form this koi expects: {reason}. Move it aside (`mv {0} {0}.bad`) and retry: without it, koi starts from empty state, and {0}.bad keeps the old content for repair by hand.",
        path.display()
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The file was written by a newer koi, with a format version this build does not know.
    #[error(
        "{} has format version {found}, newer than this koi understands (up to {supported}); a newer koi wrote it. Upgrade koi (`koi version` shows this one), or move the file aside (`mv {0} {0}.bad`) to start again from empty state.",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u64,
        /// The newest version this build reads.
        supported: u32,
    },

    /// A migration step failed (or none is registered for a version).
    #[error(
        "Cannot upgrade {} from format version {from}: {reason}. Move it aside (`mv {0} {0}.bad`) and retry to start again from empty state, and report a bug with {0}.bad attached.",
        path.display()
    )]
    Migration {
        /// The file.
        path: PathBuf,
        /// The version the failing step started from.
        from: u64,
        /// Why it failed.
        reason: String,
    },

    /// The value could not be turned into JSON (a map with non-string keys, a failing `Serialize`).
    #[error(
        "Cannot encode the data for {}: {reason}. Nothing was written; this is a bug in the plugin, please report it.",
        path.display()
    )]
    Encode {
        /// The file that was to be written.
        path: PathBuf,
        /// serde_json's description.
        reason: String,
    },
}

impl StoreError {
    /// An I/O failure while doing `action` on `path`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Symlink { path }
            | Self::NotAFile { path }
            | Self::NotJson { path, .. }
            | Self::Shape { path, .. }
            | Self::TooNew { path, .. }
            | Self::Migration { path, .. }
            | Self::Encode { path, .. } => path,
        }
    }
}

impl From<StoreError> for std::io::Error {
    /// Keeps the operating system's error for [`StoreError::Io`]; the others become
    /// [`std::io::ErrorKind::InvalidData`] with the full message.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { source, .. } => source,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}
