//! `kill -9` during `koi certmesh promote`, in a two-host lab (A the primary under its daemon,
//! B a member under its daemon, which runs the promotion the CLI forwards to it). Each cycle
//! gets a fresh code (A's `rotate-secret` restarts the code guard, so codes need not wait for
//! the next 30 s step), starts a promote on B and, after a delay spread over a promote's
//! measured duration, SIGKILLs one of: B's one-shot CLI, B's certmesh (the daemon restarts
//! it), A's certmesh (restarted by A's daemon, then unlocked) or A's whole daemon (restarted,
//! then unlocked). Then: B's certificate and key match; B is a member or a whole standby whose
//! sealed vault opens with its passphrase (never `standby.json` without a vault or the
//! reverse); B's disk holds no PEM private key but its leaf key and neither the TOTP secret
//! nor the CA key in the clear; A's roster and audit log verify; and every third cycle (and at
//! the end) a promote runs to completion. Every other cycle starts from B as a member (its
//! member state put back, as after a promotion whose answer was lost), the others from a
//! standby being promoted again. At the end, `koi certmesh log --verify` on the standby shows its
//! copy of the primary's log (`copy_of`), verified, with its `standby_promoted` entries.

use crate::support::certmesh::join_host;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{
    assert_ca_verifies, assert_cert_and_key_match, assert_no_plaintext_key, assert_standby_whole,
    run_until_ok,
};
use crate::support::certmesh::{ca_on, certmesh_bin, certmesh_pid, code, fresh_code, wait_for_api};
use crate::support::kill::{Jitter, children, kill9};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::{DaemonProc, root_or_skip};

/// Promotions killed.
const CYCLES: usize = 32;

/// Fast restarts of a killed plugin.
const DAEMON_ENV: [(&str, &str); 2] = [
    ("KOI_RESTART_INITIAL_MS", "20"),
    ("KOI_RESTART_MAX_MS", "200"),
];

/// What a cycle kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// B's one-shot `koi certmesh promote` (the daemon's call goes on or is cancelled).
    Cli,
    /// B's certmesh process under B's daemon, which runs the promotion.
    MemberCertmesh,
    /// A's certmesh process under A's daemon (the primary's side of the transfer).
    PrimaryCertmesh,
    /// A's whole daemon, restarted after.
    PrimaryDaemon,
}

const VICTIMS: [Victim; 4] = [
    Victim::Cli,
    Victim::MemberCertmesh,
    Victim::PrimaryCertmesh,
    Victim::PrimaryDaemon,
];

struct Lab<'l> {
    a: &'l LabHost,
    b: &'l LabHost,
    a_daemon: DaemonProc,
    b_daemon: DaemonProc,
    /// B's certmesh state as a member, before any promotion.
    member_state: std::path::PathBuf,
    pass_file: String,
    standby_pass: String,
    root: std::path::PathBuf,
}

impl Lab<'_> {
    /// A fresh enrollment secret on A (which resets its code guard) and its current code; also
    /// the secret's base32 text (to look for on B's disk).
    fn code(&self) -> (String, String) {
        let rotated = run_until_ok(
            &self.a.env,
            &["certmesh", "rotate-secret", "--json"],
            Duration::from_secs(30),
        );
        let uri = rotated.json()["otpauth_uri"]
            .as_str()
            .expect("otpauth_uri")
            .to_owned();
        let secret = uri
            .split("secret=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .expect("secret in the URI")
            .to_owned();
        (code(&uri, 0), secret)
    }

    fn promote(&self, code: &str) -> std::process::Command {
        let mut cmd = self.b.env.command(&[
            "certmesh",
            "promote",
            "--code",
            code,
            "--passphrase-file",
            &self.standby_pass,
            "--json",
        ]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// A is unlocked (after its certmesh or daemon restarted) and its API answers.
    fn unlock_a(&self) {
        run_until_ok(
            &self.a.env,
            &["certmesh", "unlock", "--passphrase-file", &self.pass_file],
            Duration::from_secs(30),
        );
        wait_for_api(self.a, &self.a.ip);
    }

    /// B back to a member (its daemon stopped, the member state put back, started again): as
    /// after a promotion whose answer was lost, A still lists B as a standby.
    fn reset_b(&mut self) {
        self.b_daemon.terminate(Duration::from_secs(10));
        let certmesh = self.b.env.home.join("certmesh");
        let _ = std::fs::remove_dir_all(&certmesh);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.member_state)
            .arg(&certmesh)
            .status()
            .expect("cp");
        assert!(ok.success(), "could not put B's member state back");
        self.b_daemon = self.b.env.start_daemon(&DAEMON_ENV);
    }

    /// A promote that must succeed.
    fn promote_ok(&self, context: &str) {
        let (code, _) = self.code();
        let out = self.promote(&code).output().expect("promote");
        if !out.status.success() {
            let log = self.b_daemon.log_text();
            let tail: String = log
                .chars()
                .skip(log.chars().count().saturating_sub(6000))
                .collect();
            panic!(
                "{context}: promote failed: {}{}\nB's daemon log ends:\n{tail}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Waits (up to 30 s) for a killed or cut-off CLI, then kills it.
fn reap(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn kill_tree(pid: u32) {
    let mut tree = vec![pid];
    let mut k = 0;
    while k < tree.len() {
        let more = children(tree[k]);
        tree.extend(more);
        k += 1;
    }
    for p in tree.iter().rev() {
        kill9(*p);
    }
}

/// The CA key's public point (65 raw bytes), which a plaintext PKCS#8 of the CA key carries.
fn ca_point(root: &std::path::Path) -> Vec<u8> {
    let spki = std::process::Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$0\" -pubkey -noout | openssl pkey -pubin -outform DER")
        .arg(root)
        .output()
        .expect("openssl");
    assert!(spki.status.success(), "openssl could not read the root");
    spki.stdout[spki.stdout.len() - 65..].to_vec()
}

/// B's state after a kill: a member, or a whole standby whose vault opens.
fn check_member_side(lab: &Lab<'_>, secret: &str, point: &[u8], context: &str) -> bool {
    let b = lab.b;
    assert_cert_and_key_match(b, context);
    // `status` reads the standby record, putting back a directory a killed swap moved aside.
    let status = run_until_ok(
        &b.env,
        &["certmesh", "status", "--json"],
        Duration::from_secs(30),
    )
    .json();
    let dir = b.env.home.join("certmesh/standby");
    let is_standby = dir.exists();
    assert_eq!(
        status["details"]["role"] == "standby",
        is_standby,
        "{context}: status and disk disagree: {status}"
    );
    if is_standby {
        assert_standby_whole(&dir, true, context);
        // The sealed vault opens with the standby's passphrase.
        let opened = run_until_ok(
            &b.env,
            &[
                "certmesh",
                "unlock",
                "--passphrase-file",
                &lab.standby_pass,
                "--json",
            ],
            Duration::from_secs(30),
        );
        assert_eq!(
            opened.json()["unlocked"],
            true,
            "{context}: {}",
            opened.stdout
        );
    }
    assert_no_plaintext_key(
        &b.env.home,
        &b.hostname,
        &[secret.as_bytes(), point],
        context,
    );
    is_standby
}

#[test]
fn kill_9_during_promote_never_leaves_half_a_standby_a_plaintext_key_or_a_broken_log() {
    if !root_or_skip(
        "kill_9_during_promote_never_leaves_half_a_standby_a_plaintext_key_or_a_broken_log",
    ) {
        return;
    }
    let mut jitter = Jitter::new("promote crash-safety");
    let started = Instant::now();
    let net = SwitchLab::new("pk", 2);
    for h in &net.hosts {
        h.env.install(&certmesh_bin(), "certmesh");
    }
    let (a, b) = (net.host(0), net.host(1));
    let (a_daemon, ca) = ca_on(a, &DAEMON_ENV, &["--no-trust", "--json"]);
    let (uri, fingerprint, pass_file) = (ca.uri, ca.fingerprint, ca.pass_file);
    let mut last = i64::MIN;
    let join_code = fresh_code(&uri, &mut last);
    join_host(b, &a.ip, &fingerprint, &join_code).expect_code(0);
    let member_state = b.env.dir.path().join("member-state");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(b.env.home.join("certmesh"))
        .arg(&member_state)
        .status()
        .expect("cp");
    assert!(copied.success());
    let b_daemon = b.env.start_daemon(&DAEMON_ENV);
    let standby_pass = b.env.dir.path().join("standby-pass");
    std::fs::write(&standby_pass, "crash standby passphrase 5e1d\n").expect("standby pass");
    let mut lab = Lab {
        a,
        b,
        a_daemon,
        b_daemon,
        member_state,
        pass_file,
        standby_pass: standby_pass.display().to_string(),
        root: ca.ca_pem,
    };
    let point = ca_point(&lab.root);

    // One whole promotion, timed: the kills land across its length.
    let (first_code, _) = lab.code();
    let timer = Instant::now();
    let first = lab.promote(&first_code).output().expect("promote");
    let whole = u64::try_from(timer.elapsed().as_millis()).unwrap_or(1000);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (mut from_member, mut standby_after) = (0, 0);
    for i in 0..CYCLES {
        // Every other cycle starts from a member (the rest from a standby, promoted again).
        if i % 2 == 0 {
            lab.reset_b();
            from_member += 1;
        }
        let victim = VICTIMS[usize::try_from(jitter.below(4)).unwrap_or(0)];
        let delay = jitter.below(whole * 11 / 10);
        let context = format!("cycle {i} ({victim:?} killed after {delay} of {whole} ms)");
        let (code, secret) = lab.code();
        let child = lab.promote(&code).spawn().expect("spawn promote");
        std::thread::sleep(Duration::from_millis(delay));
        match victim {
            Victim::Cli => kill_tree(child.id()),
            Victim::MemberCertmesh => kill9(certmesh_pid(&b.env)),
            Victim::PrimaryCertmesh => kill9(certmesh_pid(&a.env)),
            Victim::PrimaryDaemon => {
                kill_tree(lab.a_daemon.child.id());
                let _ = lab.a_daemon.child.wait();
            }
        }
        reap(child);
        match victim {
            Victim::PrimaryDaemon => {
                // Its plugins follow it; then a new daemon starts and the CA is unlocked.
                let _ = std::fs::remove_file(a.env.home.join("run/koi.sock"));
                lab.a_daemon = a.env.start_daemon(&DAEMON_ENV);
                lab.unlock_a();
            }
            Victim::PrimaryCertmesh => lab.unlock_a(),
            _ => {}
        }
        assert_ca_verifies(&a.env, &context);
        if check_member_side(&lab, &secret, &point, &context) && i % 2 == 0 {
            standby_after += 1;
        }
        if i % 3 == 2 {
            lab.promote_ok(&format!("{context}, the retry"));
            assert!(check_member_side(&lab, &secret, &point, &context));
        }
    }
    eprintln!(
        "{CYCLES} promotions killed; of the {from_member} that started from a member, \
         {standby_after} left a standby and the rest a member (a promote takes {whole} ms); \
         {:?} in all",
        started.elapsed()
    );
    // The last promote completes: B is a whole standby, A's log holds every promotion, verified.
    lab.promote_ok("after the kills");
    let (_, secret) = lab.code();
    assert!(check_member_side(&lab, &secret, &point, "at the end"));
    assert_ca_verifies(&a.env, "at the end");
    let roster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.env.home.join("certmesh/roster.json")).expect("roster"),
    )
    .expect("roster JSON");
    assert_eq!(
        roster["mesh"]["standbys"],
        serde_json::json!([b.hostname]),
        "{roster}"
    );
    // `koi certmesh log` on the standby shows its copy of A's log, verified under its root.
    let copy = b.env.run(&["certmesh", "log", "--verify", "--json"]);
    copy.expect_code(0);
    let copy = copy.json();
    assert_eq!(copy["copy_of"], a.hostname.as_str(), "{copy}");
    assert!(
        copy["verified"]
            .as_str()
            .unwrap_or("")
            .starts_with("intact"),
        "{copy}"
    );
    let entries = copy["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["event"] == "standby_promoted"
                && e["details"]["standby"] == b.hostname.as_str()),
        "{copy}"
    );
    assert!(
        !b.env.home.join("certmesh/standby.staging").exists()
            && !b.env.home.join("certmesh/standby.old").exists(),
        "a completed promote leaves no staging or moved-aside directory"
    );
}
