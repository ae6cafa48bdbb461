//! The transition log: `$KOI_HOME/health/transitions.log`, an append-only flat file a person can
//! read, one line per change, `timestamp | name | old → new | reason`. Each line is written with
//! one `write` and fsynced ([`koi_sdk::store::append_durable`]), so a `kill -9` leaves every line
//! that was reported whole (a torn last line, which the OS never produced in our tests, would be
//! skipped by the reader). When the file passes [`ROTATE_AT`] it is renamed to `transitions.log.1`
//! (replacing the older one) and a new file starts: at most twice the limit on disk.

use crate::tracker::State;
use koi_sdk::store::append_durable;
use schemars::JsonSchema;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The size at which the log is rotated (1 MiB: about 10 000 lines).
pub const ROTATE_AT: u64 = 1024 * 1024;
/// Longest reason kept in a line.
pub const REASON_MAX: usize = 300;

/// One line of the log.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Line {
    /// When (RFC 3339, UTC).
    #[schemars(title = "Time")]
    pub at: String,
    /// The machine or service.
    pub name: String,
    /// The state before.
    pub old: String,
    /// The state after.
    pub new: String,
    /// Why.
    pub reason: String,
}

/// Makes text safe for one field of a line: no control characters, no `|`, bounded.
pub fn field(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() || c == '|' { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Formats one line (with its newline).
pub fn format_line(at: SystemTime, name: &str, old: State, new: State, reason: &str) -> String {
    format!(
        "{} | {} | {} → {} | {}\n",
        humantime::format_rfc3339_millis(at),
        field(name, 128),
        old.word(),
        new.word(),
        field(reason, REASON_MAX)
    )
}

/// Parses one line; `None` for anything that is not one.
pub fn parse_line(text: &str) -> Option<Line> {
    let mut parts = text.splitn(4, " | ");
    let at = parts.next()?.trim();
    humantime::parse_rfc3339(at).ok()?;
    let name = parts.next()?.trim();
    let (old, new) = parts.next()?.split_once(" → ")?;
    let reason = parts.next()?.trim_end_matches('\n');
    Some(Line {
        at: at.to_owned(),
        name: name.to_owned(),
        old: old.trim().to_owned(),
        new: new.trim().to_owned(),
        reason: reason.trim().to_owned(),
    })
}

/// The log's files.
#[derive(Debug, Clone)]
pub struct Log {
    path: PathBuf,
}

impl Log {
    /// The log in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("transitions.log"),
        }
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotated(&self) -> PathBuf {
        self.path.with_extension("log.1")
    }

    /// Appends lines (blocking: call it through `ctx.blocking`), rotating first when the file is
    /// past the limit.
    pub fn append(&self, lines: &str) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= ROTATE_AT) {
            std::fs::rename(&self.path, self.rotated())?;
        }
        append_durable(&self.path, lines.as_bytes(), 0o600).map_err(std::io::Error::other)
    }

    /// Every line, oldest first (blocking).
    pub fn read_all(&self) -> std::io::Result<Vec<Line>> {
        let mut out = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            match std::fs::read(&path) {
                Ok(bytes) => out.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter_map(parse_line),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_rotate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::in_dir(dir.path());
        let line = format_line(
            SystemTime::UNIX_EPOCH,
            "web|x",
            State::Up,
            State::Down,
            "HTTP 502\nagain",
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z | web x | up → down | HTTP 502 again\n"
        );
        let big = line.repeat((ROTATE_AT as usize / line.len()) + 1);
        log.append(&big).expect("append");
        log.append(&line).expect("append");
        assert!(dir.path().join("transitions.log.1").exists());
        let all = log.read_all().expect("read");
        assert_eq!(all.len(), big.lines().count() + 1);
        assert_eq!(all[0].name, "web x");
        assert_eq!(all[0].new, "down");
    }
}
