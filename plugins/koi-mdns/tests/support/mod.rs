//! The network-namespace lab shared by koi-mdns's integration tests.
//!
//! A [`Lab`] is two hosts, each a network namespace created for the test (names carry the test
//! process's pid and a counter, so parallel tests never collide), joined by a veth pair with
//! 10.77.0.1/24 and 10.77.0.2/24 plus IPv6 link-local addresses. Every mDNS packet a test causes is
//! sent inside these namespaces: every command runs under `ip netns exec <lab namespace>`. Dropping
//! the lab (also when a test fails) stops what the test started and deletes the namespaces.
//!
//! Tests need root. Without it they skip, unless `KOI_REQUIRE_ROOT_TESTS=1` (CI), where a skip is
//! a failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether root tests can run here; panics when they must (CI) but cannot.
pub fn root_or_skip(test: &str) -> bool {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if is_root && have_ip {
        return true;
    }
    let why = if is_root {
        "`ip` (iproute2) is missing"
    } else {
        "not running as root"
    };
    if std::env::var("KOI_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: {why}, but KOI_REQUIRE_ROOT_TESTS=1 forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why} (network-namespace lab needs root)");
    false
}

/// Whether a program is installed; panics under `KOI_REQUIRE_ROOT_TESTS=1` when it is not.
pub fn have_or_skip(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    if found {
        return true;
    }
    if std::env::var("KOI_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: `{program}` is not installed (see .ci/apt-packages)");
    }
    eprintln!("SKIPPED {test}: `{program}` is not installed");
    false
}

/// The `koi` host binary, next to `koi-mdns` in the target directory.
pub fn koi_bin() -> PathBuf {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_koi-mdns"));
    let koi = plugin.with_file_name("koi");
    assert!(
        koi.is_file(),
        "{} is missing: build the host first with `cargo build --workspace --bins`",
        koi.display()
    );
    koi
}

fn run_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host of the lab: a namespace and its IPv4 address.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its veth's IPv4 address.
    pub ip: String,
    /// Its KOI_HOME.
    pub home: PathBuf,
}

/// A running process in the lab, with its output lines time-stamped as they arrive.
pub struct Proc {
    child: Child,
    /// stdout lines.
    pub stdout: Arc<Mutex<Vec<(Instant, String)>>>,
    /// stderr lines.
    pub stderr: Arc<Mutex<Vec<(Instant, String)>>>,
}

fn collect<R: std::io::Read + Send + 'static>(r: R) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            sink.lock().expect("lock").push((Instant::now(), line));
        }
    });
    lines
}

impl Proc {
    fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn in the lab");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// The first stdout line matching `pred` within `timeout`, with its arrival time.
    pub fn wait_stdout(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        wait_line(&self.stdout, timeout, pred)
    }

    /// The first stderr line matching `pred` within `timeout`.
    pub fn wait_stderr(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        wait_line(&self.stderr, timeout, pred)
    }

    /// Sends SIGINT (Ctrl-C) to the process (`ip netns exec` execs it, so this is `koi` itself).
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Sends SIGTERM to the process (how systemd stops `koi daemon`).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// The process id (that of `koi` itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// All stdout so far.
    pub fn stdout_text(&self) -> String {
        join(&self.stdout)
    }

    /// All stderr so far.
    pub fn stderr_text(&self) -> String {
        join(&self.stderr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn join(lines: &Mutex<Vec<(Instant, String)>>) -> String {
    lines
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

fn wait_line(
    lines: &Mutex<Vec<(Instant, String)>>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<(Instant, String)> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(hit) = lines
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, l)| pred(l))
            .cloned()
        {
            return Some(hit);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two namespaces joined by a veth pair (or one namespace with only loopback).
pub struct Lab {
    /// Host A (10.77.0.1) and host B (10.77.0.2); one isolated host for [`Lab::isolated`].
    pub hosts: Vec<Host>,
    /// Scratch space (KOI_HOMEs, configs).
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
}

impl Lab {
    fn names(count: usize) -> (Vec<String>, tempfile::TempDir) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let names = (0..count)
            .map(|i| format!("koi-mdns-t{pid}-{n}-{}", (b'a' + i as u8) as char))
            .collect();
        (names, tempfile::tempdir().expect("tempdir"))
    }

    fn host(dir: &Path, ns: &str, ip: &str) -> Host {
        let home = dir.join(format!("home-{ns}"));
        std::fs::create_dir_all(&home).expect("KOI_HOME");
        Host {
            ns: ns.to_owned(),
            ip: ip.to_owned(),
            home,
        }
    }

    /// Two hosts on one link.
    pub fn pair() -> Self {
        let (names, dir) = Self::names(2);
        let mut lab = Self {
            hosts: Vec::new(),
            dir,
            namespaces: Vec::new(),
        };
        for ns in &names {
            run_ok(&["ip", "netns", "add", ns]);
            lab.namespaces.push(ns.clone());
            // No duplicate-address detection: link-local IPv6 is usable at once.
            run_ok(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
            run_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run_ok(&[
            "ip", "link", "add", "veth0", "netns", &names[0], "type", "veth", "peer", "name",
            "veth0", "netns", &names[1],
        ]);
        for (ns, ip) in names.iter().zip(["10.77.0.1", "10.77.0.2"]) {
            run_ok(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "veth0",
            ]);
            run_ok(&["ip", "-n", ns, "link", "set", "veth0", "up"]);
            lab.hosts.push(Self::host(lab.dir.path(), ns, ip));
        }
        lab
    }

    /// One host with nothing but loopback.
    pub fn isolated() -> Self {
        let (names, dir) = Self::names(1);
        let ns = &names[0];
        run_ok(&["ip", "netns", "add", ns]);
        run_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        let host = Self::host(dir.path(), ns, "127.0.0.1");
        Self {
            hosts: vec![host],
            dir,
            namespaces: names,
        }
    }

    /// Host A.
    pub fn a(&self) -> &Host {
        &self.hosts[0]
    }

    /// Host B.
    pub fn b(&self) -> &Host {
        &self.hosts[1]
    }

    /// `koi ARGS` on `host`, inside its namespace, with its own KOI_HOME.
    pub fn koi(&self, host: &Host, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns])
            .arg(koi_bin())
            .args(args)
            .env("KOI_HOME", &host.home)
            .env("KOI_PLUGIN_PATH", koi_bin().parent().expect("target dir"))
            .env("NO_COLOR", "1");
        c
    }

    /// Runs `koi ARGS` on `host` to completion (killed after `timeout`).
    pub fn run(&self, host: &Host, args: &[&str], timeout: Duration) -> Output {
        let mut p = Proc::spawn(self.koi(host, args));
        let status = p.wait_exit(timeout);
        if status.is_none() {
            p.interrupt();
            let _ = p.wait_exit(Duration::from_secs(3));
        }
        let status = p.child.try_wait().ok().flatten();
        Output {
            status: status.unwrap_or_else(|| panic!("koi {args:?} did not finish")),
            stdout: p.stdout_text().into_bytes(),
            stderr: p.stderr_text().into_bytes(),
        }
    }

    /// Starts `koi ARGS` on `host` in the background.
    pub fn spawn(&self, host: &Host, args: &[&str]) -> Proc {
        Proc::spawn(self.koi(host, args))
    }

    /// Starts a one-shot `koi mdns announce ARGS` on `host` and waits (up to 10 s) until it reports
    /// `Announcing <expected>`; panics with its stderr otherwise.
    pub fn announce(&self, host: &Host, args: &[&str], expected: &str) -> Proc {
        let mut full = vec!["mdns", "announce"];
        full.extend_from_slice(args);
        let p = self.spawn(host, &full);
        let wanted = format!("Announcing{expected}");
        assert!(
            p.wait_stdout(Duration::from_secs(10), |l| l.contains(&wanted))
                .is_some(),
            "{host:?} did not announce: {}",
            p.stderr_text()
        );
        p
    }

    /// Starts `koi ARGS` on `host` in the background with extra environment variables.
    pub fn spawn_with_env(&self, host: &Host, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut c = self.koi(host, args);
        for (k, v) in env {
            c.env(k, v);
        }
        Proc::spawn(c)
    }

    /// Every process still running in `host`'s namespace, as `(pid, command name)`.
    pub fn processes(&self, host: &Host) -> Vec<(u32, String)> {
        let out = Command::new("ip")
            .args(["netns", "pids", &host.ns])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid.parse().ok()?, comm.trim().to_owned()))
            })
            .collect()
    }

    /// Starts any program inside `host`'s namespace.
    pub fn spawn_in(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns, program]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        Proc::spawn(c)
    }

    /// Runs a shell command inside `host`'s namespace and asserts it succeeds.
    pub fn sh(&self, host: &Host, script: &str) {
        run_ok(&["ip", "netns", "exec", &host.ns, "sh", "-c", script]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Whatever still runs in the lab was started by this test: stop it, by pid.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A private Avahi on one lab host: its own dbus-daemon (a bus socket in the lab's directory)
/// and an avahi-daemon restricted to `veth0`, run under `unshare -m` with a private `/run` (so
/// its pid file and socket never touch the machine's). Clients reach it through
/// `DBUS_SYSTEM_BUS_ADDRESS`, see [`Avahi::env`].
pub struct Avahi {
    /// `unix:path=…` of the private bus.
    pub bus: String,
    dbus: Proc,
    daemon: Proc,
}

impl Avahi {
    /// Starts dbus-daemon and avahi-daemon in `host`'s namespace and waits until Avahi is up.
    pub fn start(lab: &Lab, host: &Host, host_name: &str) -> Self {
        let dir = lab.dir.path().join(format!("avahi-{}", host.ns));
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("avahi dir");
        let socket = dir.join("bus");
        let bus_conf = dir.join("bus.conf");
        std::fs::write(
            &bus_conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("bus.conf");
        let avahi_conf = dir.join("avahi-daemon.conf");
        std::fs::write(
            &avahi_conf,
            format!(
                "[server]\nhost-name={host_name}\nuse-ipv4=yes\nuse-ipv6=yes\nallow-interfaces=veth0\n\
                 enable-dbus=yes\n[wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\n\
                 publish-workstation=no\n"
            ),
        )
        .expect("avahi-daemon.conf");
        let bus = format!("unix:path={}", socket.display());
        let dbus = lab.spawn_in(
            host,
            "dbus-daemon",
            &[
                &format!("--config-file={}", bus_conf.display()),
                "--nofork",
                "--nopidfile",
            ],
            &[],
        );
        let end = Instant::now() + Duration::from_secs(5);
        while !socket.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let script = format!(
            "mount --bind {} /run && mkdir -p /run/avahi-daemon && exec avahi-daemon -f {} --no-drop-root --no-chroot --no-rlimits",
            run.display(),
            avahi_conf.display()
        );
        let daemon = lab.spawn_in(
            host,
            "unshare",
            &["-m", "--propagation", "private", "sh", "-c", &script],
            &[("DBUS_SYSTEM_BUS_ADDRESS", &bus)],
        );
        let up = daemon.wait_stderr(Duration::from_secs(10), |l| {
            l.contains("Server startup complete")
        });
        assert!(
            up.is_some(),
            "avahi-daemon did not start:\n{}\n{}",
            daemon.stderr_text(),
            dbus.stderr_text()
        );
        Self { bus, dbus, daemon }
    }

    /// The environment Avahi's clients need.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.bus.as_str())]
    }
}

impl Drop for Avahi {
    fn drop(&mut self) {
        self.daemon.interrupt();
        let _ = self.daemon.wait_exit(Duration::from_secs(2));
        let _ = &self.dbus;
    }
}

/// Parses every JSON line of `text`.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
