//! The audit log: verification names the first bad line for an edit, a deletion, a swapped pair,
//! a forged re-hash and a truncated end; a torn last line is reported distinctly and repaired.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{ca, lines, verify, write_lines};
use koi_certmesh_core::audit::{self, AuditVerdict, Tamper};
use koi_certmesh_core::*;
use serde_json::json;
use time::OffsetDateTime;

fn write_log(path: &Path, ca: &CertAuthority, n: usize) -> AuditHead {
    let mut log = AuditLog::open(path, ca).unwrap();
    for i in 0..n {
        let ev = if i == 0 {
            audit::events::POND_INITIALIZED
        } else {
            audit::events::CERT_ISSUED
        };
        log.append(
            ca,
            ev,
            "ana",
            json!({"host": format!("stone-{i:02}"), "z": 1, "a": [1, 2]}),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    }
    log.head().unwrap()
}

#[test]
fn intact_log_verifies_and_reopens_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    let head = write_log(&p, &ca, 3);
    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::Intact {
            entries: 3,
            head: Some(head.clone())
        }
    );
    let mut log = AuditLog::open(&p, &ca).unwrap();
    let e = log
        .append(&ca, "x", "system", json!(null), OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(e.seq, 4);
    assert_eq!(e.prev_hash, head.hash);
    // Another CA's key does not verify this log.
    let other = self::ca();
    assert!(matches!(
        verify(&p, &other),
        AuditVerdict::Tampered {
            line: 1,
            problem: Tamper::BadSignature
        }
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn edited_line_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 4);
    let mut l = lines(&p);
    l[2] = l[2].replace("\"ana\"", "\"bob\"");
    write_lines(&p, &l);
    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 3,
            problem: Tamper::HashMismatch
        }
    );
    assert!(matches!(
        AuditLog::open(&p, &ca),
        Err(Error::AuditTampered { line: 3, .. })
    ));
}

#[test]
fn edited_and_rehashed_line_fails_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 3);
    let mut l = lines(&p);
    let mut e: AuditEntry = serde_json::from_str(&l[2]).unwrap();
    e.actor = "mallory".into();
    let mut body = serde_json::to_value(&e).unwrap();
    let obj = body.as_object_mut().unwrap();
    obj.remove("hash");
    obj.remove("sig");
    let mut canon = Vec::new();
    audit::canonical_json(&body, &mut canon);
    e.hash = koi_certmesh_core::fingerprint_sha256(&canon);
    l[2] = serde_json::to_string(&e).unwrap();
    write_lines(&p, &l);
    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 3,
            problem: Tamper::BadSignature
        }
    );
}

#[test]
fn deleted_line_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 5);
    let mut l = lines(&p);
    l.remove(1);
    write_lines(&p, &l);
    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 2,
            problem: Tamper::Sequence {
                expected: 2,
                found: 3
            }
        }
    );
}

#[test]
fn swapped_pair_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 5);
    let mut l = lines(&p);
    l.swap(2, 3);
    write_lines(&p, &l);
    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::Tampered {
            line: 3,
            problem: Tamper::Sequence {
                expected: 3,
                found: 4
            }
        }
    );
}

#[test]
fn truncated_end_is_caught_with_the_roster_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    let head = write_log(&p, &ca, 4);
    let mut l = lines(&p);
    l.pop();
    write_lines(&p, &l);
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Intact { entries: 3, .. }
    ));
    assert_eq!(
        audit::verify(&p, &ca.public_key_sec1(), Some(&head)).unwrap(),
        AuditVerdict::Tampered {
            line: 4,
            problem: Tamper::Truncated {
                expected_seq: 4,
                found_seq: 3
            }
        }
    );
}

#[test]
fn torn_tail_is_reported_distinctly_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 3);
    let whole = std::fs::read(&p).unwrap();
    // Simulate a crash halfway through appending a fourth line.
    let mut l4 = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .nth(2)
        .unwrap()
        .to_owned();
    l4.truncate(l4.len() / 2);
    let mut torn = whole.clone();
    torn.extend_from_slice(l4.as_bytes());
    std::fs::write(&p, &torn).unwrap();

    assert_eq!(
        verify(&p, &ca),
        AuditVerdict::TornTail {
            line: 4,
            entries: 3,
            offset: whole.len() as u64
        }
    );
    let e = AuditLog::open(&p, &ca).unwrap_err();
    assert!(matches!(e, Error::AuditTornTail { line: 4, .. }), "{e}");
    assert!(e.to_string().contains("partly written"));

    let removed = audit::repair_torn_tail(&p, &ca.public_key_sec1()).unwrap();
    assert_eq!(removed, l4.len() as u64);
    assert_eq!(std::fs::read(&p).unwrap(), whole);
    let mut log = AuditLog::open(&p, &ca).unwrap();
    log.append(
        &ca,
        audit::events::LOG_REPAIRED,
        "system",
        json!({"bytes": removed}),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Intact { entries: 4, .. }
    ));
}

#[test]
fn a_complete_line_without_newline_is_still_torn() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 2);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.pop();
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::TornTail {
            line: 2,
            entries: 1,
            ..
        }
    ));
}

#[test]
fn repair_refuses_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 3);
    let mut l = lines(&p);
    l[0] = l[0].replace("stone-00", "stone-99");
    let mut s: String = l.iter().map(|s| format!("{s}\n")).collect();
    s.push_str("{\"seq\":4");
    std::fs::write(&p, s).unwrap();
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Tampered { line: 1, .. }
    ));
    assert!(matches!(
        audit::repair_torn_tail(&p, &ca.public_key_sec1()),
        Err(Error::AuditTampered { line: 1, .. })
    ));
}

#[test]
fn garbage_and_blank_lines_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    for junk in [
        &b"\n"[..],
        b"{}\n",
        b"\xff\xfe\n",
        b"[1,2]\n",
        b"{\"seq\":1}\n",
    ] {
        std::fs::write(&p, junk).unwrap();
        assert!(matches!(
            verify(&p, &ca),
            AuditVerdict::Tampered {
                line: 1,
                problem: Tamper::Unparseable { .. }
            }
        ));
    }
}

#[test]
fn appends_signed_by_another_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let ca = ca();
    write_log(&p, &ca, 1);
    let mut log = AuditLog::open(&p, &ca).unwrap();
    let other = self::ca();
    assert!(
        log.append(
            &other,
            "x",
            "system",
            json!(null),
            OffsetDateTime::now_utc()
        )
        .is_err()
    );
    assert!(matches!(
        verify(&p, &ca),
        AuditVerdict::Intact { entries: 1, .. }
    ));
}
