//! Unit tests of the renewal worker and the batch commit, on a CA built in a temp directory
//! (test KDF) with members enrolled through the join path's functions.

use super::*;

use koi_certmesh_core::audit::{self, AuditVerdict};
use koi_certmesh_core::{
    AuditLog, CaOptions, CaStore, CertAuthority, KdfParams, Member, Passphrase, Role, Roster,
    Scope, TotpSecret, TrustProfile,
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::json;
use time::OffsetDateTime;

use crate::authority::CaSession;
use crate::layout::Layout;

fn csr(host: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// A CA in `dir` with `members` enrolled; returns the authority (unlocked) and each member's
/// host name and certificate (DER).
fn mesh(dir: &std::path::Path, members: usize) -> (Arc<Authority>, Vec<(String, Vec<u8>)>) {
    let layout = Layout::new(dir);
    let now = OffsetDateTime::now_utc();
    let pass = Passphrase::new("correct horse battery staple");
    let scope = Scope::mesh_default::<&str>(&[]).unwrap();
    let ca = CertAuthority::create(&CaOptions::new("test CA", scope.clone()), now).unwrap();
    std::fs::create_dir_all(layout.dir()).unwrap();
    let unlocked = CaStore::new(layout.ca_dir())
        .create(
            ca,
            TotpSecret::generate(),
            &pass,
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
    let mut roster = Roster::new(
        TrustProfile::Personal,
        unlocked.ca().fingerprint(),
        scope,
        "test-ca".into(),
        None,
        now,
    );
    let mut log = AuditLog::open(&layout.audit(), unlocked.ca()).unwrap();
    log.append(unlocked.ca(), "pond_initialized", "test", json!({}), now)
        .unwrap();
    roster.mesh.audit_head = log.head();
    roster.save(&layout.roster()).unwrap();
    drop((log, unlocked));
    let (mut session, _) = CaSession::open(&layout, &pass, "test", "test").unwrap();
    let mut enrolled = Vec::new();
    for i in 0..members {
        let host = format!("m{i}");
        let csr = csr(&host);
        let (leaf, mut dropped) =
            crate::certify::leaf(session.unlocked(), &roster, &host, &[], &[], &csr).unwrap();
        let issued = crate::certify::sign(
            session.unlocked(),
            &roster,
            leaf,
            &mut dropped,
            &host,
            &csr,
            now,
        )
        .unwrap();
        session
            .audit("member_enrolled", &host, json!({"hostname": host}))
            .unwrap();
        roster.upsert(Member::from_issued(&host, &issued, Role::Member, None));
        enrolled.push((host, crate::x509::der(&issued.cert_pem).unwrap()));
    }
    session.save_roster(&layout, &mut roster).unwrap();
    let authority = Authority::new(layout);
    authority.install(session);
    (authority, enrolled)
}

fn request(host: &str, extra: &[&str]) -> RenewRequest {
    RenewRequest {
        csr_pem: csr(host),
        extra_names: extra.iter().map(|s| (*s).to_owned()).collect(),
        ip_addresses: Vec::new(),
        reload_hook: None,
        last_hook: None,
    }
}

fn peer() -> IpAddr {
    "10.0.0.7".parse().unwrap()
}

fn verified(authority: &Authority) -> (u64, Vec<String>) {
    let layout = authority.layout();
    let roster = Roster::load(&layout.roster()).unwrap();
    let ca_pem = std::fs::read_to_string(layout.ca_dir().join("ca.pem")).unwrap();
    let key = crate::x509::public_key(&ca_pem).unwrap();
    let AuditVerdict::Intact { entries, .. } =
        audit::verify(&layout.audit(), &key, roster.mesh.audit_head.as_ref()).unwrap()
    else {
        panic!("the audit log does not verify");
    };
    let events = std::fs::read_to_string(layout.audit())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].to_string())
        .collect();
    (entries, events)
}

use serde_json::Value;

#[test]
fn a_batch_renews_every_member_and_refuses_a_stranger_with_the_roster_saved_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, members) = mesh(dir.path(), 3);
    let (_, stranger) = mesh(tempfile::tempdir().unwrap().path(), 1);
    let reqs: Vec<RenewRequest> = members.iter().map(|(h, _)| request(h, &[])).collect();
    let mut jobs: Vec<(&RenewRequest, IpAddr, Option<&[u8]>)> = reqs
        .iter()
        .zip(&members)
        .map(|(r, (_, der))| (r, peer(), Some(der.as_slice())))
        .collect();
    let stranger_req = request("m0", &[]);
    jobs.push((&stranger_req, peer(), Some(stranger[0].1.as_slice())));
    let outcomes = authority.renew_batch(&jobs);
    assert_eq!(outcomes.len(), 4);
    // Answered only after the roster on disk records every renewal.
    let roster = Roster::load(&authority.layout().roster()).unwrap();
    for ((host, old), outcome) in members.iter().zip(&outcomes) {
        let answer = outcome.as_ref().unwrap();
        assert_eq!(&answer.hostname, host);
        let entry = roster.member(host).unwrap();
        assert_eq!(
            Some(entry.fingerprint.as_str()),
            crate::x509::fingerprint(&answer.cert_pem).as_deref()
        );
        let old_fp = koi_certmesh_core::fingerprint_sha256(old);
        assert_eq!(entry.previous_fingerprint.as_deref(), Some(old_fp.as_str()));
        // The batch's saved roster (the stranger's refusal, recorded after it, is one more entry).
        assert_eq!(
            answer.mesh.roster_version + 1,
            roster.mesh.audit_head.as_ref().unwrap().seq
        );
    }
    assert!(matches!(outcomes[3], Err(Refusal::NotMember(_))));
    let (_, events) = verified(&authority);
    let renewed = events
        .iter()
        .filter(|e| e.contains("certificate_renewed"))
        .count();
    assert_eq!(renewed, 3);
    assert!(events.last().unwrap().contains("enrollment_refused"));
}

#[test]
fn renewals_in_one_batch_see_each_other_in_the_roster() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, members) = mesh(dir.path(), 2);
    // Both ask for the same extra name: the first renewal takes it, the second is refused as
    // it would be one after the other.
    let (a, b) = (
        request("m0", &["shared.lan"]),
        request("m1", &["shared.lan"]),
    );
    let outcomes = authority.renew_batch(&[
        (&a, peer(), Some(members[0].1.as_slice())),
        (&b, peer(), Some(members[1].1.as_slice())),
    ]);
    assert!(
        outcomes[0]
            .as_ref()
            .unwrap()
            .dns_names
            .contains(&"shared.lan".to_owned())
    );
    assert!(
        matches!(&outcomes[1], Err(Refusal::NotPermitted(m)) if m.contains("shared.lan")),
        "{:?}",
        outcomes[1]
    );
    verified(&authority);
}

#[test]
fn concurrent_submissions_are_all_answered_by_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (authority, members) = mesh(dir.path(), 12);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let answers: Vec<_> = members
        .iter()
        .map(|(host, der)| {
            let cert = Arc::new(CertificateDer::from(der.clone()));
            submit(&authority, request(host, &[]), peer(), Some(cert)).unwrap()
        })
        .collect();
    let outcomes = rt.block_on(async {
        let mut all = Vec::new();
        for a in answers {
            all.push(a.await.unwrap());
        }
        all
    });
    for ((host, _), outcome) in members.iter().zip(outcomes) {
        assert_eq!(&outcome.unwrap().hostname, host);
    }
    let (_, events) = verified(&authority);
    let renewed = events
        .iter()
        .filter(|e| e.contains("certificate_renewed"))
        .count();
    assert_eq!(renewed, 12);
}
