//! koi-proxy end to end (issue 13), in network namespaces with real clients (curl, openssl
//! s_client, python3 websockets, h2load). Host `a` of a [`SwitchLab`] runs `koi daemon` with
//! koi-proxy and plain-HTTP backends on its loopback; other hosts are the clients. Certificates
//! are written the way certmesh writes them (`$KOI_HOME/certs/<host>/`, by rename) with a test CA
//! made by openssl, so these tests need no mesh.

mod certmesh_link;
mod lifecycle;
mod roster;
mod rotation;
mod safety;
mod traffic;

use crate::support::netlab::{LabHost, SwitchLab};
use crate::support::{DaemonProc, Run, poll_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A script from `proxy/scripts/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/proxy/scripts")
        .join(name)
}

/// The system python (its python3-websockets), not a user's pyenv.
pub const PYTHON: &str = "/usr/bin/python3";

/// A background process of a test (a backend), killed and reaped when dropped.
pub struct Bg(pub Child);

impl Bg {
    /// Kills it now.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A lab whose host `a` runs koi-proxy.
pub struct Site {
    pub lab: SwitchLab,
    pub daemon: Option<DaemonProc>,
    ca_dir: tempfile::TempDir,
}

impl Site {
    /// `hosts` lab hosts; koi-proxy installed on host `a`. The daemon is not started yet.
    pub fn new(tag: &str, hosts: usize) -> Self {
        let mut lab = SwitchLab::new(tag, hosts);
        let a = lab.hosts.remove(0);
        let a = LabHost {
            env: a.env.with_proxy(),
            ..a
        };
        lab.hosts.insert(0, a);
        Self {
            lab,
            daemon: None,
            ca_dir: tempfile::tempdir().expect("ca dir"),
        }
    }

    /// The proxy host.
    pub fn a(&self) -> &LabHost {
        self.lab.host(0)
    }

    /// Starts (or restarts) `koi daemon` on host `a`.
    pub fn start(&mut self) {
        self.daemon = None;
        self.daemon = Some(self.a().env.start_daemon(&[]));
    }

    /// `$KOI_HOME/certs/<host>/` on host `a`.
    pub fn cert_dir(&self) -> PathBuf {
        self.a().env.home.join("certs").join(&self.a().hostname)
    }

    /// A scratch directory of the test (the CA lives there too).
    pub fn work(&self) -> &Path {
        self.ca_dir.path()
    }

    /// The test CA's root.
    pub fn ca(&self) -> PathBuf {
        self.ca_dir.path().join("ca.pem")
    }

    /// Writes a new leaf for `names` (as a renewal does) and returns its serial (hex, upper case).
    pub fn write_cert(&self, names: &[&str]) -> String {
        let dir = self.cert_dir();
        let out = Command::new("sh")
            .arg(script("mkcert.sh"))
            .arg(&dir)
            .arg(self.ca_dir.path())
            .args(names)
            .output()
            .expect("mkcert.sh");
        assert!(
            out.status.success(),
            "mkcert.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serial_of_file(&dir.join("cert.pem"))
    }

    /// Starts the test backend on host `a`'s loopback and waits until it answers.
    pub fn backend(&self, port: u16, name: &str, gate: &Path) -> Bg {
        let child = self
            .a()
            .command(
                PYTHON,
                &[
                    script("backend.py").to_str().expect("utf-8 path"),
                    &port.to_string(),
                    name,
                    gate.to_str().expect("utf-8 path"),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Bg)
            .expect("backend.py");
        let url = format!("http://127.0.0.1:{port}/");
        poll_until(
            "the backend to answer",
            Duration::from_millis(100),
            || {
                self.a()
                    .command(
                        "curl",
                        &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
                    )
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            },
            |code| code == "200",
        );
        child
    }

    /// Starts the WebSocket echo backend (`ws.py serve`) on host `a`'s loopback.
    pub fn ws_backend(&self, port: u16) -> Bg {
        self.a()
            .command(
                PYTHON,
                &[
                    script("ws.py").to_str().expect("utf-8 path"),
                    "serve",
                    &port.to_string(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Bg)
            .expect("ws.py serve")
    }

    /// `ws.py MODE HOST IP 443 CA` on lab host `from`: a WebSocket client of host `a`.
    pub fn ws_client(&self, from: usize, mode: &str, host: &str) -> Command {
        let ca = self.ca();
        self.lab.host(from).command(
            PYTHON,
            &[
                script("ws.py").to_str().expect("utf-8 path"),
                mode,
                host,
                &self.a().ip,
                "443",
                ca.to_str().expect("utf-8 path"),
            ],
        )
    }

    /// `koi ARGS` on host `a`.
    pub fn koi(&self, args: &[&str]) -> Run {
        self.a().env.run(args)
    }

    /// `koi proxy add ARGS --json`, which must succeed.
    pub fn add(&self, args: &[&str]) -> Value {
        let mut all = vec!["proxy", "add"];
        all.extend_from_slice(args);
        all.push("--json");
        let run = self.koi(&all);
        run.expect_code(0);
        run.json()
    }

    /// The status details of koi-proxy.
    pub fn status(&self) -> Value {
        let run = self.koi(&["proxy", "status", "--json"]);
        run.expect_code(0);
        run.json()["details"].clone()
    }

    /// One entry's status.
    pub fn entry(&self, name: &str) -> Value {
        let status = self.status();
        status["entries"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no entry {name} in {status:#}"))
    }

    /// Waits until `name` listens.
    pub fn wait_listening(&self, name: &str) {
        poll_until(
            "the entry to listen",
            Duration::from_millis(100),
            || self.entry(name),
            |e| e["listening"] == true,
        );
    }

    /// curl from lab host `from` to `https://HOST/PATH` at host `a`, trusting the test CA.
    pub fn curl(&self, from: usize, host: &str, path: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--max-time", "60"];
        args.extend_from_slice(extra);
        self.curl_command(from, host, 443, path, &args)
            .output()
            .expect("curl")
    }

    /// The curl command from lab host `from` to `https://HOST:PORT/PATH` at host `a` (`-sS`,
    /// trusting the test CA, `EXTRA` before the URL), to run or spawn.
    pub fn curl_command(
        &self,
        from: usize,
        host: &str,
        port: u16,
        path: &str,
        extra: &[&str],
    ) -> std::process::Command {
        let resolve = format!("{host}:{port}:{}", self.a().ip);
        let url = if port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{port}{path}")
        };
        let ca = self.ca();
        let mut args = vec![
            "-sS",
            "--cacert",
            ca.to_str().expect("utf-8 path"),
            "--resolve",
            &resolve,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        self.lab.host(from).command("curl", &args)
    }
}

/// The serial of a PEM certificate file (hex, upper case, as openssl prints it).
pub fn serial_of_file(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(path)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// The serial of the certificate `host` presents for SNI `sni` on `ip:443` (a new connection),
/// or None when the handshake gives no certificate.
pub fn presented_serial(from: &LabHost, ip: &str, sni: &str) -> Option<String> {
    let connect = format!("{ip}:443");
    let out = from
        .command(
            "sh",
            &[
                "-c",
                "echo | timeout 10 openssl s_client -connect \"$1\" -servername \"$2\" 2>/dev/null | openssl x509 -noout -serial",
                "sh",
                &connect,
                sni,
            ],
        )
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_owned)
}

/// stdout of an Output as text.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
