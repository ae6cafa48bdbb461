//! Temporary file names and the sweep of those a killed writer left behind.
//!
//! [`crate::write_atomic`] writes `NAME` through `.NAME.tmp-PID-RANDOM` (the writer's process id,
//! then 16 lowercase hex digits) in the same directory. Koi before this crate wrote
//! `.NAME.tmp-RANDOM` (no process id); both forms are recognised, nothing else is.
//!
//! When is a temporary file stale? [`remove_stale_temp_files`] needs no lock: it removes a file
//! only when its writer is provably gone — the process id in its name is not a running process
//! (and is not this process) — or when the file has not been modified for [`STALE_TEMP_AGE`],
//! longer than any write takes (a live writer's writes keep the mtime fresh). A reused process id
//! only delays the sweep until the age bound. A writer in another PID namespace sharing the
//! directory can look dead; removing its file makes its rename fail with an error, and the
//! target keeps its old content — never a torn file. [`remove_all_temp_files`] is the stronger
//! sweep for callers that hold a lock excluding every writer of the directory.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::StoreError;

/// How long a temporary file may go unmodified before [`remove_stale_temp_files`] removes it
/// whatever its writer's process id says.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(10 * 60);

/// The temporary name for `name` written by process `pid` with random `suffix`.
pub(crate) fn temp_name(name: &str, pid: u32, suffix: u64) -> String {
    format!(".{name}.tmp-{pid}-{suffix:016x}")
}

/// What a temporary name says about its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// `.NAME.tmp-PID-RANDOM`.
    Pid(u32),
    /// `.NAME.tmp-RANDOM`, written by koi before this crate existed.
    Unknown,
}

/// Parses a temporary name into (target name, writer).
fn parse(name: &str) -> Option<(&str, Writer)> {
    let rest = name.strip_prefix('.')?;
    let (target, suffix) = rest.rsplit_once(".tmp-")?;
    if target.is_empty() {
        return None;
    }
    let hex16 = |s: &str| {
        s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match suffix.split_once('-') {
        None if hex16(suffix) => Some((target, Writer::Unknown)),
        Some((pid, random))
            if hex16(random)
                && !pid.is_empty()
                && pid.len() <= 10
                && pid.bytes().all(|b| b.is_ascii_digit()) =>
        {
            pid.parse().ok().map(|p| (target, Writer::Pid(p)))
        }
        _ => None,
    }
}

/// True for a name [`crate::write_atomic`] gives its temporary files (either form, see the
/// module documentation).
pub fn is_temp_name(name: &str) -> bool {
    parse(name).is_some()
}

/// True when process `pid` may still be writing: it is this process, or a running process
/// (including one we may not signal).
fn writer_may_be_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

fn is_stale(entry: &fs::DirEntry, writer: Writer) -> bool {
    if let Writer::Pid(pid) = writer
        && !writer_may_be_alive(pid)
    {
        return true;
    }
    let age = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    age.is_some_and(|a| a >= STALE_TEMP_AGE)
}

/// Removes the temporary files in `dir` (not recursive) for which `remove` says yes; returns how
/// many. A missing `dir`, and a file removed meanwhile by someone else, are not errors.
fn sweep(
    dir: &Path,
    remove: impl Fn(&str, Writer, &fs::DirEntry) -> bool,
) -> Result<usize, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((target, writer)) = name.to_str().and_then(parse) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) || !remove(target, writer, &entry) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &path, e)),
        }
    }
    Ok(removed)
}

/// Removes the temporary files in `dir` (not recursive) whose writer is gone — see the module
/// documentation for the rule — and returns how many. Safe to call while other processes write
/// in `dir`. A missing `dir` is not an error.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize, StoreError> {
    sweep(dir, |_, writer, entry| is_stale(entry, writer))
}

/// Like [`remove_stale_temp_files`], but only the temporary files of `file` (its
/// `.NAME.tmp-…` siblings). [`crate::JsonFile::load`] calls it.
pub fn remove_stale_temp_files_of(file: &Path) -> Result<usize, StoreError> {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        return Ok(0);
    };
    sweep(&crate::atomic::parent_dir(file), |target, writer, entry| {
        target == name && is_stale(entry, writer)
    })
}

/// Removes every temporary file in `dir` (not recursive), live writer or not, and returns how
/// many. The caller must hold a lock that excludes every writer of `dir` (koi-certmesh's writer
/// lock, for example); otherwise use [`remove_stale_temp_files`]. A missing `dir` is not an error.
pub fn remove_all_temp_files(dir: &Path) -> Result<usize, StoreError> {
    sweep(dir, |_, _, _| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_recognised_and_nothing_else() {
        let new = temp_name("roster.json", 4242, 0xab);
        assert_eq!(new, ".roster.json.tmp-4242-00000000000000ab");
        assert_eq!(parse(&new), Some(("roster.json", Writer::Pid(4242))));
        assert_eq!(
            parse(".roster.json.tmp-0123456789abcdef"),
            Some(("roster.json", Writer::Unknown))
        );
        for not in [
            "roster.json",
            ".roster.json",
            ".roster.json.tmp-xyz",
            ".roster.json.tmp-0123456789ABCDEF",
            ".roster.json.tmp--0123456789abcdef",
            ".roster.json.tmp-12a-0123456789abcdef",
            ".roster.json.tmp-99999999999-0123456789abcdef",
            "..tmp-0123456789abcdef",
            "roster.json.tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_name(not), "{not}");
        }
    }

    #[test]
    fn only_dead_writers_files_are_swept_without_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has exited and been reaped: its pid names no process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_file = dir.path().join(temp_name("a.json", dead, 1));
        let ours = dir.path().join(temp_name("a.json", std::process::id(), 2));
        let legacy = dir.path().join(".a.json.tmp-0123456789abcdef");
        let other = dir.path().join(temp_name("b.json", dead, 3));
        for p in [&dead_file, &ours, &legacy, &other] {
            fs::write(p, b"half").unwrap();
        }
        assert_eq!(
            remove_stale_temp_files_of(&dir.path().join("a.json")).unwrap(),
            1
        );
        assert!(!dead_file.exists());
        assert!(ours.exists() && legacy.exists() && other.exists());
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(!other.exists());
        // Old enough, any writer is gone.
        let old = SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1);
        for p in [&ours, &legacy] {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 2);
        assert_eq!(
            remove_stale_temp_files(&dir.path().join("absent")).unwrap(),
            0
        );
    }

    #[test]
    fn under_a_lock_every_temp_file_is_swept_and_only_they() {
        let dir = tempfile::tempdir().unwrap();
        let name = temp_name("roster.json", std::process::id(), 0xabab);
        fs::write(dir.path().join(&name), b"half").unwrap();
        fs::write(
            dir.path().join(".roster.json.tmp-0123456789abcdef"),
            b"half",
        )
        .unwrap();
        fs::write(dir.path().join("roster.json"), b"whole").unwrap();
        fs::write(dir.path().join(".roster.json.tmp-xyz"), b"not ours").unwrap();
        assert_eq!(remove_all_temp_files(dir.path()).unwrap(), 2);
        assert!(!dir.path().join(&name).exists());
        assert!(dir.path().join("roster.json").exists());
        assert!(dir.path().join(".roster.json.tmp-xyz").exists());
        assert_eq!(
            remove_all_temp_files(&dir.path().join("absent")).unwrap(),
            0
        );
    }
}
