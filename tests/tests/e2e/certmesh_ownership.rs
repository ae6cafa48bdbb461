//! Findings 1 and 7 of issue 9, end to end: a certificate may hold only names and addresses no
//! other roster entry holds (join and `issue`), a mesh has a scope by default (written into the
//! root as name constraints), an unconstrained root needs `--unconstrained`, names are compared
//! in canonical form, and `issue` never writes through links, into another entry's folder, or
//! over files koi did not write (without `--force`).

use std::path::Path;
use std::process::Command;

use crate::support::certmesh::{
    LabCa, audit_entries, ca_under_daemon, certmesh_bin, create, fresh_code, local_ca, openssl_csr,
    output_text, raw_join, refusals, write_passphrase,
};
use crate::support::netlab::NetLab;
use crate::support::{KoiEnv, root_or_skip};

fn x509_text(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(pem)
        .output()
        .expect("openssl x509");
    output_text(&out)
}

fn roster_members(env: &KoiEnv) -> Vec<serde_json::Value> {
    let roster: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.home.join("certmesh/roster.json")).expect("roster.json"),
    )
    .expect("roster json");
    roster["members"].as_array().cloned().unwrap_or_default()
}

#[test]
fn join_cannot_take_names_or_addresses_and_a_mesh_is_scoped_unless_unconstrained() {
    if !root_or_skip(
        "join_cannot_take_names_or_addresses_and_a_mesh_is_scoped_unless_unconstrained",
    ) {
        return;
    }
    let lab = NetLab::new("ow");
    // No --domain: the default scope.
    let (_daemon, ca) = ca_under_daemon(&lab, &["--no-trust", "--json"]);
    let LabCa {
        uri,
        ca_pem,
        created,
        ..
    } = ca;

    // Another entry: a device on A.
    lab.a
        .env
        .run(&["certmesh", "issue", "nas.lan"])
        .expect_code(0);
    let ca_name = format!("{}.lan", lab.a.hostname);
    let mut last = i64::MIN;
    let join = |code: String, names: &[&str], ips: &[&str]| {
        let csr = openssl_csr(lab.b.env.dir.path(), "intruder", false);
        raw_join(
            &lab,
            &ca_pem,
            &serde_json::json!({
                "hostname": "intruder", "code": code, "csr_pem": csr,
                "extra_names": names, "ip_addresses": ips,
            }),
        )
    };

    // The CA's own name (in another spelling), another entry's name: each refused with a valid
    // code, naming the entry that holds it. (The CA's address is left out, further down.)
    let upper = ca_name.to_uppercase();
    let cases: [(&[&str], &[&str], &str); 2] = [
        (&[upper.as_str()], &[], lab.a.hostname.as_str()),
        (&["nas.lan"], &[], "device certificate nas.lan"),
    ];
    for (names, ips, holder) in cases {
        let code = fresh_code(&uri, &mut last);
        let (status, body) = join(code, names, ips);
        let error = body["error"].as_str().unwrap_or("");
        assert_eq!(status, 403, "{names:?} {ips:?}: {body}");
        assert!(
            error.contains("belongs to") && error.contains(holder),
            "{names:?} {ips:?}: {error}"
        );
        assert!(error.contains("koi certmesh status"), "{error}");
    }

    // Outside the default scope: refused before the code is spent, so the same code then works
    // for a join that claims the machine's own source address.
    let spare = fresh_code(&uri, &mut last);
    for name in ["localhost", "www.example.com"] {
        let (status, body) = join(spare.clone(), &[name], &[]);
        assert_eq!(status, 403, "{name}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(name),
            "{body}"
        );
    }
    // The machine's own source address is kept; the CA's address, which a member reports when
    // both share an address (Docker's 172.17.0.1 on every machine), is left out naming its holder.
    let (status, body) = join(spare, &[], &[lab.b.ip.as_str(), lab.a.ip.as_str()]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ip_addresses"], serde_json::json!([lab.b.ip]));
    let dropped = body["dropped_addresses"].to_string();
    assert!(
        dropped.contains(&lab.a.ip) && dropped.contains(&lab.a.hostname),
        "{body}"
    );
    assert_eq!(
        body["dns_names"],
        serde_json::json!(["intruder.local", "intruder.lan"])
    );

    // Every refusal is audited, naming the holder.
    let entries = audit_entries(&lab.a.env);
    let details: Vec<String> = entries
        .iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .map(|e| e["details"]["detail"].as_str().unwrap_or("").to_owned())
        .collect();
    for needle in [
        "localhost",
        "www.example.com",
        &format!("the name {ca_name} belongs to"),
        "the name nas.lan belongs to device certificate nas.lan",
    ] {
        assert!(
            details.iter().any(|d| d.contains(needle)),
            "{needle} not audited: {details:#?}"
        );
    }
    assert!(refusals(&lab.a.env).len() >= 4);

    // The root carries the scope as name constraints.
    let root = x509_text(&ca_pem);
    for needle in [
        "X509v3 Name Constraints",
        "DNS:lan",
        "DNS:home.arpa",
        "DNS:local",
        "IP:10.0.0.0/255.0.0.0",
        "IP:192.168.0.0/255.255.0.0",
    ] {
        assert!(
            root.contains(needle),
            "{needle} missing from the root:\n{root}"
        );
    }
    let status = lab.a.env.run(&["certmesh", "status", "--json"]);
    assert_eq!(status.json()["details"]["unconstrained"], false);
    assert_eq!(created.json()["unconstrained"], false, "{}", created.stdout);

    // An unconstrained root only on request: it warns, is audited, and status says so.
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(&env);
    let run = create(&env, &pass, &["--no-trust", "--unconstrained", "--json"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("UNCONSTRAINED") && run.stderr.contains("any website"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["unconstrained"], true);
    assert!(!x509_text(&env.home.join("certmesh/ca/ca.pem")).contains("Name Constraints"));
    let init = audit_entries(&env)
        .into_iter()
        .find(|e| e["event"] == "pond_initialized")
        .expect("pond_initialized");
    assert_eq!(init["details"]["unconstrained"], true, "{init}");
    let status = env.run(&["certmesh", "status", "--json"]);
    assert_eq!(status.json()["details"]["unconstrained"], true);
    let human = env.run(&["certmesh", "status"]);
    assert!(
        output_text_of(&human).contains("UNCONSTRAINED"),
        "{}",
        output_text_of(&human)
    );
    // --unconstrained with a scope is a contradiction.
    let other = KoiEnv::new();
    other.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(&other);
    let run = create(
        &other,
        &pass,
        &["--no-trust", "--unconstrained", "--domain", "lan"],
    );
    run.expect_code(1);
    assert!(run.stderr.contains("--unconstrained"), "{}", run.stderr);
}

fn output_text_of(run: &crate::support::Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

#[test]
fn issue_cannot_take_names_folders_or_files() {
    let (env, pass) = local_ca();
    let issue = |args: &[&str]| {
        let mut all = vec!["certmesh", "issue"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--passphrase-file", &pass]);
        env.run(&all)
    };
    let own = env.run(&["certmesh", "status", "--json"]).json()["details"]["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    let own_dir = env.home.join("certs").join(&own);
    let own_key = std::fs::read(own_dir.join("key.pem")).expect("CA's own key.pem");

    // The CA's own name, in any case, with a trailing dot, or not first.
    for spelling in [
        format!("{own}.lan"),
        format!("{}.LAN", own.to_uppercase()),
        format!("{own}.lan."),
    ] {
        let run = issue(&[&spelling]);
        run.expect_code(1);
        assert!(
            run.stderr.contains("belongs to") && run.stderr.contains(&own),
            "{spelling}: {}",
            run.stderr
        );
    }
    let run = issue(&["printer.lan", &format!("{own}.local")]);
    run.expect_code(1);
    assert!(run.stderr.contains("belongs to"), "{}", run.stderr);
    assert!(
        audit_entries(&env)
            .iter()
            .any(|e| e["event"] == "enrollment_refused"
                && e["details"]["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("{own}.lan belongs to"))),
        "the refused issue was not audited"
    );

    // NAS.LAN and nas.lan are one entry: the second re-issues it.
    issue(&["NAS.LAN"]).expect_code(0);
    let run = issue(&["nas.lan"]);
    run.expect_code(0);
    let nas: Vec<_> = roster_members(&env)
        .into_iter()
        .filter(|m| {
            m["hostname"]
                .as_str()
                .unwrap_or("")
                .eq_ignore_ascii_case("nas.lan")
        })
        .collect();
    assert_eq!(nas.len(), 1, "{nas:?}");
    assert_eq!(nas[0]["hostname"], "nas.lan");
    // Another device may not take a name the first one holds.
    let run = issue(&["files.lan", "Nas.Lan"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("device certificate nas.lan"),
        "{}",
        run.stderr
    );

    let work = env.dir.path();
    // A symlinked directory.
    let real = work.join("real");
    std::fs::create_dir(&real).expect("real");
    let link = work.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["printer.lan", "--out", link.to_str().expect("utf8")];
        args.extend_from_slice(extra);
        let run = issue(&args);
        run.expect_code(1);
        assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    }
    // A directory below a link.
    let below = link.join("sub");
    let run = issue(&["printer.lan", "--out", below.to_str().expect("utf8")]);
    run.expect_code(1);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(&real).expect("real").count(), 0);
    // A symlinked file: refused, the target untouched, with --force too.
    let victim = work.join("victim");
    std::fs::write(&victim, "precious").expect("victim");
    let trap = work.join("trap");
    std::fs::create_dir(&trap).expect("trap");
    std::os::unix::fs::symlink(&victim, trap.join("key.pem")).expect("symlink");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["printer.lan", "--out", trap.to_str().expect("utf8")];
        args.extend_from_slice(extra);
        let run = issue(&args);
        run.expect_code(1);
        assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );

    // The CA's own certificate folder, and the mesh's state.
    let run = issue(&["printer.lan", "--out", own_dir.to_str().expect("utf8")]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("certificate folder of") && run.stderr.contains(&own),
        "{}",
        run.stderr
    );
    let state = env.home.join("certmesh/ca");
    let run = issue(&["printer.lan", "--out", state.to_str().expect("utf8")]);
    run.expect_code(1);
    assert_eq!(
        std::fs::read(own_dir.join("key.pem")).expect("key"),
        own_key,
        "the CA's key file was replaced"
    );

    // Files koi did not write: refused without --force, replaced with it.
    let foreign = work.join("foreign");
    std::fs::create_dir(&foreign).expect("foreign");
    std::fs::write(foreign.join("cert.pem"), "someone else's file").expect("cert");
    let out = foreign.to_str().expect("utf8");
    let run = issue(&["printer.lan", "--out", out]);
    run.expect_code(1);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(foreign.join("cert.pem")).expect("cert"),
        "someone else's file"
    );
    issue(&["printer.lan", "--out", out, "--force"]).expect_code(0);
    assert!(x509_text(&foreign.join("cert.pem")).contains("DNS:printer.lan"));
    // Re-issuing into a folder koi wrote for the same device needs no --force.
    issue(&["printer.lan", "--out", out]).expect_code(0);
    // ...but another device may not be written over it.
    let run = issue(&["scanner.lan", "--out", out]);
    run.expect_code(1);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
}
