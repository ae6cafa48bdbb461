//! Device certificates over time (issue 11 item 8), on a one-host CA without a daemon:
//! `koi certmesh issue --days N` (1 to 825, default 397) sets the lifetime `openssl` reads and is
//! recorded in the roster; `status` lists devices that expire within 30 days with the command
//! that renews them; `issue --renew NAME` keeps the key koi wrote, changes the serial and
//! verifies, and is refused for an unknown name or a key the user replaced.

use std::path::Path;
use std::process::Command;

use crate::support::KoiEnv;
use crate::support::certmesh::{audit_entries, local_ca, output_text};

const DAY: i64 = 86_400;

fn issue(env: &KoiEnv, pass: &str, args: &[&str]) -> crate::support::Run {
    let mut all = vec!["certmesh", "issue"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--passphrase-file", pass]);
    env.run(&all)
}

fn openssl(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .expect("openssl");
    (out.status.success(), output_text(&out))
}

/// Asserts that `cert` expires `days` days from now, to within an hour (`openssl x509 -checkend`).
fn assert_lasts_days(cert: &Path, days: i64) {
    let (_, end) = openssl(&["x509", "-noout", "-enddate", "-in"], cert);
    assert!(end.contains("notAfter="), "{end}");
    let before = (days * DAY - 3600).to_string();
    let after = (days * DAY + 3600).to_string();
    let (alive, text) = openssl(&["x509", "-noout", "-checkend", &before, "-in"], cert);
    assert!(
        alive,
        "{} expires before {days} days: {end} {text}",
        cert.display()
    );
    let (alive, text) = openssl(&["x509", "-noout", "-checkend", &after, "-in"], cert);
    assert!(
        !alive,
        "{} outlives {days} days: {end} {text}",
        cert.display()
    );
}

fn serial(cert: &Path) -> String {
    let (ok, text) = openssl(&["x509", "-noout", "-serial", "-in"], cert);
    assert!(ok, "{text}");
    text.trim().to_owned()
}

fn public_key(key: &Path) -> String {
    let (ok, text) = openssl(&["pkey", "-pubout", "-in"], key);
    assert!(ok, "{text}");
    text
}

fn roster_entry(env: &KoiEnv, name: &str) -> serde_json::Value {
    let roster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.home.join("certmesh/roster.json")).expect("roster.json"),
    )
    .expect("roster JSON");
    roster["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["hostname"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not in the roster: {roster:#}"))
}

fn expiring(env: &KoiEnv) -> Vec<String> {
    let run = env.run(&["certmesh", "status", "--json"]);
    run.expect_code(0);
    run.json()["details"]["devices_expiring"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices_expiring in {}", run.stdout))
        .iter()
        .map(|d| d["name"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn days_are_bounded_match_openssl_and_soon_expiring_devices_show_in_status() {
    let (env, pass) = local_ca();
    for bad in ["--days=0", "--days=826", "--days=-5"] {
        let run = issue(&env, &pass, &["bad.lan", bad]);
        run.expect_code(1);
        assert!(
            run.stderr.contains("1 to 825") && run.stderr.contains("--days"),
            "--days {bad}: {}",
            run.stderr
        );
    }
    assert!(!env.home.join("certs/bad.lan").exists());

    issue(&env, &pass, &["printer.lan"]).expect_code(0);
    let cam_dir = env.dir.path().join("cam");
    let out = cam_dir.display().to_string();
    let run = issue(
        &env,
        &pass,
        &["cam.lan", "--days", "10", "--out", &out, "--json"],
    );
    run.expect_code(0);
    assert_eq!(run.json()["days"], 10, "{}", run.stdout);
    issue(&env, &pass, &["nas.lan", "--days", "825"]).expect_code(0);

    assert_lasts_days(&env.home.join("certs/printer.lan/cert.pem"), 397);
    assert_lasts_days(&cam_dir.join("cert.pem"), 10);
    assert_lasts_days(&env.home.join("certs/nas.lan/cert.pem"), 825);
    let cam = roster_entry(&env, "cam.lan");
    assert_eq!(cam["device"]["days"], 10, "{cam:#}");
    assert_eq!(cam["device"]["out_dir"], out.as_str(), "{cam:#}");
    assert_eq!(roster_entry(&env, "printer.lan")["device"]["days"], 397);

    // Only the 10-day device is listed, with its serial, expiry and the next step.
    assert_eq!(expiring(&env), vec!["cam.lan".to_owned()]);
    let run = env.run(&["certmesh", "status", "--json"]);
    let listed = &run.json()["details"]["devices_expiring"][0];
    assert_eq!(listed["serial"], cam["serial"], "{listed:#}");
    assert!(
        listed["days_left"]
            .as_i64()
            .is_some_and(|d| (9..=10).contains(&d)),
        "{listed:#}"
    );
    assert_eq!(listed["next"], "koi certmesh issue --renew cam.lan");
    let human = env.run(&["certmesh", "status"]);
    human.expect_code(0);
    let text = format!("{}{}", human.stdout, human.stderr);
    assert!(
        text.contains("cam.lan") && text.contains("koi certmesh issue --renew"),
        "{text}"
    );
    assert!(!text.contains("printer.lan (serial"), "{text}");
}

#[test]
fn renew_keeps_the_key_changes_the_serial_and_verifies() {
    let (env, pass) = local_ca();
    let dir = env.dir.path().join("cam");
    let out = dir.display().to_string();
    issue(
        &env,
        &pass,
        &["cam.lan", "--days", "10", "--out", &out, "--ip", "10.0.0.7"],
    )
    .expect_code(0);
    let key_before = public_key(&dir.join("key.pem"));
    let serial_before = serial(&dir.join("cert.pem"));

    let run = issue(&env, &pass, &["--renew", "cam.lan", "--json"]);
    run.expect_code(0);
    let answer = run.json();
    assert_eq!(answer["files"]["dir"], out.as_str(), "{answer:#}");
    assert_eq!(answer["ip_addresses"][0], "10.0.0.7", "{answer:#}");
    assert_eq!(
        public_key(&dir.join("key.pem")),
        key_before,
        "the key changed"
    );
    let serial_after = serial(&dir.join("cert.pem"));
    assert_ne!(serial_after, serial_before, "the serial did not change");
    let (ok, text) = openssl(
        &["verify", "-CAfile", &format!("{out}/ca.pem")],
        &dir.join("cert.pem"),
    );
    assert!(ok, "{text}");
    // The recorded lifetime is kept, and the key matches the new certificate.
    assert_lasts_days(&dir.join("cert.pem"), 10);
    let (_, cert_key) = openssl(&["x509", "-noout", "-pubkey", "-in"], &dir.join("cert.pem"));
    assert_eq!(cert_key, key_before);
    assert!(
        audit_entries(&env)
            .iter()
            .any(|e| e["event"] == "certificate_renewed"
                && e["details"]["device"] == "cam.lan"
                && e["details"]["key_kept"] == true),
        "the renewal was not audited"
    );

    // A longer lifetime at renewal takes it off the expiring list.
    assert_eq!(expiring(&env), vec!["cam.lan".to_owned()]);
    issue(&env, &pass, &["--renew", "cam.lan", "--days", "397"]).expect_code(0);
    assert_lasts_days(&dir.join("cert.pem"), 397);
    assert!(expiring(&env).is_empty());
    assert_eq!(public_key(&dir.join("key.pem")), key_before);
}

#[test]
fn renew_refuses_an_unknown_name_and_a_key_koi_did_not_write() {
    let (env, pass) = local_ca();
    let run = issue(&env, &pass, &["--renew", "ghost.lan"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("no device certificate named ghost.lan")
            && run.stderr.contains("koi certmesh issue ghost.lan"),
        "{}",
        run.stderr
    );

    issue(&env, &pass, &["cam.lan"]).expect_code(0);
    let dir = env.home.join("certs/cam.lan");
    let cert_before = std::fs::read(dir.join("cert.pem")).expect("cert.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(dir.join("key.pem"))
        .status()
        .expect("openssl genpkey");
    assert!(status.success());
    let users_key = std::fs::read(dir.join("key.pem")).expect("key.pem");

    let run = issue(&env, &pass, &["--renew", "cam.lan"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("not the key koi wrote for cam.lan")
            && run.stderr.contains("koi certmesh issue cam.lan --out"),
        "{}",
        run.stderr
    );
    // Nothing was replaced.
    assert_eq!(
        std::fs::read(dir.join("key.pem")).expect("key.pem"),
        users_key
    );
    assert_eq!(
        std::fs::read(dir.join("cert.pem")).expect("cert.pem"),
        cert_before
    );

    // The next step it names works: a new key and certificate in the same folder.
    issue(
        &env,
        &pass,
        &["cam.lan", "--out", &dir.display().to_string()],
    )
    .expect_code(0);
    issue(&env, &pass, &["--renew", "cam.lan"]).expect_code(0);
}
