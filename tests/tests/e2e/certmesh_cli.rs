//! The certmesh command line as a newcomer meets it (issue 10 items 2, 3, 4, 5, 7, 9): advice
//! that names commands which exist ([`commands`]), flags refused with every reason at once, a
//! mistyped enrollment code caught before it costs an attempt, `--ca NAME.local` resolved through
//! koi-mdns, a member told whom to ask when the CA is locked, and member certificates that hold
//! the `host.local` name a client can actually resolve.

mod commands;

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::certmesh::{
    certmesh_bin, code, create, mdns_bin, mesh_ids, output_text, wait_for_api, write_passphrase,
    wrong_code,
};
use crate::support::netlab::NetLab;
use crate::support::pty::{Pty, result_line};
use crate::support::{KoiEnv, root_or_skip};

/// `create` refuses `.local` as a unicast domain, a subnet written with host bits (naming the
/// network it would be), and reports every missing profile requirement in one error; nothing is
/// created by any of them.
#[test]
fn create_refuses_local_domains_and_host_subnets_and_lists_every_missing_requirement() {
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(&env);
    for domain in ["local", "lab.local"] {
        let run = create(&env, &pass, &["--domain", domain]);
        run.expect_code(1);
        assert!(
            run.stderr.contains("belong to mDNS"),
            "--domain {domain}: {}",
            run.stderr
        );
    }
    let run = create(&env, &pass, &["--subnet", "10.88.1.5/24"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("did you mean 10.88.1.0/24?"),
        "{}",
        run.stderr
    );
    let run = create(&env, &pass, &["--profile", "organization"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("requires a scope and an operator name")
            && run.stderr.contains("--domain D")
            && run.stderr.contains("--operator NAME"),
        "{}",
        run.stderr
    );
    assert!(
        !env.home.join("certmesh").exists(),
        "a refused create left state behind"
    );
}

fn join_args_json<'a>(ca: &'a str, fingerprint: &'a str, code: &'a str) -> Vec<&'a str> {
    let mut args = join_args(ca, fingerprint, code);
    args.push("--json");
    args
}

fn join_args<'a>(ca: &'a str, fingerprint: &'a str, code: &'a str) -> Vec<&'a str> {
    vec![
        "certmesh",
        "join",
        "--ca",
        ca,
        "--fingerprint",
        fingerprint,
        "--code",
        code,
    ]
}

/// In a two-host lab: a member joining a locked CA is told to ask the CA's operator, by name;
/// malformed codes never reach the CA (three of them cost nothing) while three wrong ones lock
/// enrollment out, which `status` shows with its end; at a terminal a malformed code is asked
/// for again; `--ca NAME.local` resolves through
/// koi-mdns (an unknown name says so); the member's certificate holds `cmcli-b.local`, which
/// `join` says and `curl https://cmcli-b.local` proves; `unlock` on the member names the CA.
#[test]
fn join_by_local_name_checks_codes_locally_and_tells_a_member_whom_to_ask() {
    if !root_or_skip("join_by_local_name_checks_codes_locally_and_tells_a_member_whom_to_ask") {
        return;
    }
    let lab = NetLab::new("cmcli");
    for host in [&lab.a, &lab.b] {
        host.env.install(&certmesh_bin(), "certmesh");
        host.env.install(&mdns_bin(), "mdns");
    }
    let pass = write_passphrase(&lab.a.env);
    let quick = [("KOI_RESTART_INITIAL_MS", "50")];
    let mut daemon_a = lab.a.env.start_daemon(&quick);
    let created = create(&lab.a.env, &pass, &["--json"]);
    created.expect_code(0);
    let (uri, fingerprint) = mesh_ids(&created);

    // A locked CA (the daemon restarted): the member is told whom to ask, not to unlock itself.
    daemon_a.terminate(Duration::from_secs(10));
    drop(daemon_a);
    let _daemon_a = lab.a.env.start_daemon(&quick);
    wait_for_api(&lab.a, &lab.a.ip);
    let the_code = code(&uri, 0);
    let locked = lab
        .b
        .env
        .run(&join_args(&lab.a.ip, &fingerprint, &the_code));
    locked.expect_code(1);
    assert!(
        locked
            .stderr
            .contains("Ask the operator of cmcli-a to run `koi certmesh unlock` on cmcli-a"),
        "{}",
        locked.stderr
    );
    lab.a
        .env
        .run(&["certmesh", "unlock", "--passphrase-file", &pass])
        .expect_code(0);

    // Malformed codes are refused here and cost no attempt at the CA.
    for bad in ["abc", "12345", "1234567", "12a456"] {
        let run = lab.b.env.run(&join_args(&lab.a.ip, &fingerprint, bad));
        run.expect_code(1);
        assert!(
            run.stderr.contains("Nothing was sent to the CA") && !run.stderr.contains(bad),
            "--code {bad}: {}",
            run.stderr
        );
    }
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(
        status.json()["details"]["enrollment_open"],
        true,
        "{}",
        status.stdout
    );
    assert!(status.json()["details"]["enrollment_locked_out"].is_null());

    // Three wrong codes lock enrollment out; status says so and when it ends.
    for _ in 0..3 {
        let wrong = wrong_code(&uri);
        lab.b
            .env
            .run(&join_args(&lab.a.ip, &fingerprint, &wrong))
            .expect_code(1);
    }
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    let details = &status.json()["details"];
    assert_eq!(details["enrollment_open"], false, "{}", status.stdout);
    assert!(
        details["enrollment_locked_out"]["until"]
            .as_str()
            .is_some_and(|u| u.ends_with('Z'))
            && details["enrollment_locked_out"]["seconds_left"].as_u64() > Some(0),
        "{}",
        status.stdout
    );
    let human = lab.a.env.run(&["certmesh", "status"]);
    assert!(
        human.stdout.contains("enrollment LOCKED OUT"),
        "{}",
        human.stdout
    );
    // rotate-secret restarts the code guard, so the lab can go on.
    let rotated = lab.a.env.run(&["certmesh", "rotate-secret", "--json"]);
    rotated.expect_code(0);
    let uri = rotated.json()["otpauth_uri"]
        .as_str()
        .expect("new uri")
        .to_owned();

    // An unknown .local name: the mDNS lookup fails and says how to check the name.
    let the_code = code(&uri, 0);
    let unknown = lab
        .b
        .env
        .run(&join_args("nosuch-cmcli.local", &fingerprint, &the_code));
    unknown.expect_code(1);
    assert!(
        unknown
            .stderr
            .contains("No machine answered for nosuch-cmcli.local over mDNS")
            && unknown
                .stderr
                .contains("`koi mdns resolve nosuch-cmcli.local`"),
        "{}",
        unknown.stderr
    );

    // Join by the CA's mDNS name, at a terminal: a malformed --code, then a malformed typed
    // code, are each answered with a new question, and nothing reaches the CA until the code
    // has six digits.
    let mut pty = Pty::start(
        &lab.b.env,
        &join_args_json("cmcli-a.local", &fingerprint, "abc"),
        &[],
    );
    pty.wait_for("you will be asked for the code instead");
    pty.wait_for("Enrollment code");
    pty.type_bytes(b"12a\n");
    pty.wait_for("type the code again");
    pty.type_bytes(format!("{}\n", code(&uri, 0)).as_bytes());
    let (exit, output) = pty.finish();
    assert_eq!(exit, Some(0), "{output}");
    let joined = result_line(&output);
    let holds = joined["certificate_holds"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        holds.contains("cmcli-b.local") && holds.contains(&lab.b.ip),
        "{joined}"
    );
    assert!(
        joined["dns_names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "cmcli-b.local")),
        "{joined}"
    );

    // `curl https://cmcli-b.local` from A, against B serving its new certificate.
    let certs = lab.b.env.home.join("certs").join("cmcli-b");
    let mut server = lab
        .b
        .command(
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                "8443",
                "-cert",
                &certs.join("cert.pem").display().to_string(),
                "-key",
                &certs.join("key.pem").display().to_string(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let ca_pem = lab.a.env.home.join("certs").join("cmcli-a").join("ca.pem");
    let resolve = format!("cmcli-b.local:8443:{}", lab.b.ip);
    let deadline = Instant::now() + Duration::from_secs(15);
    let curl = loop {
        let out = lab
            .a
            .command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "3",
                    "--resolve",
                    &resolve,
                    "--cacert",
                    &ca_pem.display().to_string(),
                    "https://cmcli-b.local:8443/",
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
    assert!(curl.status.success(), "curl: {}", output_text(&curl));

    // `unlock` on the member: it names the mesh and its CA, and whom to ask.
    let unlock = lab.b.env.run(&["certmesh", "unlock"]);
    unlock.expect_code(1);
    assert!(
        unlock.stderr.contains("member of mesh")
            && unlock.stderr.contains("whose CA is cmcli-a")
            && unlock
                .stderr
                .contains("Ask the operator of cmcli-a to run `koi certmesh unlock` on cmcli-a"),
        "{}",
        unlock.stderr
    );
}

/// The advice for a damaged CA is followed verbatim and works: with the vault gone, or the
/// roster or membership record unreadable, the error names `koi certmesh leave` then `koi
/// certmesh create` (no
/// nonexistent `restore`, no `create` that would refuse), and running exactly those succeeds. A
/// wrong passphrase says to type it again.
#[test]
fn advice_for_a_damaged_ca_names_commands_that_then_work() {
    if !root_or_skip("advice_for_a_damaged_ca_names_commands_that_then_work") {
        return;
    }
    let lab = NetLab::new("cmfix");
    let env = &lab.a.env;
    env.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(env);
    create(env, &pass, &[]).expect_code(0);

    let wrong = env.dir.path().join("wrong-pass");
    std::fs::write(&wrong, "not the passphrase at all\n").expect("write");
    let run = env.run(&[
        "certmesh",
        "unlock",
        "--passphrase-file",
        &wrong.display().to_string(),
    ]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("type the passphrase exactly") && !run.stderr.contains("restore"),
        "{}",
        run.stderr
    );

    // The vault is gone: the advice is leave, then create.
    std::fs::remove_file(env.home.join("certmesh/ca/vault.sealed")).expect("remove vault");
    let run = env.run(&["certmesh", "unlock", "--passphrase-file", &pass]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("vault") && run.stderr.contains("missing"),
        "{}",
        run.stderr
    );
    follow_leave_then_create(env, &pass, &run.stderr);

    // The roster is unreadable: the same advice, and it works too.
    std::fs::write(env.home.join("certmesh/roster.json"), "{ not json").expect("corrupt");
    let status = env.run(&["certmesh", "status", "--json"]);
    let problem = status.json()["details"]["roster_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!problem.contains("restore"), "{problem}");
    follow_leave_then_create(env, &pass, &problem);

    // The CA's membership record is unreadable: `join` (refused on a CA) is not the advice.
    std::fs::write(env.home.join("certmesh/membership.json"), "[").expect("corrupt");
    let run = env.run(&["certmesh", "trust", "install"]);
    run.expect_code(1);
    assert!(!run.stderr.contains("certmesh join"), "{}", run.stderr);
    follow_leave_then_create(env, &pass, &run.stderr);
}

/// Asserts `advice` names `koi certmesh leave` and `koi certmesh create`, then runs them.
fn follow_leave_then_create(env: &KoiEnv, pass: &str, advice: &str) {
    assert!(
        advice.contains("`koi certmesh leave`") && advice.contains("`koi certmesh create`"),
        "{advice}"
    );
    let left = env.run(&["certmesh", "leave", "--yes"]);
    assert_eq!(left.code, Some(0), "leave: {}{}", left.stdout, left.stderr);
    let again = create(env, pass, &[]);
    assert_eq!(
        again.code,
        Some(0),
        "create: {}{}",
        again.stdout,
        again.stderr
    );
}
