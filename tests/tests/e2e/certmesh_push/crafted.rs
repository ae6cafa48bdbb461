//! Crafted pushes, sent to a member's push endpoint with curl from the CA's host: no client
//! certificate, another mesh's client certificate (made with openssl), a certificate signed by
//! another mesh's CA for the member's own key (`-force_pubkey`), a certificate of this mesh for
//! another key (a device certificate from `koi certmesh issue`), and the member's own certificate
//! replayed. Each is refused with its reason, recorded on the member, and changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ca_with_env, join_b, lines, member_push};
use crate::support::certmesh::{cert_dir, openssl, output_text, public_key_of, serial_of};
use crate::support::netlab::NetLab;
use crate::support::root_or_skip;

/// POSTs `body` to B's push endpoint from A with curl, presenting `client` if given.
fn push_from_a(
    lab: &NetLab,
    client: Option<(&Path, &Path)>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body_file = lab.a.env.dir.path().join("push.json");
    std::fs::write(&body_file, body.to_string()).expect("body");
    let mut args: Vec<String> = ["-sS", "-k", "--max-time", "20"].map(String::from).into();
    if let Some((cert, key)) = client {
        args.extend(["--cert".into(), cert.display().to_string()]);
        args.extend(["--key".into(), key.display().to_string()]);
    }
    args.extend(["-H", "content-type: application/json", "--data-binary"].map(String::from));
    args.push(format!("@{}", body_file.display()));
    args.extend(["-w".into(), "\n%{http_code}".into()]);
    args.push(format!("https://{}:5642/v1/certmesh/push", lab.b.ip));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.a.command("curl", &args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or_else(|_| panic!("{}", output_text(&out))),
    )
}

fn sha256_of(cert: &Path) -> String {
    openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        &cert.display().to_string(),
    ])
    .trim()
    .rsplit('=')
    .next()
    .unwrap_or("")
    .replace(':', "")
    .to_ascii_lowercase()
}

fn run_openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        output_text(&out)
    );
}

/// Another mesh made with openssl: its root, a client certificate, and a certificate it signed
/// for `public_key` (B's key) naming `name`. Returns (client cert, client key, forged cert).
fn other_mesh(dir: &Path, public_key: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f).display().to_string();
    run_openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("other-ca.key"),
        "-out",
        &p("other-ca.pem"),
        "-subj",
        "/CN=other mesh",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run_openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p("other-client.key"),
        "-out",
        &p("other-client.csr"),
        "-subj",
        "/CN=other-client",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .expect("san");
    run_openssl(&[
        "x509",
        "-req",
        "-in",
        &p("other-client.csr"),
        "-CA",
        &p("other-ca.pem"),
        "-CAkey",
        &p("other-ca.key"),
        "-set_serial",
        "7",
        "-out",
        &p("other-client.pem"),
        "-days",
        "1",
        "-extfile",
        &p("san.cnf"),
    ]);
    run_openssl(&[
        "x509",
        "-req",
        "-in",
        &p("other-client.csr"),
        "-force_pubkey",
        &public_key.display().to_string(),
        "-CA",
        &p("other-ca.pem"),
        "-CAkey",
        &p("other-ca.key"),
        "-set_serial",
        "8",
        "-out",
        &p("forged.pem"),
        "-days",
        "60",
        "-extfile",
        &p("san.cnf"),
    ]);
    (
        dir.join("other-client.pem"),
        dir.join("other-client.key"),
        dir.join("forged.pem"),
    )
}

/// One crafted push: what, client certificate and key, certificate pushed, status, reason.
type Case<'a> = (
    &'a str,
    Option<(&'a Path, &'a Path)>,
    &'a Path,
    u16,
    &'a str,
);

#[test]
fn pushes_from_another_mesh_for_another_key_or_replayed_are_refused_and_recorded() {
    if !root_or_skip(
        "pushes_from_another_mesh_for_another_key_or_replayed_are_refused_and_recorded",
    ) {
        return;
    }
    let lab = NetLab::new("pf");
    let (_a, ca) = ca_with_env(&lab, &[]);
    join_b(&lab, &ca);
    let dir = cert_dir(&lab.b);
    let cert = dir.join("cert.pem");
    let serial = serial_of(&cert);
    let marker = lab.b.env.dir.path().join("hook-marker");
    let hook = format!("echo run >> {}", marker.display());
    lab.b
        .env
        .run(&["certmesh", "set-hook", "--reload", &hook])
        .expect_code(0);
    let b = lab.b.env.start_daemon(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !member_push(&lab)["listening"].is_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "B's push endpoint never listened: {}\n{}",
            lab.b.env.run(&["certmesh", "status", "--json"]).stdout,
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let work = lab.a.env.dir.path();
    let b_pub = work.join("b.pub");
    std::fs::write(&b_pub, public_key_of(&cert, true)).expect("pub");
    let (other_cert, other_key, forged) = other_mesh(work, &b_pub, &lab.b.hostname);
    // A's own API certificate: a valid client certificate of the mesh.
    let mesh_cert = cert_dir(&lab.a).join("cert.pem");
    let mesh_key = cert_dir(&lab.a).join("key.pem");
    // A device certificate the mesh's CA signed for another key.
    let pass = ca.pass_file.clone();
    lab.a
        .env
        .run(&[
            "certmesh",
            "issue",
            "printer.lan",
            "--passphrase-file",
            &pass,
        ])
        .expect_code(0);
    let device = lab.a.env.home.join("certs/printer.lan/cert.pem");
    let replaces = sha256_of(&cert);
    let body = |pem: &Path| {
        serde_json::json!({
            "cert_pem": std::fs::read_to_string(pem).expect("pem"),
            "replaces": replaces,
        })
    };
    let mesh = Some((mesh_cert.as_path(), mesh_key.as_path()));
    let cases: Vec<Case<'_>> = vec![
        (
            "no client certificate",
            None,
            &forged,
            401,
            "not_from_this_mesh",
        ),
        (
            "another mesh's client certificate",
            Some((other_cert.as_path(), other_key.as_path())),
            &forged,
            401,
            "not_from_this_mesh",
        ),
        (
            "signed by another mesh's CA",
            mesh,
            &forged,
            403,
            "foreign_certificate",
        ),
        ("for another public key", mesh, &device, 403, "other_key"),
        ("its own certificate replayed", mesh, &cert, 409, "stale"),
    ];
    for (what, client, pem, status, reason) in &cases {
        let (got, answer) = push_from_a(&lab, *client, &body(pem));
        assert_eq!(got, *status, "{what}: {answer:#}");
        assert_eq!(answer["reason"], *reason, "{what}: {answer:#}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("Refused push")),
            "{what}: {answer:#}"
        );
    }
    assert_eq!(serial_of(&cert), serial, "nothing was installed");
    assert_eq!(lines(&marker), 0, "no hook ran");
    let record = member_push(&lab);
    assert_eq!(record["refused"], cases.len(), "{record:#}");
    assert_eq!(record["accepted"], 0, "{record:#}");
    let reasons: Vec<&str> = record["last_refused"]
        .as_array()
        .expect("last_refused")
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<&str> = cases.iter().map(|c| c.4).collect();
    assert_eq!(reasons, expected, "{record:#}");
    assert!(
        record["last_refused"][0]["peer"] == lab.a.ip.as_str(),
        "{record:#}"
    );
}
