//! koi-certmesh end to end: two lab hosts (network namespaces, their own host names, trust stores
//! in temporary roots), real `koi daemon`s, real mDNS discovery between them, real TLS clients
//! (`openssl`, `curl`). Covers create → unlock → join → TLS, every refusal with its audit entry,
//! secrets staying out of logs and traces, and file modes; `one_host` has the single-host checks
//! (tampering with the audit log, bad input, the keystroke mash).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::certmesh::{
    LabCa, PASSPHRASE, audit_entries, ca_under_daemon, certmesh_bin, code, files_under,
    join_from_b, mdns_bin, mode, openssl_csr, output_text, public_key_of, raw_join, refusals,
    wait_for_api, write_passphrase, wrong_code,
};
use crate::support::netlab::NetLab;
use crate::support::root_or_skip;

mod one_host;

#[test]
fn two_host_lab_create_unlock_join_then_tls_works_and_no_secret_leaks() {
    if !root_or_skip("two_host_lab_create_unlock_join_then_tls_works_and_no_secret_leaks") {
        return;
    }
    let lab = NetLab::new("cm");
    for host in [&lab.a, &lab.b] {
        host.env.install(&certmesh_bin(), "certmesh");
        host.env.install(&mdns_bin(), "mdns");
    }
    let noisy = [
        ("RUST_LOG", "trace"),
        ("KOI_LOG", "trace"),
        ("KOI_TRACE_PROTOCOL", "1"),
    ];
    let mut traces = String::new();
    let pass_file = write_passphrase(&lab.a.env);

    // A: daemon, then create through it (forwarded), non-interactive.
    let mut a_env: Vec<(&str, &str)> = noisy.to_vec();
    a_env.push(("KOI_RESTART_INITIAL_MS", "50"));
    let mut daemon_a = lab.a.env.start_daemon(&a_env);
    let mut create_cmd = lab.a.env.command(&[
        "certmesh",
        "create",
        "--profile",
        "personal",
        "--operator",
        "ana",
        "--domain",
        "lan",
        "--entropy",
        "system",
        "--passphrase-file",
        &pass_file,
        "--json",
    ]);
    for (k, v) in &noisy {
        create_cmd.env(k, v);
    }
    let out = create_cmd.output().expect("create");
    traces.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "create failed: {}", output_text(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create --json");
    let uri = created["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_owned();
    let fingerprint = created["mesh"]["ca_fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert_eq!(created["serving"], true, "{created}");
    assert!(created["trust"]["stores"].is_array(), "{created}");

    // Restart A's daemon: the CA must come back locked.
    daemon_a.terminate(Duration::from_secs(10));
    traces.push_str(&daemon_a.log_text());
    drop(daemon_a);
    let daemon_a = lab.a.env.start_daemon(&a_env);
    wait_for_api(&lab.a, &lab.a.ip);
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    status.expect_code(0);
    assert_eq!(
        status.json()["details"]["locked"],
        true,
        "{}",
        status.stdout
    );
    assert!(
        status.json()["summary"]
            .as_str()
            .unwrap_or("")
            .contains("LOCKED")
    );

    // B: daemon (with koi-mdns browsing in its namespace).
    let daemon_b = lab.b.env.start_daemon(&noisy);

    // A join while the CA is locked is refused (503), and audited once unlocked.
    let locked = lab.b.env.run(&[
        "certmesh",
        "join",
        "--ca",
        &lab.a.ip,
        "--fingerprint",
        &fingerprint,
        "--code",
        &code(&uri, 0),
    ]);
    locked.expect_code(1);
    assert!(
        locked
            .stderr
            .contains("is locked: its key stays sealed until its operator unlocks it"),
        "{}",
        locked.stderr
    );

    // Unlock A.
    let unlock = lab.a.env.run(&[
        "certmesh",
        "unlock",
        "--passphrase-file",
        &pass_file,
        "--json",
    ]);
    unlock.expect_code(0);
    assert_eq!(unlock.json()["unlocked"], true);
    assert_eq!(
        unlock.json()["pending_entries_signed"],
        1,
        "{}",
        unlock.stdout
    );

    // B joins, finding A with mDNS (no --ca), pinning the fingerprint.
    let the_code = code(&uri, 0);
    let join_deadline = Instant::now() + Duration::from_secs(30);
    let joined = loop {
        let mut cmd = lab.b.env.command(&[
            "certmesh",
            "join",
            "--fingerprint",
            &fingerprint,
            "--code",
            &the_code,
            "--operator",
            "bo",
            "--json",
        ]);
        for (k, v) in &noisy {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("join");
        traces.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("join --json");
        }
        // mDNS may need a moment after A's daemon started advertising.
        let text = output_text(&out);
        assert!(
            text.contains("No certmesh CA answered") && Instant::now() < join_deadline,
            "join failed: {text}"
        );
    };
    assert_eq!(joined["mesh"]["ca_fingerprint"], fingerprint.as_str());
    let b_dns: Vec<&str> = joined["dns_names"]
        .as_array()
        .expect("dns_names")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let b_name = format!("{}.lan", lab.b.hostname);
    assert_eq!(
        b_dns,
        vec![b_name.as_str()],
        "scope `lan` keeps only host.lan"
    );
    assert!(
        joined["ip_addresses"]
            .as_array()
            .expect("ips")
            .iter()
            .any(|v| v == lab.b.ip.as_str())
    );

    // B's files: openssl verifies the chain; modes as documented.
    let b_certs = lab.b.env.home.join("certs").join(&lab.b.hostname);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(b_certs.join("ca.pem"))
        .arg(b_certs.join("cert.pem"))
        .output()
        .expect("openssl verify");
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        output_text(&verify)
    );
    assert_eq!(mode(&b_certs.join("key.pem")), 0o600);
    assert_eq!(mode(&b_certs), 0o700);
    assert_eq!(mode(&lab.a.env.home.join("certmesh")), 0o700);
    assert_eq!(
        mode(&lab.a.env.home.join("certmesh/ca/vault.sealed")),
        0o600
    );

    // B serves TLS with its certificate; A's curl trusts it through A's trust-store bundle.
    let mut server = lab
        .b
        .command(
            "openssl",
            &[
                "s_server",
                "-accept",
                "443",
                "-cert",
                &b_certs.join("cert.pem").display().to_string(),
                "-key",
                &b_certs.join("key.pem").display().to_string(),
                "-www",
                "-quiet",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let bundle = lab.a.trust_root.join("etc/ssl/certs/ca-certificates.crt");
    assert!(
        bundle.exists(),
        "trust install made no bundle at {}",
        bundle.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let curl = loop {
        let out = lab
            .a
            .command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    "--cacert",
                    &bundle.display().to_string(),
                    "--resolve",
                    &format!("{b_name}:443:{}", lab.b.ip),
                    &format!("https://{b_name}/"),
                ],
            )
            .output()
            .expect("curl");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        curl.status.success(),
        "curl from A to B failed: {}",
        output_text(&curl)
    );

    // A's status lists B; the audit log verifies.
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let members = status.json()["details"]["members"].clone();
    assert!(
        members
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["hostname"] == lab.b.hostname.as_str() && m["role"] == "member"),
        "{members}"
    );
    lab.a
        .env
        .run(&["certmesh", "log", "--verify"])
        .expect_code(0);
    let events: Vec<String> = audit_entries(&lab.a.env)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .collect();
    for expected in [
        "pond_initialized",
        "ca_unlocked",
        "enrollment_refused",
        "member_enrolled",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing from {events:?}"
        );
    }
    let first = &audit_entries(&lab.a.env)[0];
    assert_eq!(first["event"], "pond_initialized");
    assert_eq!(first["actor"], "ana");

    // B's status: a member of A's mesh.
    let b_status = lab.b.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(
        b_status.json()["details"]["role"],
        "member",
        "{}",
        b_status.stdout
    );

    // Secrets: nothing secret in any log or trace, no plaintext CA key under KOI_HOME.
    drop(daemon_b);
    let mut daemon_a = daemon_a;
    daemon_a.terminate(Duration::from_secs(10));
    traces.push_str(&daemon_a.log_text());
    for f in files_under(lab.b.env.dir.path())
        .iter()
        .chain(files_under(lab.a.env.dir.path()).iter())
    {
        if f.extension().is_some_and(|e| e == "log") {
            traces.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
    }
    assert!(traces.contains("\"method\""), "traces were not captured");
    let secret_b32 = uri
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("secret in URI");
    for (what, needle) in [
        ("passphrase", PASSPHRASE),
        ("TOTP secret", secret_b32),
        ("enrollment code", the_code.as_str()),
        ("private key", "PRIVATE KEY"),
        ("otpauth URI", "otpauth://"),
    ] {
        assert!(
            !traces.contains(needle),
            "the {what} appears in a log or trace"
        );
    }
    let ca_public = public_key_of(&lab.a.env.home.join("certmesh/ca/ca.pem"), true);
    for f in files_under(&lab.a.env.home) {
        let text = std::fs::read(&f).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains("PRIVATE KEY") {
            assert_ne!(
                public_key_of(&f, false),
                ca_public,
                "{} holds the CA key in clear",
                f.display()
            );
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
}

#[test]
fn refusals_are_4xx_with_an_audit_entry_and_a_ca_request_still_yields_a_leaf() {
    if !root_or_skip("refusals_are_4xx_with_an_audit_entry_and_a_ca_request_still_yields_a_leaf") {
        return;
    }
    let lab = NetLab::new("cr");
    let (_daemon, ca) = ca_under_daemon(&lab, &["--domain", "lan", "--no-trust", "--json"]);
    let LabCa {
        uri,
        fingerprint: fp,
        ca_pem,
        ..
    } = ca;
    let join = |code: &str, extra: &[&str]| {
        let mut args = vec!["--no-trust"];
        args.extend_from_slice(extra);
        join_from_b(&lab, &fp, code, &args)
    };

    // A name outside the scope: 403, no code burned.
    let out_of_scope = join(&code(&uri, 0), &["--name", "evil.example"]);
    out_of_scope.expect_code(1);
    assert!(
        out_of_scope.stderr.contains("(403)") && out_of_scope.stderr.contains("evil.example"),
        "{}",
        out_of_scope.stderr
    );

    // A wrong code: 401.
    let wrong = join(&wrong_code(&uri), &[]);
    wrong.expect_code(1);
    assert!(
        wrong.stderr.contains("(401)") && wrong.stderr.contains("does not match"),
        "{}",
        wrong.stderr
    );

    // The right code works once...
    let good = code(&uri, 0);
    join(&good, &[]).expect_code(0);
    // ...and is refused when replayed.
    let replay = join(&good, &[]);
    replay.expect_code(1);
    assert!(
        replay.stderr.contains("(401)") && replay.stderr.contains("already used"),
        "{}",
        replay.stderr
    );

    // A CSR asking for CA:TRUE still yields a leaf (next step's code, inside the ±1 window).
    let csr = openssl_csr(lab.b.env.dir.path(), "sneaky", true);
    let (status, body) = raw_join(
        &lab,
        &ca_pem,
        &serde_json::json!({"hostname": "sneaky", "code": code(&uri, 30), "csr_pem": csr}),
    );
    assert_eq!(status, 200, "{body}");
    let leaf = lab.b.env.dir.path().join("sneaky.pem");
    std::fs::write(&leaf, body["cert_pem"].as_str().expect("cert_pem")).expect("write leaf");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("TLS Web Client Authentication"),
        "{text}"
    );

    // Malformed requests: 4xx with a reason, never a crash.
    let (status, body) = raw_join(&lab, &ca_pem, &serde_json::json!({"hostname": 5}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "bad_request");
    let (status, _) = raw_join(
        &lab,
        &ca_pem,
        &serde_json::json!({"hostname": "x", "code": "123456", "csr_pem": "garbage"}),
    );
    assert_eq!(status, 400);
    // An oversized body is 413, a wrong verb 405, an unknown path 404 — each with a JSON reason.
    let huge = serde_json::json!({"hostname": "x", "code": "1", "csr_pem": "A".repeat(200_000)});
    let (status, body) = raw_join(&lab, &ca_pem, &huge);
    assert_eq!(
        (status, body["reason"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let api = format!("https://{}:5641", lab.a.ip);
    let ca_arg = ca_pem.display().to_string();
    for (args, expected) in [(vec!["-X", "DELETE"], "405"), (vec!["-X", "GET"], "405")] {
        let mut all = vec![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca_arg,
        ];
        all.extend(args);
        let url = format!("{api}/v1/certmesh/join");
        all.push(&url);
        let out = lab.b.command("curl", &all).output().expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    let unknown = format!("{api}/v1/certmesh/nope");
    let out = lab
        .b
        .command("curl", &["-s", "--cacert", &ca_arg, &unknown])
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not_found"));

    // Three wrong codes lock enrollment; a fourth attempt, even with a right code, gets 429.
    for _ in 0..3 {
        join(&wrong_code(&uri), &[]).expect_code(1);
    }
    let fourth = join(&code(&uri, 0), &[]);
    fourth.expect_code(1);
    assert!(
        fourth.stderr.contains("(429)") && fourth.stderr.contains("locked"),
        "{}",
        fourth.stderr
    );

    // Every refusal is in the signed audit log, which still verifies.
    let reasons = refusals(&lab.a.env);
    for expected in ["not_permitted", "bad_code", "locked_out"] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "{expected} not audited: {reasons:?}"
        );
    }
    assert!(
        reasons.iter().filter(|r| *r == "bad_code").count() >= 5,
        "{reasons:?}"
    );
    lab.a
        .env
        .run(&["certmesh", "log", "--verify"])
        .expect_code(0);
    // The health route answers; the roster needs a member certificate.
    let health = lab
        .b
        .command(
            "curl",
            &[
                "-sS",
                "--cacert",
                &ca_pem.display().to_string(),
                &format!("https://{}:5641/v1/certmesh/health", lab.a.ip),
            ],
        )
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&health.stdout).contains("\"locked\":false"));
    let b_certs = lab.b.env.home.join("certs").join(&lab.b.hostname);
    let roster_url = format!("https://{}:5641/v1/certmesh/roster", lab.a.ip);
    let anonymous = lab
        .b
        .command(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &ca_pem.display().to_string(),
                &roster_url,
            ],
        )
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    let member = lab
        .b
        .command(
            "curl",
            &[
                "-sS",
                "--cacert",
                &ca_pem.display().to_string(),
                "--cert",
                &b_certs.join("cert.pem").display().to_string(),
                "--key",
                &b_certs.join("key.pem").display().to_string(),
                &roster_url,
            ],
        )
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&member.stdout).contains(&lab.b.hostname),
        "{}",
        output_text(&member)
    );
}
