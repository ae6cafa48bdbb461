//! Crash safety of koi-certmesh's state: `kill -9` at random moments during 200 cycles of
//! creating meshes, issuing certificates and answering joins never leaves a roster or an audit log
//! that fails to parse or verify (`koi certmesh log --verify` loads the roster and checks every
//! line's hash chain and signature against the roster's anchor). Loopback only: the CA's API is
//! bound to 127.0.0.1 and koi-mdns is not installed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::certmesh::certmesh_pid;
use crate::support::kill::{Jitter, children, kill9};
use crate::support::{KoiEnv, bin_dir, free_port};

const PASSPHRASE: &str = "crash passphrase 42";

/// Kills `child` (a one-shot koi) and its plugin with SIGKILL after `delay`.
fn kill_after(mut child: Child, delay: Duration) {
    std::thread::sleep(delay);
    for plugin in children(child.id()) {
        kill9(plugin);
    }
    kill9(child.id());
    let _ = child.wait();
}

fn assert_state_verifies(env: &KoiEnv, context: &str) {
    if !env.home.join("certmesh/roster.json").exists() {
        return;
    }
    // Under the daemon the certmesh process may still be restarting (exit 3): wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut run = env.run(&["certmesh", "log", "--verify"]);
    while run.code == Some(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        run = env.run(&["certmesh", "log", "--verify"]);
    }
    assert_eq!(
        run.code,
        Some(0),
        "{context}: the roster or audit log no longer verifies:\n{}{}",
        run.stdout,
        run.stderr
    );
}

fn setup() -> (KoiEnv, String) {
    let env = KoiEnv::new();
    env.install(&bin_dir().join("koi-certmesh"), "certmesh");
    let pass = env.dir.path().join("pass");
    std::fs::write(&pass, PASSPHRASE).expect("passphrase file");
    (env, pass.display().to_string())
}

#[test]
fn kill_9_during_200_create_issue_and_join_cycles_never_breaks_roster_or_audit_log() {
    let mut jitter = Jitter::new("crash-safety");
    let started = Instant::now();
    let (env, pass) = setup();
    let create_args = [
        "certmesh",
        "create",
        "--entropy",
        "system",
        "--passphrase-file",
        &pass,
        "--no-trust",
    ];

    // 1. 60 creates, each killed at a random moment (a create takes a few hundred ms).
    let mut completed = 0;
    for i in 0..60 {
        let child = env
            .command(&create_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn create");
        kill_after(child, Duration::from_millis(jitter.below(700)));
        assert_state_verifies(&env, &format!("create cycle {i}"));
        if env.home.join("certmesh").exists() {
            completed += 1;
            std::fs::rename(
                env.home.join("certmesh"),
                env.dir.path().join(format!("mesh-{i}")),
            )
            .expect("move the finished mesh away");
        }
    }
    eprintln!("{completed} of 60 killed creates had finished");
    // After all that, a create still works (a leftover staging directory is cleaned up).
    env.run(&create_args).expect_code(0);

    eprintln!("creates done after {:?}", started.elapsed());
    // 2. 80 one-shot issues, killed at random moments (unlock, sign, write, audit, roster).
    for i in 0..80 {
        let name = format!("dev-{i}.lan");
        let child = env
            .command(&["certmesh", "issue", &name, "--passphrase-file", &pass])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn issue");
        kill_after(child, Duration::from_millis(jitter.below(600)));
        assert_state_verifies(&env, &format!("issue cycle {i}"));
    }

    eprintln!("issues done after {:?}", started.elapsed());
    // 3. 60 join cycles under the daemon: refusals arrive (each one audited) while the certmesh
    //    process is SIGKILLed; the daemon restarts it locked, and it is unlocked again.
    let bind = format!("127.0.0.1:{}", free_port());
    let _daemon = env.start_daemon(&[
        ("KOI_CERTMESH_API_BIND", bind.as_str()),
        ("KOI_RESTART_INITIAL_MS", "20"),
        ("KOI_RESTART_MAX_MS", "200"),
    ]);
    let body = serde_json::json!({
        "hostname": "crash-member",
        "code": "000000",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
    })
    .to_string();
    let url = format!("https://{bind}/v1/certmesh/join");
    for i in 0..60 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = env.run(&["certmesh", "unlock", "--passphrase-file", &pass]);
            if run.code == Some(0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "join cycle {i}: unlock never succeeded: {}",
                run.stderr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let posts: Vec<Child> = (0..4)
            .map(|_| {
                Command::new("curl")
                    .args([
                        "-sk",
                        "--max-time",
                        "5",
                        "-H",
                        "content-type: application/json",
                    ])
                    .args(["--data-binary", &body, &url])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(jitter.below(60)));
        kill9(certmesh_pid(&env));
        for mut p in posts {
            let _ = p.wait();
        }
        assert_state_verifies(&env, &format!("join cycle {i}"));
    }
    eprintln!("joins done after {:?}", started.elapsed());
    let reasons = env.run(&["certmesh", "log", "--json"]).json()["entries"]
        .as_array()
        .map_or(0, |e| {
            e.iter()
                .filter(|e| e["event"] == "enrollment_refused")
                .count()
        });
    assert!(
        reasons > 0,
        "no refusal was ever audited during the join cycles"
    );
}
