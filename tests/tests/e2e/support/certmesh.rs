//! koi-certmesh helpers shared by the end-to-end modules: the plugin binaries, TOTP codes from the
//! otpauth URI, `create` without questions, a CA on one host without a daemon, a CA created in a lab host under its daemon (its URI,
//! fingerprint and root), raw join requests, CSRs, the audit log, and file checks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::netlab::{LabHost, NetLab, SwitchLab};
use crate::support::{DaemonProc, KoiEnv, Run, bin_dir};

pub(crate) const PASSPHRASE: &str = "lab passphrase 7f3a9c";

pub(crate) fn certmesh_bin() -> PathBuf {
    bin_dir().join("koi-certmesh")
}

pub(crate) fn mdns_bin() -> PathBuf {
    bin_dir().join("koi-mdns")
}

/// The current (or `offset`-shifted) code for the otpauth URI.
pub(crate) fn code(uri: &str, offset: i64) -> String {
    let totp = totp_rs::Totp::from_url(uri).expect("otpauth URI parses");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp.generate(now.saturating_add_signed(offset)).to_string()
}

/// A code that is surely wrong right now (differs from every code in the ±1 window).
pub(crate) fn wrong_code(uri: &str) -> String {
    let window: Vec<String> = [-30, 0, 30].iter().map(|o| code(uri, *o)).collect();
    (0..1000)
        .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
        .find(|c| !window.contains(c))
        .expect("a wrong code")
}

pub(crate) fn write_passphrase(env: &KoiEnv) -> String {
    let path = env.dir.path().join("ca-pass");
    std::fs::write(&path, format!("{PASSPHRASE}\n")).expect("passphrase file");
    path.display().to_string()
}

/// A `KoiEnv` with only koi-certmesh installed and a CA created in it without trusting its root
/// (`--no-trust`); returns it and the passphrase file.
pub(crate) fn local_ca() -> (KoiEnv, String) {
    let env = KoiEnv::new();
    env.install(&certmesh_bin(), "certmesh");
    let pass = write_passphrase(&env);
    create(&env, &pass, &["--no-trust"]).expect_code(0);
    (env, pass)
}

/// `koi certmesh create --entropy system --passphrase-file PASS EXTRA...` (non-interactive).
pub(crate) fn create(env: &KoiEnv, pass_file: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "certmesh",
        "create",
        "--entropy",
        "system",
        "--passphrase-file",
        pass_file,
    ];
    args.extend_from_slice(extra);
    env.run(&args)
}

pub(crate) fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// POSTs `body` to A's join API from B with curl, trusting A's root. Returns (status, body).
pub(crate) fn raw_join(
    lab: &NetLab,
    ca_pem: &Path,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    raw_post(lab, ca_pem, "join", None, body)
}

/// POSTs `body` to A's API route `/v1/certmesh/<route>` from B with curl, trusting A's root and
/// presenting `client` (certificate and key files) if given. Returns (status, body).
pub(crate) fn raw_post(
    lab: &NetLab,
    ca_pem: &Path,
    route: &str,
    client: Option<(&Path, &Path)>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body_file = lab.b.env.dir.path().join(format!("raw-{route}.json"));
    std::fs::write(&body_file, body.to_string()).expect("body file");
    let mut args: Vec<String> = ["-sS", "--max-time", "20", "--cacert"]
        .map(String::from)
        .into();
    args.push(ca_pem.display().to_string());
    if let Some((cert, key)) = client {
        args.extend(["--cert".into(), cert.display().to_string()]);
        args.extend(["--key".into(), key.display().to_string()]);
    }
    args.extend(["-H", "content-type: application/json", "--data-binary"].map(String::from));
    args.push(format!("@{}", body_file.display()));
    args.extend(["-w".into(), "\n%{http_code}".into()]);
    args.push(format!("https://{}:5641/v1/certmesh/{route}", lab.a.ip));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.b.command("curl", &args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// A CSR (PEM) for a fresh P-256 key, optionally asking for CA:TRUE.
pub(crate) fn openssl_csr(dir: &Path, cn: &str, ask_ca: bool) -> String {
    let key = dir.join(format!("{cn}-raw.key"));
    let mut args = vec![
        "req".to_owned(),
        "-new".into(),
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:P-256".into(),
        "-nodes".into(),
        "-keyout".into(),
        key.display().to_string(),
        "-subj".into(),
        format!("/CN={cn}"),
    ];
    if ask_ca {
        args.push("-addext".into());
        args.push("basicConstraints=critical,CA:TRUE".into());
    }
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .expect("openssl req");
    assert!(out.status.success(), "openssl req: {}", output_text(&out));
    String::from_utf8(out.stdout).expect("pem")
}

pub(crate) fn audit_entries(env: &KoiEnv) -> Vec<serde_json::Value> {
    let run = env.run(&["certmesh", "log", "--json"]);
    run.expect_code(0);
    run.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn refusals(env: &KoiEnv) -> Vec<String> {
    audit_entries(env)
        .iter()
        .filter(|e| e["event"] == "enrollment_refused")
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

pub(crate) fn wait_for_api(host: &LabHost, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = host
            .command(
                "curl",
                &[
                    "-sk",
                    "--max-time",
                    "2",
                    &format!("https://{ip}:5641/v1/certmesh/health"),
                ],
            )
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the certmesh API never answered on {ip}:5641"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// The public key (PEM) of a private key or certificate file, via openssl.
pub(crate) fn public_key_of(path: &Path, is_cert: bool) -> String {
    let args: Vec<&str> = if is_cert {
        vec!["x509", "-pubkey", "-noout", "-in"]
    } else {
        vec!["pkey", "-pubout", "-in"]
    };
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The pid of the koi-certmesh process `env`'s daemon supervises.
pub(crate) fn certmesh_pid(env: &KoiEnv) -> u32 {
    let status = env.daemon_status();
    let pid = status["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "certmesh"))
        .and_then(|p| p["supervision"]["pid"].as_u64())
        .expect("certmesh pid");
    u32::try_from(pid).expect("pid")
}

/// `koi certmesh join --ca A --fingerprint FINGERPRINT --code CODE EXTRA...` run on lab host B.
pub(crate) fn join_from_b(lab: &NetLab, fingerprint: &str, code: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "certmesh",
        "join",
        "--ca",
        &lab.a.ip,
        "--fingerprint",
        fingerprint,
        "--code",
        code,
    ];
    args.extend_from_slice(extra);
    lab.b.env.run(&args)
}

/// `koi certmesh join --ca CA_IP --fingerprint FINGERPRINT --code CODE --no-trust --json` run on
/// lab host `member` (any lab: two hosts or a switch).
pub(crate) fn join_host(member: &LabHost, ca_ip: &str, fingerprint: &str, code: &str) -> Run {
    member.env.run(&[
        "certmesh",
        "join",
        "--ca",
        ca_ip,
        "--fingerprint",
        fingerprint,
        "--code",
        code,
        "--no-trust",
        "--json",
    ])
}

/// `koi certmesh promote --code CODE --passphrase-file STANDBY_PASS --json` on `host`.
pub(crate) fn promote_host(host: &LabHost, code: &str, standby_pass: &str) -> Run {
    host.env.run(&[
        "certmesh",
        "promote",
        "--code",
        code,
        "--passphrase-file",
        standby_pass,
        "--json",
    ])
}

/// Installs koi-certmesh and koi-mdns on every host of `lab` (a mesh that fails over by mDNS).
pub(crate) fn install_mesh(lab: &SwitchLab) {
    for h in &lab.hosts {
        h.env.install(&certmesh_bin(), "certmesh");
        h.env.install(&mdns_bin(), "mdns");
    }
}

/// A valid code for a step later than `last` (each step's code works once), waiting for the next
/// step when the three in the window are used up.
pub(crate) fn fresh_code(uri: &str, last: &mut i64) -> String {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let step = now / 30;
        if let Some(s) = (step - 1..=step + 1).find(|s| s > last) {
            *last = s;
            return code(uri, s * 30 - now + 1);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The otpauth URI and the CA fingerprint from a successful `create --json`.
pub(crate) fn mesh_ids(created: &Run) -> (String, String) {
    let json = created.json();
    let uri = json["otpauth_uri"]
        .as_str()
        .expect("otpauth_uri")
        .to_owned();
    let fingerprint = json["mesh"]["ca_fingerprint"]
        .as_str()
        .expect("ca_fingerprint")
        .to_owned();
    (uri, fingerprint)
}

/// A mesh created on a lab host under its daemon, with its API answering.
pub(crate) struct LabCa {
    /// The CA passphrase file on A.
    pub pass_file: String,
    pub uri: String,
    pub fingerprint: String,
    /// A's root certificate (`certmesh/ca/ca.pem` in its `KOI_HOME`).
    pub ca_pem: PathBuf,
    /// What `create` printed.
    pub created: Run,
}

/// Installs koi-certmesh on both lab hosts, starts A's daemon, creates a mesh on A with
/// `create_args` (which must include `--json`), and waits for A's join API. Keep the returned
/// daemon alive for as long as A must answer.
pub(crate) fn ca_under_daemon(lab: &NetLab, create_args: &[&str]) -> (DaemonProc, LabCa) {
    ca_under_daemon_with(lab, &[], create_args)
}

/// [`ca_under_daemon`] with extra environment for A's daemon.
pub(crate) fn ca_under_daemon_with(
    lab: &NetLab,
    env: &[(&str, &str)],
    create_args: &[&str],
) -> (DaemonProc, LabCa) {
    lab.a.env.install(&certmesh_bin(), "certmesh");
    lab.b.env.install(&certmesh_bin(), "certmesh");
    ca_on(&lab.a, env, create_args)
}

/// Starts `host`'s daemon with `env`, creates a mesh there with `create_args` (which must include
/// `--json`), and waits for its join API. koi-certmesh must be installed on `host`; keep the
/// returned daemon alive for as long as the CA must answer.
pub(crate) fn ca_on(
    host: &LabHost,
    env: &[(&str, &str)],
    create_args: &[&str],
) -> (DaemonProc, LabCa) {
    let pass_file = write_passphrase(&host.env);
    let daemon = host.env.start_daemon(env);
    let created = create(&host.env, &pass_file, create_args);
    created.expect_code(0);
    let (uri, fingerprint) = mesh_ids(&created);
    wait_for_api(host, &host.ip);
    let ca_pem = host.env.home.join("certmesh/ca/ca.pem");
    let ca = LabCa {
        pass_file,
        uri,
        fingerprint,
        ca_pem,
        created,
    };
    (daemon, ca)
}

/// `koi certmesh status --json` on `host`, which must succeed.
pub(crate) fn certmesh_status(host: &LabHost) -> serde_json::Value {
    let run = host.env.run(&["certmesh", "status", "--json"]);
    run.expect_code(0);
    run.json()
}

/// Runs `openssl ARGS`; its stdout and stderr together.
pub(crate) fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    output_text(&out)
}

/// A certificate file's serial, lower-case hex.
pub(crate) fn serial_of(cert: &Path) -> String {
    openssl(&[
        "x509",
        "-noout",
        "-serial",
        "-in",
        &cert.display().to_string(),
    ])
    .trim()
    .trim_start_matches("serial=")
    .to_ascii_lowercase()
}

/// (notBefore, notAfter) in Unix seconds.
pub(crate) fn validity(cert: &Path) -> (i64, i64) {
    let text = openssl(&[
        "x509",
        "-noout",
        "-startdate",
        "-enddate",
        "-in",
        &cert.display().to_string(),
    ]);
    let parse = |key: &str| {
        let line = text.lines().find(|l| l.starts_with(key)).expect(key);
        let out = Command::new("date")
            .args(["-u", "-d", line[key.len()..].trim(), "+%s"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    (parse("notBefore="), parse("notAfter="))
}

/// Where `host`'s own certificate files are (`$KOI_HOME/certs/<host name>/`).
pub(crate) fn cert_dir(host: &LabHost) -> PathBuf {
    host.env.home.join("certs").join(&host.hostname)
}
