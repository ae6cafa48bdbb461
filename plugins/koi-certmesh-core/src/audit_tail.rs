//! Reading the newest audit entries without reading the whole log: the file is read backwards in
//! 64 KiB blocks until enough complete lines are found, so `koi certmesh log --last 20` costs the
//! same on a log of ten entries and on one of ten million.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::audit::{AuditEntry, MAX_LINE_BYTES};
use crate::error::{Error, Result};

const BLOCK: u64 = 64 * 1024;

/// The last `n` entries of the log at `path`, oldest first. A torn last line (crash mid-append)
/// is skipped, as are lines that do not parse; nothing is verified (that is
/// [`crate::audit::verify`]'s job). A missing file has no entries.
pub fn read_last(path: &Path, n: usize) -> Result<Vec<AuditEntry>> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let io = |e| Error::io("read", path, e);
    let len = file.metadata().map_err(io)?.len();
    let mut newest_first: Vec<AuditEntry> = Vec::new();
    // Bytes after the last newline seen, i.e. the end of a line whose start is further back.
    // At the end of the file that is a torn line (or nothing) and is dropped.
    let mut carry: Vec<u8> = Vec::new();
    let mut at_end = true;
    let mut pos = len;
    while pos > 0 && newest_first.len() < n {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.read_exact(&mut block).map_err(io)?;
        block.extend_from_slice(&carry);
        let mut segments: Vec<&[u8]> = block.split(|&b| b == b'\n').collect();
        // The last segment follows the last newline: torn at the end of the file, otherwise
        // the (already complete) carry — which `split` has just re-joined to its start.
        if at_end {
            let saw_newline = segments.len() > 1;
            segments.pop();
            if !saw_newline {
                // Still inside a (long) torn last line.
                pos = start;
                continue;
            }
            at_end = false;
        }
        let first = if start == 0 {
            None
        } else if segments.is_empty() {
            Some(Vec::new())
        } else {
            Some(segments.remove(0).to_vec())
        };
        for line in segments.iter().rev() {
            if newest_first.len() >= n {
                break;
            }
            if let Ok(entry) = serde_json::from_slice::<AuditEntry>(line) {
                newest_first.push(entry);
            }
        }
        match first {
            Some(head) if head.len() <= MAX_LINE_BYTES => carry = head,
            Some(_) => break,
            None => carry.clear(),
        }
        pos = start;
    }
    newest_first.reverse();
    Ok(newest_first)
}
