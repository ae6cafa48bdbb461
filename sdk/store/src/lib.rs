//! koi-store: durable files for Koi plugins (re-exported by the SDK as `koi_sdk::store`).
//!
//! - [`write_atomic`] — replace a file atomically and durably (unique temporary name in the same
//!   directory, `O_EXCL | O_NOFOLLOW`, file fsync, rename, directory fsync), with a chosen mode.
//! - [`append_durable`] / [`open_append`] — durable appends, for logs.
//! - [`create_private_dir_all`] / [`ensure_private_dir`] — 0700 directories from the first instant.
//! - [`remove_stale_temp_files`] — sweep what writers killed mid-write left (only files whose
//!   writer is gone; see [`temp`] for the rule); [`remove_all_temp_files`] under a writers' lock.
//! - [`JsonFile`] — a typed, versioned JSON file with migrations and errors that name the file
//!   and the next step.
//!
//! Unix only (it relies on `O_NOFOLLOW`, modes and directory fsync). A leaf crate: std, serde,
//! serde_json, thiserror and rustix.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod atomic;
mod error;
mod json;
pub mod temp;

pub use atomic::{
    PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, append_durable, create_private_dir_all,
    ensure_private_dir, open_append, sync_dir, write_atomic,
};
pub use error::StoreError;
pub use json::JsonFile;
pub use temp::{
    STALE_TEMP_AGE, is_temp_name, remove_all_temp_files, remove_stale_temp_files,
    remove_stale_temp_files_of,
};
