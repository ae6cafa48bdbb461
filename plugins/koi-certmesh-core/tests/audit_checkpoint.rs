//! The audit log at scale: reading the newest entries from the end, streaming verification, and
//! opening from a signed checkpoint (what it catches at open, and what only `verify` catches).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{ca, lines, verify, write_lines};
use koi_certmesh_core::audit::{self, AuditVerdict, Tamper};
use koi_certmesh_core::audit_tail::read_last;
use koi_certmesh_core::checkpoint::{self, CHECKPOINT_EVERY, Checkpoint};
use koi_certmesh_core::*;
use serde_json::json;
use time::OffsetDateTime;

fn write_log(path: &Path, ca: &CertAuthority, n: usize, pad: usize) {
    let mut log = AuditLog::open(path, ca).unwrap();
    for i in 0..n {
        log.append(
            ca,
            "cert_issued",
            "ana",
            json!({"i": i, "pad": "p".repeat(pad)}),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    }
}

/// Changes entry `seq`'s details without re-signing (the edit an attacker without the key makes).
fn edit(path: &Path, seq: usize) {
    let mut l = lines(path);
    l[seq - 1] = l[seq - 1].replace("\"ana\"", "\"eve\"");
    write_lines(path, &l);
}

fn open_error(path: &Path, ca: &CertAuthority) -> String {
    AuditLog::open(path, ca).unwrap_err().to_string()
}

#[test]
fn the_last_entries_come_from_the_end_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    // Entries of ~20 KB, so a 64 KiB block holds only a few and lines straddle blocks.
    write_log(&p, &ca, 40, 20_000);
    let last = read_last(&p, 7).unwrap();
    assert_eq!(
        last.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (34..=40).collect::<Vec<_>>()
    );
    assert_eq!(read_last(&p, 1000).unwrap().len(), 40);
    assert_eq!(read_last(&p, 0).unwrap().len(), 0);
    // A torn last line (crash mid-append) is skipped, even a long one.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(&vec![b'x'; 150_000]);
    std::fs::write(&p, &bytes).unwrap();
    let last = read_last(&p, 2).unwrap();
    assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![39, 40]);
    assert!(read_last(&dir.path().join("none"), 5).unwrap().is_empty());
}

#[test]
fn a_checkpoint_is_written_every_checkpoint_every_appends_and_signed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    write_log(&p, &ca, CHECKPOINT_EVERY as usize + 5, 0);
    let cp_path = checkpoint::checkpoint_path(&p);
    let cp: Checkpoint = serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    assert_eq!(cp.seq, CHECKPOINT_EVERY);
    let l = lines(&p);
    let offset: usize = l[..CHECKPOINT_EVERY as usize]
        .iter()
        .map(|s| s.len() + 1)
        .sum();
    assert_eq!(cp.offset, offset as u64);
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ca.public_key_sec1()).unwrap();
    assert!(checkpoint::load(&p, &key).is_some());
    // Another CA's signature is not accepted.
    let other = self::ca();
    let forged = Checkpoint::sign(&other, cp.seq, cp.offset, &cp.hash).unwrap();
    checkpoint::save(&p, &forged).unwrap();
    assert!(checkpoint::load(&p, &key).is_none());
}

#[test]
fn open_catches_tampering_after_the_checkpoint_and_verify_catches_it_before() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    let n = CHECKPOINT_EVERY as usize + 200;
    write_log(&p, &ca, n, 0);
    let pristine = std::fs::read(&p).unwrap();

    // After the checkpoint: open (unlock) refuses, naming the line; verify agrees.
    edit(&p, n - 50);
    let err = open_error(&p, &ca);
    assert!(err.contains(&format!("line {}", n - 50)), "{err}");
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Tampered { line, problem: Tamper::HashMismatch } if line == n - 50
    ));

    // The entry the checkpoint ends at: open refuses.
    std::fs::write(&p, &pristine).unwrap();
    edit(&p, CHECKPOINT_EVERY as usize);
    let err = open_error(&p, &ca);
    assert!(err.contains("checkpoint"), "{err}");

    // Before the checkpoint: open does not read those bytes (that is the point), but a full
    // verification catches the edit at its line.
    std::fs::write(&p, &pristine).unwrap();
    edit(&p, 10);
    assert!(AuditLog::open(&p, &ca).is_ok());
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 10,
            problem: Tamper::HashMismatch
        }
    ));
    // Without a (valid) checkpoint, open verifies everything and catches it too.
    std::fs::remove_file(checkpoint::checkpoint_path(&p)).unwrap();
    assert!(open_error(&p, &ca).contains("line 10"));

    // Cutting the log below the checkpoint is caught.
    std::fs::write(&p, &pristine).unwrap();
    AuditLog::open(&p, &ca)
        .unwrap()
        .write_checkpoint(&ca)
        .unwrap();
    let l = lines(&p);
    write_lines(&p, &l[..CHECKPOINT_EVERY as usize / 2]);
    assert!(open_error(&p, &ca).contains("checkpoint"));
}

#[test]
fn open_from_a_checkpoint_repairs_a_torn_tail_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    write_log(&p, &ca, CHECKPOINT_EVERY as usize + 3, 0);
    let before = std::fs::metadata(&p).unwrap().len();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(b"{\"seq\":1004,\"ts\":\"2");
    std::fs::write(&p, &bytes).unwrap();
    assert!(open_error(&p, &ca).contains("partly written"));
    let (mut log, torn) = AuditLog::open_repairing(&p, &ca).unwrap();
    assert_eq!(torn, 19);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), before);
    let e = log
        .append(&ca, "x", "system", json!(null), OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(e.seq, CHECKPOINT_EVERY + 4);
    log.write_checkpoint(&ca).unwrap();
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Intact { entries, .. } if entries == CHECKPOINT_EVERY + 4
    ));
    let reopened = AuditLog::open(&p, &ca).unwrap();
    assert_eq!(reopened.head().unwrap().seq, CHECKPOINT_EVERY + 4);
}

#[test]
fn verification_streams_and_bounds_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    write_log(&p, &ca, 3, 0);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(&vec![b'{'; audit::MAX_LINE_BYTES + 10]);
    bytes.push(b'\n');
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 4,
            problem: Tamper::Unparseable { .. }
        }
    ));
}

/// Group commit (the CA's renewal batch): entries appended without fsync are never covered by a
/// checkpoint until `sync`, and after it the log verifies and reopens with all of them.
#[test]
fn unsynced_entries_get_no_checkpoint_until_synced_and_then_verify() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let ca = ca();
    let mut log = AuditLog::open(&p, &ca).unwrap();
    let n = usize::try_from(CHECKPOINT_EVERY).unwrap() + 3;
    for i in 0..n {
        log.append_unsynced(
            &ca,
            "certificate_renewed",
            "m",
            json!({"i": i}),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    }
    // Past the checkpoint interval, yet no checkpoint covers entries that are not durable.
    assert!(!checkpoint::checkpoint_path(&p).exists());
    log.sync(&ca).unwrap();
    assert!(checkpoint::checkpoint_path(&p).exists());
    let head = log.head().unwrap();
    assert_eq!(head.seq, u64::try_from(n).unwrap());
    drop(log);
    let key = ca.public_key_sec1();
    assert!(matches!(
        audit::verify(&p, &key, Some(&head)).unwrap(),
        AuditVerdict::Intact { .. }
    ));
    let mut reopened = AuditLog::open(&p, &ca).unwrap();
    assert_eq!(reopened.head().unwrap(), head);
    // `append` (fsynced) goes on from there.
    reopened
        .append(&ca, "x", "m", json!({}), OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(reopened.head().unwrap().seq, head.seq + 1);
}
