//! The old primary's partition entries (issue 11 item 7, fifth step of failover): audit entries
//! a primary wrote after its standby's last sync and before it was demoted ([`crate::demote`]
//! keeps its whole log in `certmesh/demoted/audit.log`) are sent to the new primary and kept.
//!
//! - **Which.** Once the demoted machine's standby copy of the new primary's log
//!   (`standby/audit.log`) holds entries past the fork — the longest common prefix of the two
//!   logs — the demoted log's entries after that prefix are the partition entries (none when the
//!   logs never diverged). They travel in CHUNKS: each the next [`MAX_ENTRIES`] entries that fit
//!   in [`MAX_BYTES`] (each entry at most [`MAX_LINE`] bytes; a longer one cannot travel and ends
//!   the delivery: it and the entries after it stay in `demoted/audit.log` only).
//! - **Sent** by the `presence` service to `POST /v1/certmesh/standby/partition` on the new
//!   primary, over mutual TLS with the machine's certificate (the new primary lists the old one as
//!   a standby), chunk after chunk, each retried every few seconds until accepted;
//!   `demoted/partition-sent` records how many entries were delivered so far.
//! - **Kept.** The new primary checks that the chunk's first entry forks from an entry of its own
//!   log (same sequence number and hash) — or, for a later chunk, continues the last entry a
//!   `partition_entries` entry of its log already carries —, and that the entries chain from
//!   there and each carries the
//!   root's signature ([`koi_certmesh_core::standby::verify_continuation`] — the key is shared),
//!   then appends ONE signed `partition_entries` entry carrying them verbatim (`from`, `count`,
//!   `first_seq`, `first_hash`, `entries`). Its own chain stays linear, so `log --verify` passes,
//!   and each carried entry still verifies under the root from the fork. A second delivery of the
//!   same entries is acknowledged without a second entry. A locked primary refuses with the
//!   locked message (the sender retries).

use std::sync::Arc;

use hyper::Method;
use koi_certmesh_core::audit::AuditHead;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::authority::Authority;
use crate::error::Refusal;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;

/// The route on the new primary.
pub const PATH: &str = "/v1/certmesh/standby/partition";
/// The audit event that carries them.
pub const EVENT: &str = "partition_entries";
/// Most entries carried.
pub const MAX_ENTRIES: usize = 200;
/// Longest entry carried (bytes).
pub const MAX_LINE: usize = 16 * 1024;
/// Most bytes of entries carried (the API takes bodies up to 64 KiB).
pub const MAX_BYTES: usize = 48 * 1024;

/// The request body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionBody {
    /// The entries, verbatim lines of the old primary's log, in order.
    pub entries: Vec<String>,
}

fn marker(layout: &Layout) -> std::path::PathBuf {
    crate::demote::demoted_dir(layout).join("partition-sent")
}

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// How many partition entries were delivered so far (`None`: none yet).
fn sent_count(layout: &Layout) -> Option<usize> {
    std::fs::read_to_string(marker(layout))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// The next chunk of partition entries to send, once the standby copy has gone past the fork:
/// the entries after the common prefix and after those already delivered, at most
/// [`MAX_ENTRIES`] within [`MAX_BYTES`]. `Some(empty)` when the logs never diverged (recorded as
/// done); `None` when nothing is due (not past the fork yet, or all delivered).
pub fn pending_entries(layout: &Layout) -> Option<Vec<String>> {
    let demoted = crate::demote::demoted_dir(layout).join("audit.log");
    if !demoted.exists() {
        return None;
    }
    let sent = sent_count(layout);
    let mine = read_lines(&demoted);
    let theirs = read_lines(&crate::standby_state::audit_path(layout));
    let common = mine.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
    if theirs.len() <= common {
        // Not synced past the fork yet (or no divergence visible yet).
        return None;
    }
    // A prefix only: the carried entries must chain, so an oversized one ends the chunk (and,
    // being first in the next one, the delivery).
    let mut total = 0usize;
    let chunk: Vec<String> = mine
        .into_iter()
        .skip(common + sent.unwrap_or(0))
        .take(MAX_ENTRIES)
        .take_while(|l| {
            total += l.len() + 3;
            l.len() <= MAX_LINE && total <= MAX_BYTES
        })
        .collect();
    if chunk.is_empty() && sent.is_some() {
        return None;
    }
    Some(chunk)
}

/// Sends the partition entries to the new primary, if any are due. Returns how many were kept.
pub async fn send_if_due(layout: &Layout) -> Result<Option<usize>, String> {
    let Some(entries) = pending_entries(layout) else {
        return Ok(None);
    };
    let count = entries.len();
    if count > 0 {
        let membership = Membership::load(layout)
            .map_err(|e| e.message().to_owned())?
            .ok_or("no membership.json")?;
        let endpoint_text = membership
            .ca_endpoint
            .clone()
            .ok_or("membership.json records no primary")?;
        let endpoint =
            crate::client::CaEndpoint::parse(&endpoint_text).map_err(|e| e.message().to_owned())?;
        let files = CertFiles::at(layout, &membership.hostname);
        let (chain, key) = files.tls_identity()?;
        let pin = crate::tls::CaPin::new(Some(membership.ca_fingerprint.clone()));
        let body = PartitionBody { entries };
        match crate::client::request::<_, Value>(
            &endpoint,
            &pin,
            Some((chain, key)),
            Method::POST,
            PATH,
            Some(&body),
        )
        .await
        .map_err(|e| e.message().to_owned())?
        {
            crate::client::Answer::Ok(_) => {}
            crate::client::Answer::Refused { status, body } => {
                return Err(format!(
                    "the new primary refused the partition entries ({status}): {}",
                    body.error
                ));
            }
        }
    }
    let delivered = sent_count(layout).unwrap_or(0).saturating_add(count);
    koi_certmesh_core::atomic::write_atomic(&marker(layout), delivered.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(Some(count))
}

/// Checks the carried entries against this primary's log and the root: the fork point
/// `(seq, hash)` of the first entry must be an entry of this log. Returns the fork head.
fn check(layout: &Layout, lines: &[String]) -> Result<AuditHead, Refusal> {
    let bad = |m: String| Refusal::BadRequest(m);
    if lines.is_empty() || lines.len() > MAX_ENTRIES || lines.iter().any(|l| l.len() > MAX_LINE) {
        return Err(bad(format!(
            "send 1 to {MAX_ENTRIES} entries of at most {MAX_LINE} bytes each"
        )));
    }
    let first: koi_certmesh_core::audit::AuditEntry = serde_json::from_str(&lines[0])
        .map_err(|e| bad(format!("the first entry does not parse: {e}")))?;
    let fork = AuditHead {
        seq: first.seq.saturating_sub(1),
        hash: first.prev_hash.clone(),
    };
    let own = read_lines(&layout.audit());
    if !forks_from(&own, &fork) {
        return Err(bad(
            "the entries do not fork from an entry of this primary's log, nor continue the \
             partition entries it keeps"
                .into(),
        ));
    }
    let ca_pem = std::fs::read_to_string(layout.ca_dir().join("ca.pem"))
        .map_err(|e| Refusal::Internal(format!("cannot read the root: {e}")))?;
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    koi_certmesh_core::standby::verify_continuation(&ca_pem, Some(&fork), 0, &bytes)
        .map_err(|e| bad(format!("the partition entries do not verify: {e}")))?;
    Ok(AuditHead {
        seq: first.seq,
        hash: first.hash,
    })
}

/// Whether `fork` — the entry before a chunk's first — is an entry of the log `own` (same
/// sequence number and hash: the first chunk), or the last entry a `partition_entries` entry of
/// it carries (a later chunk continuing the one before).
fn forks_from(own: &[String], fork: &AuditHead) -> bool {
    use koi_certmesh_core::audit::AuditEntry;
    if fork.seq == 0 {
        return false;
    }
    let in_log = usize::try_from(fork.seq)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| own.get(i))
        .and_then(|l| serde_json::from_str::<AuditEntry>(l).ok())
        .is_some_and(|e| e.seq == fork.seq && e.hash == fork.hash);
    in_log
        || own.iter().rev().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|e| {
                e["event"] == EVENT
                    && e["details"]["entries"]
                        .as_array()
                        .and_then(|a| a.last())
                        .and_then(Value::as_str)
                        .and_then(|last| serde_json::from_str::<AuditEntry>(last).ok())
                        .is_some_and(|last| last.seq == fork.seq && last.hash == fork.hash)
            })
        })
}

/// Handles the route for the standby `host` (already identified as a standby of this mesh).
pub fn receive(authority: &Arc<Authority>, host: &str, bytes: &[u8]) -> Result<Value, Refusal> {
    let body: PartitionBody = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::BadRequest(format!("the body is not {{\"entries\": [...]}}: {e}")))?;
    let layout = authority.layout();
    let first = check(layout, &body.entries)?;
    // Already kept: acknowledged, not duplicated.
    let kept = read_lines(&layout.audit()).iter().any(|l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|e| e["event"] == EVENT && e["details"]["first_hash"] == first.hash.as_str())
    });
    if kept {
        return Ok(json!({"kept": body.entries.len(), "already": true}));
    }
    let count = body.entries.len();
    let details = json!({
        "from": host,
        "count": count,
        "first_seq": first.seq,
        "first_hash": first.hash,
        "entries": body.entries,
    });
    authority
        .with_session(|s| {
            s.audit(EVENT, host, details)?;
            let mut roster =
                koi_certmesh_core::Roster::load(&layout.roster()).map_err(crate::error::core)?;
            s.save_roster(layout, &mut roster)
        })
        .map_err(|e| {
            if e.message() == crate::error::LOCKED_MESSAGE {
                Refusal::Locked
            } else {
                Refusal::Internal(e.message().to_owned())
            }
        })?;
    Ok(json!({"kept": count, "already": false}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, prev: &str, hash: &str) -> String {
        json!({"seq": seq, "ts": "t", "event": "e", "actor": "a", "details": {},
               "prev_hash": prev, "hash": hash, "sig": "s"})
        .to_string()
    }

    #[test]
    fn the_entries_after_the_fork_are_due_only_once_the_copy_went_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let demoted = crate::demote::demoted_dir(&layout);
        std::fs::create_dir_all(&demoted).unwrap();
        std::fs::create_dir_all(crate::standby_state::dir(&layout)).unwrap();
        let (e1, e2a, e3a, e2b) = (
            entry(1, "0", "h1"),
            entry(2, "h1", "a2"),
            entry(3, "a2", "a3"),
            entry(2, "h1", "b2"),
        );
        std::fs::write(demoted.join("audit.log"), format!("{e1}\n{e2a}\n{e3a}\n")).unwrap();
        // The copy holds only the common entry: not past the fork yet.
        std::fs::write(crate::standby_state::audit_path(&layout), format!("{e1}\n")).unwrap();
        assert_eq!(pending_entries(&layout), None);
        // The new primary's own entry after the fork arrived: A's two are due.
        std::fs::write(
            crate::standby_state::audit_path(&layout),
            format!("{e1}\n{e2b}\n"),
        )
        .unwrap();
        assert_eq!(pending_entries(&layout), Some(vec![e2a, e3a]));
        // Delivered once: never again.
        std::fs::write(marker(&layout), b"2").unwrap();
        assert_eq!(pending_entries(&layout), None);
    }

    #[test]
    fn partition_entries_beyond_one_chunk_travel_in_later_chunks_that_continue_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let demoted = crate::demote::demoted_dir(&layout);
        std::fs::create_dir_all(&demoted).unwrap();
        std::fs::create_dir_all(crate::standby_state::dir(&layout)).unwrap();
        // A common entry, then 450 entries of A's own after the fork.
        let mut mine = vec![entry(1, "0", "h1")];
        for seq in 2..=451u64 {
            let prev = if seq == 2 {
                "h1".to_owned()
            } else {
                format!("a{}", seq - 1)
            };
            mine.push(entry(seq, &prev, &format!("a{seq}")));
        }
        std::fs::write(demoted.join("audit.log"), mine.join("\n") + "\n").unwrap();
        std::fs::write(
            crate::standby_state::audit_path(&layout),
            format!("{}\n{}\n", mine[0], entry(2, "h1", "b2")),
        )
        .unwrap();
        let mut delivered: Vec<String> = Vec::new();
        while let Some(chunk) = pending_entries(&layout) {
            assert!(!chunk.is_empty() && chunk.len() <= MAX_ENTRIES);
            assert!(chunk.iter().map(|l| l.len() + 3).sum::<usize>() <= MAX_BYTES);
            delivered.extend(chunk);
            std::fs::write(marker(&layout), delivered.len().to_string()).unwrap();
        }
        assert_eq!(delivered, mine[1..].to_vec(), "every entry, in order, once");
        // The receiver: the first chunk forks from its own log; a later one continues the last
        // entry a kept partition_entries entry carries; anything else is refused.
        let own = vec![mine[0].clone(), entry(2, "h1", "b2")];
        let head = |seq: u64, hash: &str| AuditHead {
            seq,
            hash: hash.into(),
        };
        assert!(forks_from(&own, &head(1, "h1")));
        assert!(!forks_from(&own, &head(200, "a200")), "no chunk kept yet");
        let kept = json!({"seq": 3, "event": EVENT, "details": {"entries": mine[1..201].to_vec()}})
            .to_string();
        let own = vec![own[0].clone(), own[1].clone(), kept];
        assert!(forks_from(&own, &head(201, "a201")));
        assert!(!forks_from(&own, &head(201, "forged")));
        assert!(
            !forks_from(&own, &head(150, "a150")),
            "only from a chunk's last entry"
        );
        assert!(!forks_from(&own, &head(0, "0")));
    }

    #[test]
    fn hostile_bodies_are_refused_without_touching_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(layout.dir()).unwrap();
        std::fs::write(layout.audit(), format!("{}\n", entry(1, "0", "h1"))).unwrap();
        let refused =
            |lines: Vec<String>| matches!(check(&layout, &lines), Err(Refusal::BadRequest(_)));
        assert!(refused(vec![]));
        assert!(refused(vec!["not json".into()]));
        assert!(refused(vec!["x".repeat(MAX_LINE + 1)]));
        assert!(refused(vec![entry(1, "0", "h1"); MAX_ENTRIES + 1]));
        // Forks from nothing in this log (wrong hash, or from before the first entry).
        assert!(refused(vec![entry(2, "other", "z2")]));
        assert!(refused(vec![entry(1, "0", "z1")]));
        assert!(refused(vec![entry(u64::MAX, "h1", "z")]));
    }
}
