//! The standby tests' mesh: a CA under a traced daemon on host 0, host 1 joined and running a
//! traced daemon with a 2 s heartbeat and sync, codes that are each used once, and the steps the
//! tests share (promote, join, status, backup and restore of the primary).

use crate::support::certmesh::join_host;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::certmesh::{
    certmesh_bin, create, fresh_code, mesh_ids, wait_for_api, write_passphrase,
};
use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::{DaemonProc, Run};

/// The standby's own passphrase (different from the primary's).
pub const STANDBY_PASSPHRASE: &str = "standby passphrase 91c2e7";

/// Trace logging and protocol traces.
pub const TRACE: [(&str, &str); 2] = [("KOI_LOG", "trace"), ("KOI_TRACE_PROTOCOL", "1")];

pub use crate::support::wait_for;

/// The audit sequence number a CA's roster records (the roster version).
pub fn roster_version(home: &Path) -> u64 {
    let roster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("certmesh/roster.json")).expect("roster"))
            .expect("roster JSON");
    roster["mesh"]["audit_head"]["seq"]
        .as_u64()
        .expect("audit head")
}

/// Copies of the primary's roster, audit log and checkpoint (what an operator's backup holds).
pub fn backup(home: &Path) -> PathBuf {
    let dir = home.with_file_name("primary-backup");
    std::fs::create_dir_all(&dir).expect("backup dir");
    for name in ["roster.json", "audit.log", "audit.log.checkpoint"] {
        let from = home.join("certmesh").join(name);
        if from.exists() {
            std::fs::copy(&from, dir.join(name)).expect("backup copy");
        }
    }
    dir
}

/// The mesh of a test.
pub struct Mesh<'l> {
    lab: &'l SwitchLab,
    pub uri: String,
    pub fingerprint: String,
    pub pass_file: String,
    pub standby_pass: String,
    last_step: i64,
    daemons: Vec<(String, DaemonProc)>,
    old_logs: Vec<(String, String)>,
}

impl<'l> Mesh<'l> {
    /// A CA on host 0 (daemon, unlocked by create), host 1 joined with its daemon running.
    pub fn new(lab: &'l SwitchLab) -> Self {
        for h in &lab.hosts {
            h.env.install(&certmesh_bin(), "certmesh");
        }
        let a = lab.host(0);
        let pass_file = write_passphrase(&a.env);
        let a_daemon = a.env.start_daemon(&TRACE);
        let created = create(&a.env, &pass_file, &["--no-trust", "--json"]);
        created.expect_code(0);
        let (uri, fingerprint) = mesh_ids(&created);
        wait_for_api(a, &a.ip);
        let b = lab.host(1);
        let standby_pass = b.env.dir.path().join("standby-pass");
        std::fs::write(&standby_pass, format!("{STANDBY_PASSPHRASE}\n")).expect("standby pass");
        let mut mesh = Mesh {
            lab,
            uri,
            fingerprint,
            pass_file,
            standby_pass: standby_pass.display().to_string(),
            last_step: i64::MIN,
            daemons: vec![("A".into(), a_daemon)],
            old_logs: Vec::new(),
        };
        mesh.join(b);
        let b_daemon = b.env.start_daemon(&[
            TRACE[0],
            TRACE[1],
            ("KOI_TEST_HEARTBEAT_SECS", "2"),
            ("KOI_TEST_STANDBY_SYNC_SECS", "2"),
        ]);
        mesh.daemons.push(("B".into(), b_daemon));
        mesh
    }

    /// A code not used before.
    pub fn next_code(&mut self) -> String {
        fresh_code(&self.uri, &mut self.last_step)
    }

    /// `koi certmesh join` of `host` to A (one-shot, no trust).
    pub fn join(&mut self, host: &LabHost) {
        let code = self.next_code();
        let a = self.lab.host(0);
        join_host(host, &a.ip, &self.fingerprint, &code).expect_code(0);
    }

    /// A `koi` command on `host` with trace logging and protocol traces.
    pub fn traced(&self, host: &LabHost, args: &[&str]) -> Run {
        let mut cmd = host.env.command(args);
        for (k, v) in TRACE {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("koi"))
    }

    /// `koi certmesh promote --code CODE --passphrase-file STANDBY --json` on host 1, traced.
    pub fn promote_b(&self, code: Option<&str>) -> Run {
        let mut args = vec![
            "certmesh",
            "promote",
            "--passphrase-file",
            &self.standby_pass,
        ];
        if let Some(c) = code {
            args.extend_from_slice(&["--code", c]);
        }
        args.push("--json");
        self.traced(self.lab.host(1), &args)
    }

    /// `koi certmesh status --json` on `host`.
    pub fn status(&self, host: &LabHost) -> serde_json::Value {
        let run = host.env.run(&["certmesh", "status", "--json"]);
        run.expect_code(0);
        run.json()
    }

    /// Every daemon log so far, named.
    pub fn logs(&self) -> Vec<(String, String)> {
        let mut out = self.old_logs.clone();
        for (name, d) in &self.daemons {
            out.push((format!("daemon {name}"), d.log_text()));
        }
        out
    }

    /// B's daemon log.
    pub fn b_log(&self) -> String {
        self.daemons
            .iter()
            .find(|(n, _)| n == "B")
            .map(|(_, d)| d.log_text())
            .unwrap_or_default()
    }

    /// Stops every daemon (their logs stay readable through [`Self::logs`]).
    pub fn stop_daemons(&mut self) {
        for (_, d) in &mut self.daemons {
            d.terminate(Duration::from_secs(10));
        }
    }

    /// Stops A's daemon, puts `backup` back, starts it again and unlocks it.
    pub fn restart_a_from(&mut self, backup: &Path) {
        let a = self.lab.host(0);
        if let Some(pos) = self.daemons.iter().position(|(n, _)| n == "A") {
            let (name, mut d) = self.daemons.remove(pos);
            d.terminate(Duration::from_secs(10));
            self.old_logs
                .push((format!("daemon {name} (first)"), d.log_text()));
        }
        for name in ["roster.json", "audit.log", "audit.log.checkpoint"] {
            let from = backup.join(name);
            if from.exists() {
                std::fs::copy(&from, a.env.home.join("certmesh").join(name)).expect("restore");
            }
        }
        let d = a.env.start_daemon(&TRACE);
        self.daemons.push(("A".into(), d));
        wait_for_api(a, &a.ip);
        a.env
            .run(&[
                "certmesh",
                "unlock",
                "--passphrase-file",
                &self.pass_file,
                "--json",
            ])
            .expect_code(0);
    }
}

/// The CA's public key as the raw uncompressed point (65 bytes), via openssl.
pub fn ca_public_point(ca_pem: &Path) -> Vec<u8> {
    let spki = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in \"$0\" -pubkey -noout | openssl pkey -pubin -outform DER")
        .arg(ca_pem)
        .output()
        .expect("openssl");
    assert!(
        spki.status.success(),
        "openssl could not read {}",
        ca_pem.display()
    );
    let der = spki.stdout;
    der[der.len() - 65..].to_vec()
}
