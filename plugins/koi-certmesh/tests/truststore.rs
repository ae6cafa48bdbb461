//! Trust-store tests that run the real tools — `update-ca-certificates`, NSS `certutil`,
//! `keytool`, `openssl` — against temporary roots, homes and JAVA_HOMEs, never against the
//! machine's own stores (the Debian test checks the real bundle is untouched). Tools come from
//! `.ci/apt-packages`; with `KOI_REQUIRE_ROOT_TESTS=1` (CI) a missing one fails the test instead of
//! skipping it, except `keytool`, whose JRE is too large to install just for this.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use koi_certmesh::truststore::{
    self, Anchor, Family, StoreReport, StoreState, TrustConfig, TrustReport,
};

const NAME: &str = "koi-certmesh-3fa2c1d09b7e4411";

fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether `tool` is there; a missing tool skips the test, or fails it in CI.
fn require(tool: &str, package: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    if std::env::var("KOI_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("`{tool}` is missing; .ci/apt-packages must list {package}");
    }
    eprintln!("SKIPPED: `{tool}` not installed (apt-get install {package})");
    false
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway CA (P-256, CA:TRUE) and a leaf signed by it.
struct TestCa {
    _dir: tempfile::TempDir,
    pem: String,
    fingerprint: String,
    leaf: PathBuf,
}

impl TestCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |f: &str| d.join(f).to_str().unwrap().to_string();
        run_ok(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=Koi truststore test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        run_ok(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &p("leaf.key"),
                "-out",
                &p("leaf.csr"),
                "-subj",
                "/CN=printer.lab",
            ],
        );
        run_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p("leaf.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &p("leaf.pem"),
            ],
        );
        let pem = fs::read_to_string(d.join("ca.pem")).unwrap();
        // openssl's own fingerprint: "sha256 Fingerprint=AB:CD:..."
        let line = run_ok(
            "openssl",
            &[
                "x509",
                "-noout",
                "-fingerprint",
                "-sha256",
                "-in",
                &p("ca.pem"),
            ],
        );
        let fingerprint = line
            .trim()
            .split_once('=')
            .unwrap()
            .1
            .replace(':', "")
            .to_lowercase();
        assert_eq!(truststore::fingerprint(&pem).unwrap(), fingerprint);
        Self {
            leaf: d.join("leaf.pem"),
            _dir: dir,
            pem,
            fingerprint,
        }
    }

    fn anchor(&self) -> Anchor<'_> {
        Anchor {
            name: NAME,
            cert_pem: &self.pem,
            fingerprint: &self.fingerprint,
        }
    }
}

fn rows<'a>(report: &'a TrustReport, store: &str) -> Vec<&'a StoreReport> {
    report.stores.iter().filter(|s| s.store == store).collect()
}

fn system_row(report: &TrustReport) -> &StoreReport {
    let rows: Vec<_> = report
        .stores
        .iter()
        .filter(|s| s.store.starts_with("system"))
        .collect();
    assert_eq!(rows.len(), 1, "{report:#?}");
    rows[0]
}

/// `openssl verify` against `bundle` only (no default CA path or store).
fn verifies(bundle: &Path, leaf: &Path) -> bool {
    run(
        "openssl",
        &[
            "verify",
            "-no-CApath",
            "-no-CAstore",
            "-CAfile",
            bundle.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
    )
    .status
    .success()
}

fn snapshot(path: &str) -> Option<(SystemTime, u64)> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap(), m.len()))
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A Debian root with an os-release that says Ubuntu; with `machine_roots`, also this machine's CA
/// configuration and Mozilla certificates (slower: the tool then links and rehashes ~150 files).
fn debian_root(machine_roots: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
    fs::write(
        r.join("etc/os-release"),
        "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n",
    )
    .unwrap();
    if !machine_roots {
        return root;
    }
    if Path::new("/usr/share/ca-certificates").is_dir() {
        copy_tree(
            Path::new("/usr/share/ca-certificates"),
            &r.join("usr/share/ca-certificates"),
        );
    }
    if Path::new("/etc/ca-certificates.conf").is_file() {
        fs::copy(
            "/etc/ca-certificates.conf",
            r.join("etc/ca-certificates.conf"),
        )
        .unwrap();
    }
    root
}

#[test]
fn debian_install_status_and_remove_in_a_temporary_root() {
    if !require("update-ca-certificates", "ca-certificates") || !require("openssl", "openssl") {
        return;
    }
    let real_bundle = "/etc/ssl/certs/ca-certificates.crt";
    let before = (
        snapshot(real_bundle),
        snapshot("/etc/ssl/certs"),
        snapshot("/usr/local/share/ca-certificates"),
    );

    let ca = TestCa::new();
    let root = debian_root(true);
    let home = tempfile::tempdir().unwrap();
    let cfg = TrustConfig {
        system_root: root.path().to_path_buf(),
        home: Some(home.path().to_path_buf()),
        ..TrustConfig::default() // family detected from the root's os-release
    };
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let anchor_file = root
        .path()
        .join(format!("usr/local/share/ca-certificates/{NAME}.crt"));

    let report = truststore::install(&cfg, &ca.anchor());
    assert!(report.ok(), "{report}");
    let sys = system_row(&report);
    assert_eq!(sys.store, "system (debian)");
    assert_eq!(
        (sys.state, sys.verified),
        (StoreState::Installed, true),
        "{report}"
    );
    assert_eq!(sys.location, anchor_file.display().to_string());
    assert_eq!(report.system_bundle(), Some(bundle.clone()));
    // No browser profile in the empty home: one not_present row.
    let nss = rows(&report, "nss");
    assert_eq!(nss.len(), 1);
    assert_eq!(nss[0].state, StoreState::NotPresent);
    // No JAVA_HOME: no Java row.
    assert!(rows(&report, "java").is_empty());

    assert_eq!(
        fs::metadata(&anchor_file).unwrap().len() as usize,
        ca.pem.trim().len() + 1
    );
    let text = fs::read_to_string(&bundle).unwrap();
    let body: String = ca.pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        text.replace('\n', "").contains(&body),
        "the bundle lacks the CA"
    );
    assert!(
        verifies(&bundle, &ca.leaf),
        "openssl verify against the bundle failed"
    );
    if Path::new("/etc/ca-certificates.conf").is_file() {
        // The machine's own roots are still trusted in the bundle, not only Koi's.
        assert!(text.matches("BEGIN CERTIFICATE").count() > 10);
    }

    // Idempotent.
    let again = truststore::install(&cfg, &ca.anchor());
    assert!(again.ok(), "{again}");
    assert_eq!(
        system_row(&again).detail.as_deref(),
        Some("already installed")
    );

    let status = truststore::status(&cfg, &ca.anchor());
    let sys = system_row(&status);
    assert_eq!(
        (sys.state, sys.verified),
        (StoreState::Installed, true),
        "{status}"
    );

    let removed = truststore::remove(&cfg, NAME);
    assert!(removed.ok(), "{removed}");
    let sys = system_row(&removed);
    assert_eq!(
        (sys.state, sys.verified),
        (StoreState::Removed, true),
        "{removed}"
    );
    assert!(!anchor_file.exists());
    assert!(
        !verifies(&bundle, &ca.leaf),
        "the bundle still trusts the removed CA"
    );
    assert!(fs::symlink_metadata(root.path().join(format!("etc/ssl/certs/{NAME}.pem"))).is_err());
    let dangling: Vec<_> = fs::read_dir(root.path().join("etc/ssl/certs"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| fs::metadata(e.path()).is_err())
        .map(|e| e.file_name())
        .collect();
    assert!(dangling.is_empty(), "dangling links left: {dangling:?}");

    let status = truststore::status(&cfg, &ca.anchor());
    assert_eq!(system_row(&status).state, StoreState::Absent, "{status}");
    let twice = truststore::remove(&cfg, NAME);
    assert_eq!(system_row(&twice).state, StoreState::Absent, "{twice}");

    let after = (
        snapshot(real_bundle),
        snapshot("/etc/ssl/certs"),
        snapshot("/usr/local/share/ca-certificates"),
    );
    assert_eq!(before, after, "the machine's real trust store changed");
}

/// A fresh NSS database at `dir`, as Firefox or Chromium would leave it.
fn nss_db(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    run_ok(
        "certutil",
        &[
            "-N",
            "-d",
            &format!("sql:{}", dir.display()),
            "--empty-password",
        ],
    );
}

fn nss_nicknames(dir: &Path) -> String {
    run_ok("certutil", &["-L", "-d", &format!("sql:{}", dir.display())])
}

#[test]
fn nss_databases_in_a_temporary_home() {
    if !require("certutil", "libnss3-tools")
        || !require("update-ca-certificates", "ca-certificates")
        || !require("openssl", "openssl")
    {
        return;
    }
    let ca = TestCa::new();
    let root = debian_root(false);
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let chromium = h.join(".pki/nssdb");
    let firefox = h.join(".mozilla/firefox/abcd1234.default-release");
    let flatpak = h.join(".var/app/org.mozilla.firefox/.mozilla/firefox/f00.default");
    for db in [&chromium, &firefox, &flatpak] {
        nss_db(db);
    }
    fs::write(h.join(".mozilla/firefox/profiles.ini"), "[General]\n").unwrap();
    let cfg = TrustConfig {
        system_root: root.path().to_path_buf(),
        home: Some(h.to_path_buf()),
        family: Some(Family::Debian),
        ..TrustConfig::default()
    };

    let report = truststore::install(&cfg, &ca.anchor());
    assert!(report.ok(), "{report}");
    let nss = rows(&report, "nss");
    let locations: Vec<String> = nss.iter().map(|r| r.location.clone()).collect();
    assert_eq!(
        locations,
        [&chromium, &firefox, &flatpak].map(|d| format!("sql:{}", d.display()))
    );
    for row in &nss {
        assert_eq!(
            (row.state, row.verified),
            (StoreState::Installed, true),
            "{report}"
        );
    }
    for db in [&chromium, &firefox, &flatpak] {
        assert!(nss_nicknames(db).contains(NAME));
        let pem = run_ok(
            "certutil",
            &[
                "-L",
                "-d",
                &format!("sql:{}", db.display()),
                "-n",
                NAME,
                "-a",
            ],
        );
        assert_eq!(truststore::fingerprint(&pem).unwrap(), ca.fingerprint);
    }

    let status = truststore::status(&cfg, &ca.anchor());
    assert!(
        rows(&status, "nss")
            .iter()
            .all(|r| r.state == StoreState::Installed),
        "{status}"
    );

    let removed = truststore::remove(&cfg, NAME);
    assert!(removed.ok(), "{removed}");
    for row in rows(&removed, "nss") {
        assert_eq!(
            (row.state, row.verified),
            (StoreState::Removed, true),
            "{removed}"
        );
    }
    // This root has no other CA, so update-ca-certificates keeps its old bundle; Koi cuts the
    // certificate out itself.
    let sys = system_row(&removed);
    assert_eq!(
        (sys.state, sys.verified),
        (StoreState::Removed, true),
        "{removed}"
    );
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    assert!(
        !fs::read_to_string(&bundle)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    for db in [&chromium, &firefox, &flatpak] {
        assert!(!nss_nicknames(db).contains(NAME));
    }
    let status = truststore::status(&cfg, &ca.anchor());
    assert!(
        rows(&status, "nss")
            .iter()
            .all(|r| r.state == StoreState::Absent),
        "{status}"
    );
}

/// The cacerts of the installed JDK, copied (never modified in place).
fn real_cacerts() -> Option<PathBuf> {
    let keytool = fs::canonicalize(find_tool("keytool")?).ok()?;
    let jdk = keytool.parent()?.parent()?;
    [
        jdk.join("lib/security/cacerts"),
        PathBuf::from("/etc/ssl/certs/java/cacerts"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[test]
fn java_keystore_in_a_temporary_java_home() {
    // A JRE is ~190 MB installed, so CI does not install one: this test runs where keytool
    // already is and skips elsewhere, even in CI.
    if find_tool("keytool").is_none() {
        eprintln!("SKIPPED: keytool not installed (a Java runtime, e.g. default-jre-headless)");
        return;
    }
    if !require("update-ca-certificates", "ca-certificates") || !require("openssl", "openssl") {
        return;
    }
    let ca = TestCa::new();
    let root = debian_root(false);
    let home = tempfile::tempdir().unwrap();
    let java_home = tempfile::tempdir().unwrap();
    let security = java_home.path().join("lib/security");
    fs::create_dir_all(&security).unwrap();
    let keystore = security.join("cacerts");
    let real = real_cacerts();
    let real_before = real.as_ref().and_then(|p| snapshot(p.to_str().unwrap()));
    match &real {
        Some(real) => {
            fs::copy(real, &keystore).unwrap();
        }
        None => {
            // No JDK keystore to copy: let keytool create one around another certificate.
            let other = TestCa::new();
            let seed = java_home.path().join("seed.pem");
            fs::write(&seed, &other.pem).unwrap();
            run_ok(
                "keytool",
                &[
                    "-importcert",
                    "-noprompt",
                    "-keystore",
                    keystore.to_str().unwrap(),
                    "-storepass",
                    "changeit",
                    "-alias",
                    "seed",
                    "-file",
                    seed.to_str().unwrap(),
                ],
            );
        }
    }
    let cfg = TrustConfig {
        system_root: root.path().to_path_buf(),
        home: Some(home.path().to_path_buf()),
        java_home: Some(java_home.path().to_path_buf()),
        family: Some(Family::Debian),
        ..TrustConfig::default()
    };
    let list = |alias: &str| {
        run(
            "keytool",
            &[
                "-list",
                "-keystore",
                keystore.to_str().unwrap(),
                "-storepass",
                "changeit",
                "-alias",
                alias,
            ],
        )
        .status
        .success()
    };

    let report = truststore::install(&cfg, &ca.anchor());
    assert!(report.ok(), "{report}");
    let java = rows(&report, "java");
    assert_eq!(java.len(), 1, "{report}");
    assert_eq!(java[0].location, keystore.display().to_string());
    assert_eq!(
        (java[0].state, java[0].verified),
        (StoreState::Installed, true),
        "{report}"
    );
    assert!(list(NAME));

    let status = truststore::status(&cfg, &ca.anchor());
    assert_eq!(
        rows(&status, "java")[0].state,
        StoreState::Installed,
        "{status}"
    );

    let removed = truststore::remove(&cfg, NAME);
    assert!(removed.ok(), "{removed}");
    let java = rows(&removed, "java");
    assert_eq!(
        (java[0].state, java[0].verified),
        (StoreState::Removed, true),
        "{removed}"
    );
    assert!(!list(NAME));

    if let Some(real) = &real {
        assert_eq!(
            snapshot(real.to_str().unwrap()),
            real_before,
            "the real cacerts changed"
        );
    }
}

#[test]
fn a_store_that_cannot_be_written_reports_the_command_to_run() {
    if !require("update-ca-certificates", "ca-certificates") || !require("openssl", "openssl") {
        return;
    }
    // Root ignores file modes, so a read-only temporary directory would not fail here. sysfs
    // refuses new entries to everyone (EPERM/EACCES), root included.
    let root = PathBuf::from(format!("/sys/koi-truststore-test-{}", std::process::id()));
    let ca = TestCa::new();
    let home = tempfile::tempdir().unwrap();
    let cfg = TrustConfig {
        system_root: root.clone(),
        home: Some(home.path().to_path_buf()),
        family: Some(Family::Debian),
        ..TrustConfig::default()
    };
    let report = truststore::install(&cfg, &ca.anchor());
    assert!(!report.ok());
    let sys = system_row(&report);
    assert_eq!(sys.state, StoreState::Failed, "{report}");
    assert!(
        sys.detail
            .as_deref()
            .unwrap()
            .contains("needs administrator rights"),
        "{report}"
    );
    let expected = format!(
        "sudo env KOI_TRUST_ROOT={} KOI_TRUST_HOME={} KOI_TRUST_FAMILY=debian koi certmesh trust install",
        root.display(),
        home.path().display()
    );
    assert_eq!(sys.command_to_run.as_deref(), Some(expected.as_str()));
    assert_eq!(report.command_to_run(), Some(expected.as_str()));
    assert!(!root.exists());

    // The JSON form the plugin returns: snake_case states, absent options left out.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["stores"][0]["state"], "failed");
    assert_eq!(json["stores"][0]["command_to_run"], expected.as_str());
    assert_eq!(json["stores"][1]["state"], "not_present");
    assert!(json["stores"][1].get("command_to_run").is_none());
}

#[test]
fn bad_input_is_refused_before_any_store_is_touched() {
    if !require("openssl", "openssl") {
        return;
    }
    let ca = TestCa::new();
    let root = tempfile::tempdir().unwrap();
    let cfg = TrustConfig {
        system_root: root.path().to_path_buf(),
        family: Some(Family::Debian),
        ..TrustConfig::default()
    };
    let wrong_fp = "00".repeat(32);
    let cases = [
        Anchor {
            name: "../../etc/evil",
            ..ca.anchor()
        },
        Anchor {
            name: "",
            ..ca.anchor()
        },
        Anchor {
            fingerprint: &wrong_fp,
            ..ca.anchor()
        },
        Anchor {
            cert_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ..ca.anchor()
        },
    ];
    for anchor in cases {
        let report = truststore::install(&cfg, &anchor);
        assert_eq!(report.stores.len(), 1, "{report}");
        assert_eq!(report.stores[0].store, "anchor");
        assert_eq!(report.stores[0].state, StoreState::Failed);
        assert!(!report.ok());
    }
    assert!(
        truststore::remove(&cfg, "a/b").stores[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("not usable")
    );
    assert_eq!(
        fs::read_dir(root.path()).unwrap().count(),
        0,
        "something was written"
    );
    // Colons and upper case in the fingerprint are accepted.
    let colons: String = ca
        .fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let status = truststore::status(
        &cfg,
        &Anchor {
            fingerprint: &colons,
            ..ca.anchor()
        },
    );
    assert_ne!(status.stores[0].store, "anchor", "{status}");
}

#[test]
fn the_family_is_detected_from_the_roots_os_release() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    for (text, family) in [
        ("ID=fedora\n", Family::Fedora),
        (
            "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
            Family::Fedora,
        ),
        ("ID=arch\n", Family::Arch),
        (
            "ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n",
            Family::OpenSuse,
        ),
        ("ID=debian\n", Family::Debian),
    ] {
        fs::write(root.path().join("etc/os-release"), text).unwrap();
        assert_eq!(Family::detect(root.path()), Some(family), "{text}");
    }
    assert_eq!("arch".parse::<Family>(), Ok(Family::Arch));
}
