//! Leaving a mesh (issue 10 item 8): `koi certmesh trust status` lists every koi root in each
//! store, `trust remove --fingerprint` takes out a root whose mesh folder is gone, and `koi
//! certmesh leave` removes trust, state and certificates on a CA and on a member — refusing
//! without a terminal unless `--yes`, and finishing after being killed mid-way. The stores are
//! real: `update-ca-certificates` against a temporary root and, when installed, NSS `certutil`
//! against a temporary database and `keytool` against a copied JDK keystore. Single-host tests
//! run one-shot with only koi-certmesh installed (no daemon, no network); the member test uses
//! the two-namespace lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::certmesh::{
    LabCa, ca_under_daemon, certmesh_bin, code, create, join_from_b, write_passphrase,
};
use crate::support::kill::{Jitter, children, kill9_with_group};
use crate::support::netlab::NetLab;
use crate::support::{KoiEnv, Run, root_or_skip};

/// A KoiEnv with koi-certmesh only, trust stores under a temporary Debian root and a temporary
/// home holding an NSS database (when certutil is installed).
struct Host {
    env: KoiEnv,
    trust_root: PathBuf,
    nssdb: Option<PathBuf>,
    pass: String,
}

fn certutil_present() -> bool {
    Command::new("certutil")
        .arg("-H")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn host() -> Host {
    let mut env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let trust_root = env.dir.path().join("trust-root");
    let user_home = env.dir.path().join("user-home");
    std::fs::create_dir_all(&trust_root).expect("trust root");
    let nssdb = certutil_present().then(|| {
        let db = user_home.join(".pki/nssdb");
        std::fs::create_dir_all(&db).expect("nssdb dir");
        let out = Command::new("certutil")
            .args(["-N", "--empty-password", "-d"])
            .arg(format!("sql:{}", db.display()))
            .output()
            .expect("certutil -N");
        assert!(out.status.success(), "certutil -N: {out:?}");
        db
    });
    if nssdb.is_none() {
        eprintln!("certutil not installed (libnss3-tools): only the system store is checked");
    }
    env.extra_env = vec![
        ("KOI_TRUST_ROOT".into(), trust_root.display().to_string()),
        ("KOI_TRUST_FAMILY".into(), "debian".into()),
        ("KOI_TRUST_HOME".into(), user_home.display().to_string()),
    ];
    let pass = write_passphrase(&env);
    Host {
        env,
        trust_root,
        nssdb,
        pass,
    }
}

impl Host {
    /// Creates a mesh with its root trusted; returns its fingerprint.
    fn create_mesh(&self) -> String {
        let run = create(&self.env, &self.pass, &["--json"]);
        run.expect_code(0);
        run.json()["mesh"]["ca_fingerprint"]
            .as_str()
            .expect("ca_fingerprint")
            .to_owned()
    }

    /// The system bundle's text (empty when it does not exist).
    fn bundle(&self) -> String {
        std::fs::read_to_string(self.trust_root.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap_or_default()
    }

    /// Nicknames in the NSS database.
    fn nss_listing(&self) -> String {
        let Some(db) = &self.nssdb else {
            return String::new();
        };
        let out = Command::new("certutil")
            .args(["-L", "-d"])
            .arg(format!("sql:{}", db.display()))
            .output()
            .expect("certutil -L");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status_json(&self) -> Value {
        let run = self.env.run(&["certmesh", "trust", "status", "--json"]);
        run.expect_code(0);
        run.json()
    }
}

/// Adds a Java keystore (a copy of the installed JDK's cacerts) when keytool is installed.
fn with_java(h: &mut Host) -> bool {
    let keytool = ["/usr/bin/keytool", "/usr/local/bin/keytool"]
        .iter()
        .find_map(|p| std::fs::canonicalize(p).ok());
    let cacerts = keytool
        .as_deref()
        .and_then(|k| {
            k.parent()?
                .parent()
                .map(|jdk| jdk.join("lib/security/cacerts"))
        })
        .filter(|c| c.is_file());
    let Some(cacerts) = cacerts else {
        eprintln!("keytool not installed (a Java runtime): the Java keystore is not checked");
        return false;
    };
    let java_home = h.env.dir.path().join("java");
    std::fs::create_dir_all(java_home.join("lib/security")).expect("java home");
    std::fs::copy(&cacerts, java_home.join("lib/security/cacerts")).expect("copy cacerts");
    h.env
        .extra_env
        .push(("JAVA_HOME".into(), java_home.display().to_string()));
    true
}

/// The base64 body of a PEM certificate, as one line (to look for it in a bundle).
fn body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn bundle_holds(bundle: &str, pem: &str) -> bool {
    bundle
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .contains(&body(pem))
}

/// The koi roots `trust status --json` lists with fingerprint `fp`.
fn roots_with(status: &Value, fp: &str) -> Vec<Value> {
    status["koi_roots"]
        .as_array()
        .expect("koi_roots")
        .iter()
        .filter(|r| r["fingerprint"] == fp)
        .cloned()
        .collect()
}

fn expect_error_mentioning(run: &Run, needles: &[&str]) {
    assert_ne!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn an_orphaned_root_is_listed_by_trust_status_and_removed_by_fingerprint() {
    let mut h = host();
    let java = with_java(&mut h);
    let fp = h.create_mesh();
    let ca_pem = std::fs::read_to_string(h.env.home.join("certmesh/ca/ca.pem")).expect("ca.pem");
    assert!(bundle_holds(&h.bundle(), &ca_pem), "create did not trust");
    let status = h.status_json();
    let current = roots_with(&status, &fp);
    assert!(
        !current.is_empty() && current.iter().all(|r| r["current"] == true),
        "{status}"
    );

    // The old advice: move the mesh folder away by hand.
    std::fs::rename(h.env.home.join("certmesh"), h.env.dir.path().join("moved")).expect("mv");

    let status = h.status_json();
    let orphans = roots_with(&status, &fp);
    let stores: Vec<&str> = orphans.iter().filter_map(|r| r["store"].as_str()).collect();
    assert!(stores.contains(&"system (debian)"), "{status}");
    if h.nssdb.is_some() {
        assert!(stores.contains(&"nss"), "{status}");
    }
    if java {
        assert!(stores.contains(&"java"), "{status}");
    }
    assert!(orphans.iter().all(|r| r["current"] == false), "{status}");
    assert!(
        orphans.iter().all(|r| r["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("koi-certmesh-"))),
        "{status}"
    );

    // Without a flag: no "not in a mesh yet", the roots and the flag that removes one.
    let bare = h.env.run(&["certmesh", "trust", "remove"]);
    expect_error_mentioning(&bare, &[&format!("--fingerprint {fp}"), "still installed"]);
    assert!(!bare.stderr.contains("trust install"), "{}", bare.stderr);
    assert!(
        !bare.stderr.contains("not in a mesh yet"),
        "{}",
        bare.stderr
    );

    let removed = h.env.run(&[
        "certmesh",
        "trust",
        "remove",
        "--fingerprint",
        &fp,
        "--json",
    ]);
    removed.expect_code(0);
    let rows = removed.json()["stores"]
        .as_array()
        .cloned()
        .expect("stores");
    assert!(
        rows.iter()
            .any(|r| r["store"] == "system (debian)" && r["state"] == "removed"),
        "{rows:?}"
    );
    assert!(
        !removed.stdout.contains("trust install"),
        "{}",
        removed.stdout
    );
    assert!(!bundle_holds(&h.bundle(), &ca_pem), "still in the bundle");
    let nick = format!("koi-certmesh-{}", &fp[..16]);
    assert!(!h.nss_listing().contains(&nick), "{}", h.nss_listing());
    if java {
        assert!(
            rows.iter()
                .any(|r| r["store"] == "java" && r["state"] == "removed"),
            "{rows:?}"
        );
    }
    assert!(roots_with(&h.status_json(), &fp).is_empty());

    // Nothing left: remove says so, without inventing a root.
    let again = h.env.run(&["certmesh", "trust", "remove"]);
    expect_error_mentioning(&again, &["nothing to remove"]);
}

#[test]
fn leave_without_a_terminal_and_without_yes_refuses_and_changes_nothing() {
    let h = host();
    let fp = h.create_mesh();
    let run = h.env.run(&["certmesh", "leave"]);
    expect_error_mentioning(&run, &["--yes", "no terminal"]);
    assert!(h.env.home.join("certmesh/membership.json").exists());
    assert!(
        roots_with(&h.status_json(), &fp)
            .iter()
            .all(|r| r["current"] == true)
    );
    assert!(!roots_with(&h.status_json(), &fp).is_empty());
}

/// The CA's host name, from its membership.
fn hostname_of(env: &KoiEnv) -> String {
    let text = std::fs::read_to_string(env.home.join("certmesh/membership.json")).expect("m");
    let m: Value = serde_json::from_str(&text).expect("membership json");
    m["hostname"].as_str().expect("hostname").to_owned()
}

/// After a complete leave: no state, no certificates of the mesh, no koi root in any store.
fn assert_left(h: &Host, hostname: &str, ca_pem: &str, fp: &str) {
    let home = &h.env.home;
    assert!(!home.join("certmesh").exists(), "certmesh/ still there");
    assert!(!home.join("certmesh.leaving").exists(), "certmesh.leaving/");
    assert!(
        !home.join("certs").join(hostname).exists(),
        "certs/{hostname}"
    );
    assert!(
        !bundle_holds(&h.bundle(), ca_pem),
        "root still in the bundle"
    );
    let nick = format!("koi-certmesh-{}", &fp[..16]);
    assert!(!h.nss_listing().contains(&nick), "{}", h.nss_listing());
    assert!(roots_with(&h.status_json(), fp).is_empty());
}

#[test]
fn leave_yes_on_the_ca_removes_trust_state_and_certificates_and_keeps_a_record() {
    let h = host();
    let fp = h.create_mesh();
    let hostname = hostname_of(&h.env);
    let ca_pem = std::fs::read_to_string(h.env.home.join("certmesh/ca/ca.pem")).expect("ca.pem");
    h.env
        .run(&[
            "certmesh",
            "issue",
            "printer.lan",
            "--passphrase-file",
            &h.pass,
        ])
        .expect_code(0);
    let unrelated = h.env.home.join("certs/unrelated");
    std::fs::create_dir_all(&unrelated).expect("unrelated dir");
    std::fs::write(unrelated.join("note.txt"), "not koi's").expect("note");

    let run = h.env.run(&["certmesh", "leave", "--yes", "--json"]);
    run.expect_code(0);
    let out = run.json();
    assert_eq!(out["role"], "primary", "{out}");
    assert_eq!(out["ca_fingerprint"], fp.as_str(), "{out}");
    assert_left(&h, &hostname, &ca_pem, &fp);
    // Device certificates it issued into KOI_HOME/certs go too; other folders stay.
    assert!(!h.env.home.join("certs/printer.lan").exists());
    assert!(unrelated.join("note.txt").exists());
    // The record: left.json, the audit log and the root, no vault.
    let record = PathBuf::from(out["record"].as_str().expect("record"));
    for kept in ["left.json", "audit.log", "roster.json", "ca.pem"] {
        assert!(record.join(kept).exists(), "{kept} not kept in {record:?}");
    }
    assert!(!record.join("vault.sealed").exists());
    let status = h.env.run(&["certmesh", "status", "--json"]);
    assert!(status.stdout.contains("not in a mesh"), "{}", status.stdout);
    // Leaving twice says there is nothing to leave.
    let again = h.env.run(&["certmesh", "leave", "--yes"]);
    expect_error_mentioning(&again, &["nothing to leave"]);
    // A new mesh can be created afterwards.
    h.create_mesh();
}

/// Waits until nothing holds the certmesh writer lock: a plugin started just as its `koi` was
/// killed is not among the children listed before the kill and may still be finishing. This is a
/// synchronisation, not a timing assertion; the deadline only stops a hung test.
fn wait_for_writer_lock(env: &KoiEnv) {
    let lock = env.home.join("state/certmesh.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let free = !lock.exists()
            || Command::new("flock")
                .arg("-n")
                .arg(&lock)
                .arg("true")
                .status()
                .is_ok_and(|s| s.success());
        if free {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "something still holds {} a minute after the kill",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a killed leave stopped, seen from outside.
fn phase(h: &Host, ca_pem: &str) -> &'static str {
    let home = &h.env.home;
    if home.join("certmesh.leaving").exists() {
        "state renamed, not yet deleted"
    } else if !home.join("certmesh").exists() {
        "finished"
    } else if bundle_holds(&h.bundle(), ca_pem) {
        "root still trusted"
    } else {
        "root untrusted, state still there"
    }
}

#[test]
fn leave_killed_at_any_moment_is_finished_by_running_it_again() {
    let h = host();
    // One uninterrupted leave sets the range of kill delays (a figure, not an assertion).
    h.create_mesh();
    let started = std::time::Instant::now();
    h.env.run(&["certmesh", "leave", "--yes"]).expect_code(0);
    let whole = started.elapsed();
    eprintln!("an uninterrupted leave took {whole:?}");
    let range = (whole.as_millis() as u64).saturating_mul(6) / 5 + 1;
    let mut jitter = Jitter::new("leave kill");
    let mut phases: Vec<&str> = Vec::new();
    for cycle in 0..10 {
        let fp = h.create_mesh();
        let hostname = hostname_of(&h.env);
        let ca_pem =
            std::fs::read_to_string(h.env.home.join("certmesh/ca/ca.pem")).expect("ca.pem");
        let delay = Duration::from_millis(jitter.below(range));
        let mut child = h
            .env
            .command(&["certmesh", "leave", "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leave");
        std::thread::sleep(delay);
        for plugin in children(child.id()) {
            kill9_with_group(plugin);
        }
        kill9_with_group(child.id());
        let _ = child.wait();
        wait_for_writer_lock(&h.env);
        let stopped = phase(&h, &ca_pem);
        phases.push(stopped);
        if stopped != "finished" {
            h.env.run(&["certmesh", "leave", "--yes"]).expect_code(0);
        }
        assert_left(&h, &hostname, &ca_pem, &fp);
        eprintln!("cycle {cycle}: killed after {delay:?}: {stopped}");
    }
    phases.sort_unstable();
    phases.dedup();
    eprintln!("kills stopped leave at: {phases:?}");
}

/// The record's audit log ends with the signed `mesh_left` entry.
fn last_event(record: &Path) -> String {
    let log = std::fs::read_to_string(record.join("audit.log")).expect("audit.log kept");
    let last: Value = serde_json::from_str(log.lines().last().expect("a line")).expect("json line");
    last["event"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn leave_on_a_joined_member_and_on_its_daemon_ca_removes_trust_state_and_certificates() {
    if !root_or_skip(
        "leave_on_a_joined_member_and_on_its_daemon_ca_removes_trust_state_and_certificates",
    ) {
        return;
    }
    let lab = NetLab::new("lv");
    let (_daemon, ca) = ca_under_daemon(&lab, &["--domain", "lan", "--json"]);
    let LabCa {
        uri,
        fingerprint: fp,
        ca_pem,
        ..
    } = ca;
    let ca_pem = std::fs::read_to_string(ca_pem).expect("ca");
    let joined = join_from_b(&lab, &fp, &code(&uri, 0), &[]);
    joined.expect_code(0);
    let b_bundle = lab.b.trust_root.join("etc/ssl/certs/ca-certificates.crt");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        bundle_holds(&read(&b_bundle), &ca_pem),
        "join did not trust"
    );
    let b_certs = lab.b.env.home.join("certs").join(&lab.b.hostname);
    assert!(b_certs.join("cert.pem").exists());

    // The member, one-shot: without --yes and a terminal it refuses; with --yes it leaves.
    let refused = lab.b.env.run(&["certmesh", "leave"]);
    expect_error_mentioning(&refused, &["--yes"]);
    let left = lab.b.env.run(&["certmesh", "leave", "--yes", "--json"]);
    left.expect_code(0);
    assert_eq!(left.json()["role"], "member", "{}", left.stdout);
    assert!(!lab.b.env.home.join("certmesh").exists());
    assert!(!b_certs.exists());
    assert!(
        !bundle_holds(&read(&b_bundle), &ca_pem),
        "member still trusts"
    );
    let b_status = lab.b.env.run(&["certmesh", "trust", "status", "--json"]);
    b_status.expect_code(0);
    assert!(
        roots_with(&b_status.json(), &fp).is_empty(),
        "{}",
        b_status.stdout
    );

    // The CA under its daemon (unlocked since create): the log ends with a signed mesh_left.
    let a_bundle = lab.a.trust_root.join("etc/ssl/certs/ca-certificates.crt");
    assert!(
        bundle_holds(&read(&a_bundle), &ca_pem),
        "create did not trust"
    );
    let ca_left = lab.a.env.run(&["certmesh", "leave", "--yes", "--json"]);
    ca_left.expect_code(0);
    let out = ca_left.json();
    assert_eq!(out["role"], "primary", "{out}");
    let record = PathBuf::from(out["record"].as_str().expect("record"));
    assert_eq!(last_event(&record), "mesh_left", "{out}");
    assert!(
        out["next"].to_string().contains("restart the daemon"),
        "{out}"
    );
    assert!(!lab.a.env.home.join("certmesh").exists());
    assert!(!lab.a.env.home.join("certs").join(&lab.a.hostname).exists());
    assert!(!bundle_holds(&read(&a_bundle), &ca_pem), "CA still trusts");
}

#[test]
fn leave_at_a_terminal_makes_the_ca_type_its_host_name_and_a_wrong_name_changes_nothing() {
    use crate::support::pty::{Pty, result_line};
    let h = host();
    let fp = h.create_mesh();
    let hostname = hostname_of(&h.env);
    let ca_pem = std::fs::read_to_string(h.env.home.join("certmesh/ca/ca.pem")).expect("ca.pem");

    let mut pty = Pty::start(&h.env, &["certmesh", "leave", "--json"], &[]);
    pty.wait_for("Type this machine's host name");
    pty.type_bytes(b"not-this-host\r");
    let (code, output) = pty.finish();
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("DESTROYS THE CA"), "{output}");
    assert!(output.contains("nothing was changed"), "{output}");
    assert!(h.env.home.join("certmesh/membership.json").exists());
    assert!(
        bundle_holds(&h.bundle(), &ca_pem),
        "a refused leave untrusted the root"
    );

    let mut pty = Pty::start(&h.env, &["certmesh", "leave", "--json"], &[]);
    pty.wait_for("Type this machine's host name");
    pty.type_bytes(format!("{hostname}\r").as_bytes());
    let (code, output) = pty.finish();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(result_line(&output)["role"], "primary", "{output}");
    assert_left(&h, &hostname, &ca_pem, &fp);
}
