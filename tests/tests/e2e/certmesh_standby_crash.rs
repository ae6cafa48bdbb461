//! Crash safety of the standby CA (issue 11, "the crash-safety test extends to … promotion"):
//! `kill -9` at random moments during `koi certmesh promote` (on the member: the one-shot CLI
//! or its daemon's certmesh; on the primary: its certmesh or its whole daemon) never leaves the
//! member without a matching certificate and key, never leaves it half a standby, never leaves a
//! plaintext key on its disk, and never leaves the primary's roster or audit log unverifiable;
//! a retried promote succeeds. Demotion is killed in [`failover`], takeover in [`takeover`].

mod failover;
mod promote;
mod takeover;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::certmesh::{files_under, public_key_of};
use crate::support::netlab::LabHost;
use crate::support::{KoiEnv, Run};

/// Runs `args` until it exits 0 (the certmesh process may be restarting: exit 3), for at most
/// `limit`; the last run on failure.
#[track_caller]
pub fn run_until_ok(env: &KoiEnv, args: &[&str], limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    loop {
        let run = env.run(args);
        if run.code == Some(0) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never succeeded within {limit:?}: {}{}",
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The member's certificate and key are both there and hold the same public key.
#[track_caller]
pub fn assert_cert_and_key_match(host: &LabHost, context: &str) {
    let dir = host.env.home.join("certs").join(&host.hostname);
    let cert = public_key_of(&dir.join("cert.pem"), true);
    assert!(
        cert.contains("PUBLIC KEY"),
        "{context}: no readable certificate in {}",
        dir.display()
    );
    assert_eq!(
        cert,
        public_key_of(&dir.join("key.pem"), false),
        "{context}: certificate and key differ"
    );
}

/// What a standby directory must hold to be whole: its record, the root, the sealed vault, the
/// audit log copy (a demoted CA's may be empty until its first sync) and, after a promotion,
/// the roster manifest.
#[track_caller]
pub fn assert_standby_whole(dir: &Path, with_manifest: bool, context: &str) {
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("standby.json"))
            .unwrap_or_else(|e| panic!("{context}: standby/ without standby.json: {e}")),
    )
    .unwrap_or_else(|e| panic!("{context}: standby.json does not parse: {e}"));
    // A versioned store file: `{version, data}`.
    assert_eq!(record["data"]["role"], "standby", "{context}: {record}");
    for name in ["ca/ca.pem", "ca/vault.sealed"] {
        let len = std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        assert!(len > 0, "{context}: standby/{name} missing or empty");
    }
    assert!(
        dir.join("audit.log").exists(),
        "{context}: standby/audit.log missing"
    );
    if with_manifest {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("roster-manifest.json"))
                .unwrap_or_else(|e| panic!("{context}: no roster manifest: {e}")),
        )
        .unwrap_or_else(|e| panic!("{context}: the roster manifest does not parse: {e}"));
        assert!(manifest["sig"].is_string(), "{context}: {manifest}");
    }
}

/// No PEM private key under `home` but the machine's own leaf key (and a renewal's staged one),
/// and none of `secrets` (raw bytes, e.g. the TOTP secret or the CA key's public point, which a
/// plaintext PKCS#8 CA key would contain) anywhere.
#[track_caller]
pub fn assert_no_plaintext_key(home: &Path, hostname: &str, secrets: &[&[u8]], context: &str) {
    let own = home.join("certs").join(hostname);
    let allowed = [own.join("key.pem"), own.join(".renewing").join("key.pem")];
    for file in files_under(home) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        if !allowed.contains(&file) {
            assert!(
                !has(b"PRIVATE KEY"),
                "{context}: a PEM private key in {}",
                file.display()
            );
        }
        for secret in secrets {
            assert!(
                !has(secret),
                "{context}: a secret in the clear in {}",
                file.display()
            );
        }
    }
}

/// `koi certmesh log --verify` and `koi certmesh status` succeed on `env` (a CA).
#[track_caller]
pub fn assert_ca_verifies(env: &KoiEnv, context: &str) {
    let verified = run_until_ok(
        env,
        &["certmesh", "status", "--json"],
        Duration::from_secs(30),
    );
    assert!(
        verified.json()["details"].is_object(),
        "{context}: {}",
        verified.stdout
    );
    let log = env.run(&["certmesh", "log", "--verify"]);
    assert_eq!(
        log.code,
        Some(0),
        "{context}: the roster or audit log does not verify: {}{}",
        log.stdout,
        log.stderr
    );
}
