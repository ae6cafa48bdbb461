//! Durable, atomic file writes and private directories. A write goes to a fresh temporary file in
//! the target's own directory (created 0600 with `O_EXCL`), is fsynced, renamed over the target,
//! and the directory is fsynced, so a reader or a crash sees either the whole old file or the whole
//! new one — never a mix, never a missing file. Directories holding secrets are made 0700.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Permission bits for every file this crate writes (owner read/write only).
pub const FILE_MODE: u32 = 0o600;
/// Permission bits for every directory this crate creates (owner only).
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and parents) if needed and restricts it to the owner (0700 on Unix). Every
/// directory this creates is 0700 from the first instant — `KOI_HOME` and `certs/` included, when
/// they are new; `dir` itself is tightened even if it existed.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    create_private_dir_all(dir).map_err(|e| Error::io("create the directory", dir, e))?;
    set_mode(dir, DIR_MODE)
}

#[cfg(unix)]
fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

/// The temporary name [`write_atomic`] uses for `name`: `.{name}.tmp-{16 hex digits}`.
fn temp_name(name: &str, suffix: &[u8; 8]) -> String {
    format!(".{name}.tmp-{}", hex::encode(suffix))
}

/// True for a name [`write_atomic`] gives its temporary files (see [`temp_name`]).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((target, suffix)) = rest.rsplit_once(".tmp-") else {
        return false;
    };
    !target.is_empty()
        && suffix.len() == 16
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes the temporary files a killed [`write_atomic`] left in `dir` (not recursive) and
/// returns how many. The caller must hold whatever lock excludes every writer of `dir`, or it
/// could remove a live writer's file. A missing `dir` is not an error.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && name.to_str().is_some_and(is_temp_name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("restrict the permissions of", path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Opens a new file that must not exist yet, with mode 0600 from the first instant.
pub(crate) fn create_new_private(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(path)
}

/// Opens (creating if needed, 0600) a file for appending.
pub(crate) fn open_append_private(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(path)
}

/// Fsyncs a directory so that a rename or a creation inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| Error::io("open the directory", dir, e))?;
        d.sync_all()
            .map_err(|e| Error::io("flush the directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Where an injected failure stops [`write_atomic_inner`] (tests only use anything but `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailPoint {
    None,
    /// Stop after the temporary file is written and synced, before the rename.
    BeforeRename,
}

/// Writes `bytes` to `path` atomically and durably, as a 0600 file.
///
/// The parent directory must exist. On any error the previous content of `path` is untouched and
/// the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_inner(path, bytes, FailPoint::None)
}

pub(crate) fn write_atomic_inner(path: &Path, bytes: &[u8], fail: FailPoint) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let tmp = dir.join(temp_name(&name, &suffix));

    let result = (|| -> Result<()> {
        let mut f = create_new_private(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("flush", &tmp, e))?;
        drop(f);
        if fail == FailPoint::BeforeRename {
            return Err(Error::io(
                "rename (injected failure)",
                &tmp,
                std::io::Error::other("injected"),
            ));
        }
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_before_rename_keeps_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("roster.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_inner(&p, b"new", FailPoint::BeforeRename).unwrap_err();
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
        write_atomic(&p, &a).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (p, a, b, stop) = (p.clone(), a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 100_000 {
                    let got = fs::read(&p).unwrap();
                    assert!(got == a || got == b, "torn read of {} bytes", got.len());
                    reads += 1;
                }
            })
        };
        for i in 0..60 {
            write_atomic(&p, if i % 2 == 0 { &b } else { &a }).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    }

    #[test]
    fn temp_names_are_recognised_and_only_they_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let name = temp_name("roster.json", &[0xab; 8]);
        assert!(is_temp_name(&name), "{name}");
        for not in [
            "roster.json",
            ".roster.json",
            ".roster.json.tmp-xyz",
            ".roster.json.tmp-0123456789ABCDEF",
            "..tmp-0123456789abcdef",
            "roster.json.tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_name(not), "{not}");
        }
        fs::write(dir.path().join(&name), b"half").unwrap();
        fs::write(dir.path().join("roster.json"), b"whole").unwrap();
        fs::write(dir.path().join(".roster.json.tmp-xyz"), b"not ours").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(!dir.path().join(&name).exists());
        assert!(dir.path().join("roster.json").exists());
        assert!(dir.path().join(".roster.json.tmp-xyz").exists());
        assert_eq!(
            remove_stale_temp_files(&dir.path().join("absent")).unwrap(),
            0
        );
    }

    #[cfg(unix)]
    #[test]
    fn every_directory_created_is_0700_parents_included() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        ensure_private_dir(&home.join("certs/host")).unwrap();
        for d in [&home, &home.join("certs"), &home.join("certs/host")] {
            let mode = fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn files_are_0600_and_dirs_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let p = sub.join("f");
        write_atomic(&p, b"x").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
