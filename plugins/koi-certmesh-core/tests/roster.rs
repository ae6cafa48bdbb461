//! The roster round-trips through JSON, refuses unknown versions and fields, and saves atomically.

#![allow(clippy::unwrap_used)]

use koi_certmesh_core::*;
use time::OffsetDateTime;

fn sample() -> Roster {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap();
    let ca = CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", scope.clone()),
        now,
    )
    .unwrap();
    let mut r = Roster::new(
        TrustProfile::Team,
        ca.fingerprint(),
        scope,
        "stone-01".into(),
        Some("ana".into()),
        now,
    );
    let mut req = LeafRequest::new("stone-02.lab.example");
    req.ip_addresses.push("10.77.0.2".parse().unwrap());
    let issued = ca.issue_for_device(&req, now).unwrap();
    let mut m = Member::from_issued("stone-02", &issued.cert, Role::Device, Some("ana".into()));
    m.reload_hook = Some("systemctl reload nginx".into());
    r.upsert(m);
    r.mesh.audit_head = Some(AuditHead {
        seq: 2,
        hash: "ab".repeat(32),
    });
    r
}

#[test]
fn roster_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("roster.json");
    let r = sample();
    assert_eq!(
        r.mesh.enrollment,
        EnrollmentState::Closed,
        "team profile starts closed"
    );
    r.save(&p).unwrap();
    let back = Roster::load(&p).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.member("stone-02").unwrap().role, Role::Device);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("\"version\": 1") && text.contains("\"profile\": \"team\""),
        "{text}"
    );
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
fn newer_version_and_unknown_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("roster.json");
    sample().save(&p).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["version"] = 2.into();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = Roster::load(&p).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    v["version"] = 1.into();
    v["mesh"]["surprise"] = true.into();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(Roster::load(&p), Err(Error::Format { .. })));
    std::fs::write(&p, b"\x00garbage").unwrap();
    assert!(matches!(Roster::load(&p), Err(Error::Format { .. })));
}

#[test]
fn save_replaces_whole_file_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("roster.json");
    let mut r = sample();
    r.save(&p).unwrap();
    let old = std::fs::read(&p).unwrap();
    r.mesh.enrollment = EnrollmentState::Open;
    r.save(&p).unwrap();
    let new = std::fs::read(&p).unwrap();
    assert_ne!(old, new);
    assert_eq!(Roster::load(&p).unwrap(), r);
    // Saving into a missing directory fails and leaves nothing behind.
    let bad = dir.path().join("missing/roster.json");
    assert!(matches!(r.save(&bad), Err(Error::Io { .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn enrollment_windows() {
    let now = OffsetDateTime::now_utc();
    assert!(EnrollmentState::Open.is_open(now));
    assert!(!EnrollmentState::Closed.is_open(now));
    let w = EnrollmentState::OpenUntil {
        until: now + time::Duration::minutes(15),
    };
    assert!(w.is_open(now) && !w.is_open(now + time::Duration::minutes(16)));
}
