//! Crash safety of renewal: `kill -9` at random moments during renewals never leaves a member
//! without a readable certificate and matching key, and the next renewal finishes what a killed
//! one left and succeeds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ca_with_env, join_b, verifies};
use crate::support::certmesh::cert_dir;
use crate::support::certmesh::public_key_of;
use crate::support::netlab::NetLab;
use crate::support::root_or_skip;

/// Renewals killed by the crash test.
const CYCLES: usize = 60;

/// The certificate and key a member holds once an interrupted install is finished: a staged file
/// wins when the staging directory has its `ready` marker (`renew_files::finish`).
fn effective_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let stage = dir.join(".renewing");
    let pick = |name: &str| {
        let staged = stage.join(name);
        if stage.join("ready").exists() && staged.exists() {
            staged
        } else {
            dir.join(name)
        }
    };
    (pick("cert.pem"), pick("key.pem"))
}

#[test]
fn kill_9_during_renewals_never_leaves_a_member_without_a_matching_certificate_and_key() {
    if !root_or_skip(
        "kill_9_during_renewals_never_leaves_a_member_without_a_matching_certificate_and_key",
    ) {
        return;
    }
    use crate::support::kill::{Jitter, children, kill9};
    let mut jitter = Jitter::new("renewal crash-safety");
    let lab = NetLab::new("rk");
    let (_a, ca) = ca_with_env(&lab, &[]);
    join_b(&lab, &ca);
    let dir = cert_dir(&lab.b);
    // Kills land between half of and a little past one whole renewal, where the files are written.
    let started = Instant::now();
    lab.b
        .env
        .run(&["certmesh", "renew", "--now"])
        .expect_code(0);
    let whole = u64::try_from(started.elapsed().as_millis()).unwrap_or(200);
    let mut interrupted = 0;
    for i in 0..CYCLES {
        let child = lab
            .b
            .env
            .command(&["certmesh", "renew", "--now"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn renew");
        std::thread::sleep(Duration::from_millis(
            whole / 2 + jitter.below(whole * 3 / 5),
        ));
        let mut child = child;
        let mut tree = vec![child.id()];
        let mut k = 0;
        while k < tree.len() {
            let more = children(tree[k]);
            tree.extend(more);
            k += 1;
        }
        for pid in tree.iter().rev() {
            kill9(*pid);
        }
        let _ = child.wait();
        if dir.join(".renewing").exists() {
            interrupted += 1;
        }
        // What the member holds (once finished) always matches: certificate and key, both there.
        let (cert, key) = effective_pair(&dir);
        let cert_key = public_key_of(&cert, true);
        assert!(
            cert_key.contains("PUBLIC KEY"),
            "cycle {i}: no readable certificate"
        );
        assert_eq!(
            cert_key,
            public_key_of(&key, false),
            "cycle {i}: certificate and key differ"
        );
        verifies(&ca.ca_pem, &cert);
    }
    eprintln!(
        "{interrupted} of {CYCLES} kills left an install to finish (a renewal takes {whole} ms)"
    );
    // The next renewal finishes any interrupted install and succeeds, even when the CA's answer to
    // a killed one was lost (the previous certificate still renews); the CA's log verifies.
    let done = lab.b.env.run(&["certmesh", "renew", "--now", "--json"]);
    done.expect_code(0);
    assert!(!dir.join(".renewing").exists());
    assert_eq!(
        public_key_of(&dir.join("cert.pem"), true),
        public_key_of(&dir.join("key.pem"), false)
    );
    verifies(&ca.ca_pem, &dir.join("cert.pem"));
    lab.a
        .env
        .run(&["certmesh", "log", "--verify"])
        .expect_code(0);
}
