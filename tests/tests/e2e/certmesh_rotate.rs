//! `koi certmesh rotate-secret` end to end (issue 9, finding 6) in a two-namespace lab: rotation
//! one-shot with a passphrase file and under an unlocked daemon; codes from the old URI are
//! refused (401) and codes from the new one enroll; members enrolled before stay in the roster
//! with valid certificates; the audit log records each rotation and verifies; and `create` over
//! an existing mesh points at `rotate-secret`. Also the CA's local files (issue 9, item 9):
//! `KOI_HOME` and `certs/` are created 0700, and what a killed writer left is swept at start.

use std::process::Command;

use crate::support::certmesh::{
    audit_entries, certmesh_bin, code, create, join_from_b, mesh_ids, mode, openssl_csr,
    output_text, raw_join, wait_for_api, write_passphrase,
};
use crate::support::netlab::NetLab;
use crate::support::{KoiEnv, Run, root_or_skip};

/// `rotate-secret --json`; returns the new URI. With `traced`, runs with protocol traces on and
/// checks that the new secret appears in none of them (the field is `x-koi-secret`).
fn rotate(env: &KoiEnv, pass_file: Option<&str>, traced: bool) -> String {
    let mut args = vec!["certmesh", "rotate-secret", "--json"];
    if let Some(f) = pass_file {
        args.extend_from_slice(&["--passphrase-file", f]);
    }
    let mut cmd = env.command(&args);
    if traced {
        cmd.env("KOI_LOG", "trace").env("KOI_TRACE_PROTOCOL", "1");
    }
    let run = Run::from(cmd.output().expect("rotate-secret"));
    run.expect_code(0);
    let uri = run.json()["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_owned();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    if traced {
        let secret = uri
            .split("secret=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .expect("secret in URI");
        assert!(
            run.stderr.contains("\"method\""),
            "no trace: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(secret) && !run.stderr.contains("otpauth://"),
            "the new secret appears in a trace"
        );
    }
    uri
}

fn member_names(env: &KoiEnv) -> Vec<String> {
    let status = env.run(&["certmesh", "status", "--json"]);
    status.expect_code(0);
    status.json()["details"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["hostname"].as_str().map(str::to_owned))
        .collect()
}

fn refused_as_wrong(run: &Run) {
    run.expect_code(1);
    assert!(
        run.stderr.contains("(401)") && run.stderr.contains("does not match"),
        "{}",
        run.stderr
    );
}

#[test]
fn rotate_secret_replaces_the_code_and_keeps_the_members() {
    if !root_or_skip("rotate_secret_replaces_the_code_and_keeps_the_members") {
        return;
    }
    let lab = NetLab::new("rot");
    lab.a.env.install(&certmesh_bin(), "certmesh");
    lab.b.env.install(&certmesh_bin(), "certmesh");
    let pass_file = write_passphrase(&lab.a.env);

    // One-shot create, then `create` again names rotate-secret.
    let created = create(&lab.a.env, &pass_file, &["--no-trust", "--json"]);
    created.expect_code(0);
    let (uri0, fp) = mesh_ids(&created);
    let again = create(&lab.a.env, &pass_file, &["--no-trust"]);
    again.expect_code(1);
    assert!(
        again.stderr.contains("koi certmesh rotate-secret"),
        "{}",
        again.stderr
    );

    // One-shot rotation with the passphrase file.
    let uri1 = rotate(&lab.a.env, Some(&pass_file), true);
    assert_ne!(uri0, uri1);

    // Daemon, unlock; the old secret's code is refused, the new one's enrolls B.
    let _daemon = lab.a.env.start_daemon(&[]);
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &pass_file])
        .expect_code(0);
    wait_for_api(&lab.a, &lab.a.ip);
    let join = |uri: &str| join_from_b(&lab, &fp, &code(uri, 0), &["--no-trust"]);
    refused_as_wrong(&join(&uri0));
    join(&uri1).expect_code(0);
    assert!(member_names(&lab.a.env).contains(&lab.b.hostname));

    // Rotation under the unlocked daemon: the (previously valid) uri1 is refused, uri2 works.
    let uri2 = rotate(&lab.a.env, None, false);
    assert_ne!(uri1, uri2);
    let ca_pem = lab.a.env.home.join("certmesh/ca/ca.pem");
    let csr = openssl_csr(lab.b.env.dir.path(), "late", false);
    let body =
        |uri: &str| serde_json::json!({"hostname": "late", "code": code(uri, 30), "csr_pem": csr});
    let (status, answer) = raw_join(&lab, &ca_pem, &body(&uri1));
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = raw_join(&lab, &ca_pem, &body(&uri2));
    assert_eq!(status, 200, "{answer}");

    // B, enrolled before the rotation, is still a member and its certificate still verifies.
    let members = member_names(&lab.a.env);
    assert!(
        members.contains(&lab.b.hostname) && members.contains(&"late".to_owned()),
        "{members:?}"
    );
    let b_certs = lab.b.env.home.join("certs").join(&lab.b.hostname);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca_pem)
        .arg(b_certs.join("cert.pem"))
        .output()
        .expect("openssl verify");
    assert!(verify.status.success(), "{}", output_text(&verify));

    // Both rotations are in the audit log, which verifies.
    let rotations = audit_entries(&lab.a.env)
        .iter()
        .filter(|e| e["event"] == "secret_rotated")
        .count();
    assert_eq!(rotations, 2);
    let verified = lab.a.env.run(&["certmesh", "log", "--verify"]);
    verified.expect_code(0);
}

#[test]
fn koi_home_is_created_private_and_a_killed_writers_leftovers_are_swept_at_start() {
    if !root_or_skip(
        "koi_home_is_created_private_and_a_killed_writers_leftovers_are_swept_at_start",
    ) {
        return;
    }
    let mut lab = NetLab::new("prv");
    lab.a.env.home = lab.a.env.dir.path().join("fresh/home");
    lab.a.env.install(&certmesh_bin(), "certmesh");
    let home = lab.a.env.home.clone();
    let pass_file = write_passphrase(&lab.a.env);

    // The daemon creates KOI_HOME (run/, state/): owner only.
    let mut daemon = lab.a.env.start_daemon(&[]);
    assert_eq!(mode(&home), 0o700, "KOI_HOME");
    assert_eq!(mode(&home.join("run")), 0o700);
    create(&lab.a.env, &pass_file, &["--no-trust"]).expect_code(0);
    let certs = home.join("certs");
    let own = certs.join(&lab.a.hostname);
    assert_eq!(mode(&certs), 0o700, "certs/");
    assert_eq!(mode(&own), 0o700);
    assert_eq!(mode(&home.join("state")), 0o700);
    daemon.terminate(std::time::Duration::from_secs(10));
    drop(daemon);

    // What a writer killed mid-write leaves, and a certs/ an older koi made 0755.
    let temp = ".tmp-0123456789abcdef";
    let planted = [
        home.join(format!("certmesh/.roster.json{temp}")),
        home.join(format!("certmesh/ca/.vault.sealed{temp}")),
        own.join(format!(".key.pem{temp}")),
    ];
    for p in &planted {
        std::fs::write(p, "half-written").expect("plant");
    }
    let staging = home.join("certmesh.creating");
    std::fs::create_dir_all(staging.join("ca")).expect("staging");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // The next daemon's certmesh takes the writer lock at start and sweeps.
    let _daemon = lab.a.env.start_daemon(&[]);
    wait_for_api(&lab.a, &lab.a.ip);
    for p in &planted {
        assert!(!p.exists(), "{} survived the start", p.display());
    }
    assert!(!staging.exists(), "certmesh.creating/ survived the start");
    assert_eq!(mode(&certs), 0o700, "certs/ not tightened");
    assert!(home.join("certmesh/roster.json").exists());
}
