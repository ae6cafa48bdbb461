//! Atomic and durable writes, durable appends and private directories.
//!
//! [`write_atomic`] writes to a fresh temporary file in the target's own directory (created with
//! `O_EXCL | O_NOFOLLOW` and the requested mode), fsyncs it, renames it over the target and fsyncs
//! the directory, so a reader or a crash sees the whole old file or the whole new one — never a
//! mix, never a missing file. [`append_durable`] appends and fsyncs. Directories that hold private
//! data are 0700 from the first instant ([`create_private_dir_all`], [`ensure_private_dir`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;
use crate::temp::temp_name;

/// Owner read/write only: the mode of private files ([`crate::JsonFile`] uses it).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Owner only: the mode of private directories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents, each 0700 from the first instant. Directories that
/// already exist keep their mode (a `KOI_HOME` the user chose and shares, for example).
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates `dir` (and missing parents, 0700 from the first instant) and restricts `dir` itself to
/// the owner (0700) even if it existed.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    create_private_dir_all(dir).map_err(|e| StoreError::io("create the directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(|e| StoreError::io("restrict the permissions of", dir, e))
}

/// Fsyncs directory `dir`, so that a rename or a creation inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = File::open(dir).map_err(|e| StoreError::io("open the directory", dir, e))?;
    d.sync_all()
        .map_err(|e| StoreError::io("flush the directory", dir, e))
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`.
fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Maps an open error: a symbolic link (`ELOOP` under `O_NOFOLLOW`) gets its own message.
pub(crate) fn open_error(action: &'static str, path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        StoreError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::io(action, path, e)
    }
}

/// A random 64-bit suffix for temporary names: std's per-process random SipHash keys over a
/// counter and the clock. Uniqueness is only a convenience — `O_EXCL` guarantees no clobbering.
fn random_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish()
}

/// Creates a new temporary file beside `path` (never an existing file or a link), with `mode`.
fn create_temp(dir: &Path, name: &str, mode: u32) -> Result<(PathBuf, File), StoreError> {
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let tmp = dir.join(temp_name(name, pid, random_suffix()));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nofollow())
            .open(&tmp);
        match opened {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(open_error("create", &tmp, e)),
        }
    }
}

/// Where an injected failure stops [`write_atomic_inner`] (only tests use anything but `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailPoint {
    None,
    /// Stop after the temporary file is written and synced, before the rename.
    BeforeRename,
}

/// Replaces `path` with `bytes` atomically and durably; the file gets exactly `mode` (for example
/// [`PRIVATE_FILE_MODE`], or `0o644` for a public certificate), whatever the umask.
///
/// The parent directory must exist. If `path` is a symbolic link, the link itself is replaced,
/// never its target. On any error the previous content of `path` is untouched and the temporary
/// file is removed; a writer killed mid-write leaves only its temporary file, which
/// [`crate::remove_stale_temp_files`] sweeps.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    write_atomic_inner(path, bytes, mode, FailPoint::None)
}

pub(crate) fn write_atomic_inner(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    fail: FailPoint,
) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(StoreError::io(
            "write",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path does not end in a UTF-8 file name",
            ),
        ));
    };
    let (tmp, mut f) = create_temp(&dir, name, mode)?;
    let result = (|| -> Result<(), StoreError> {
        // The mode asked for, not the umask's cut of it; never more open than asked at any time.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io("set the permissions of", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io("flush", &tmp, e))?;
        if fail == FailPoint::BeforeRename {
            return Err(StoreError::io(
                "rename (injected failure)",
                &tmp,
                std::io::Error::other("injected"),
            ));
        }
        fs::rename(&tmp, path).map_err(|e| StoreError::io("rename into place", path, e))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Opens `path` for appending, creating it with `mode` if it does not exist. A symbolic link is
/// refused ([`StoreError::Symlink`]). For a log kept open across appends; call
/// [`sync_dir`] on the parent once if the file is new, and `sync_data` after each append.
pub fn open_append(path: &Path, mode: u32) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| open_error("open for appending", path, e))
}

/// Appends `bytes` to `path` durably: opens it `O_APPEND` (creating it with `mode`, and then
/// fsyncing its directory), writes all of `bytes` and fsyncs the data before returning. Each call
/// is one `write` of the whole buffer on an `O_APPEND` descriptor, so concurrent appenders do not
/// interleave within a record on local file systems; a crash may leave a torn last record, which
/// the reader must tolerate (end records with `\n` and ignore an unterminated tail).
pub fn append_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let created = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nofollow())
        .open(path);
    let (mut f, created) = match created {
        Ok(f) => (f, true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            (open_append(path, mode)?, false)
        }
        Err(e) => return Err(open_error("create", path, e)),
    };
    if created {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::io("set the permissions of", path, e))?;
    }
    f.write_all(bytes)
        .map_err(|e| StoreError::io("append to", path, e))?;
    f.sync_data()
        .map_err(|e| StoreError::io("flush", path, e))?;
    if created {
        sync_dir(&parent_dir(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn failure_before_rename_keeps_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("roster.json");
        write_atomic(&p, b"old", PRIVATE_FILE_MODE).unwrap();
        let err =
            write_atomic_inner(&p, b"new", PRIVATE_FILE_MODE, FailPoint::BeforeRename).unwrap_err();
        assert!(err.to_string().contains("injected"));
        assert_eq!(fs::read(&p).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }

    #[test]
    fn readers_see_old_or_new_never_a_mix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let a = vec![b'a'; 64 * 1024];
        let b = vec![b'b'; 96 * 1024];
        write_atomic(&p, &a, PRIVATE_FILE_MODE).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (p, a, b, stop) = (p.clone(), a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) && reads < 100_000 {
                    let got = fs::read(&p).unwrap();
                    assert!(got == a || got == b, "torn read of {} bytes", got.len());
                    reads += 1;
                }
            })
        };
        for i in 0..60 {
            write_atomic(&p, if i % 2 == 0 { &b } else { &a }, PRIVATE_FILE_MODE).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }

    #[test]
    fn every_directory_created_is_0700_parents_included() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        ensure_private_dir(&home.join("certs/host")).unwrap();
        for d in [&home, &home.join("certs"), &home.join("certs/host")] {
            assert_eq!(mode_of(d), 0o700, "{}", d.display());
        }
        // An existing directory is tightened by ensure_private_dir, kept by create_private_dir_all.
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir_all(&shared).unwrap();
        assert_eq!(mode_of(&shared), 0o755);
        ensure_private_dir(&shared).unwrap();
        assert_eq!(mode_of(&shared), 0o700);
    }

    #[test]
    fn the_chosen_mode_is_the_files_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"x", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        let public = dir.path().join("ca.crt");
        write_atomic(&public, b"x", 0o644).unwrap();
        assert_eq!(mode_of(&public), 0o644);
        let log = dir.path().join("log");
        append_durable(&log, b"one\n", 0o640).unwrap();
        append_durable(&log, b"two\n", 0o640).unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"one\ntwo\n");
        assert_eq!(mode_of(&log), 0o640);
    }

    #[test]
    fn appends_refuse_a_symlink_and_writes_replace_the_link_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"theirs").unwrap();
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = append_durable(&link, b"x", PRIVATE_FILE_MODE).unwrap_err();
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
        write_atomic(&link, b"ours", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"theirs");
        assert_eq!(fs::read(&link).unwrap(), b"ours");
        assert!(!fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}
