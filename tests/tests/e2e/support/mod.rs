//! The test harness: an isolated Koi environment per test (its own `KOI_HOME`, its own plugin
//! directory, its own hard-linked copy of `koi` so the build directory's plugins are not
//! discovered), helpers to run `koi` and to poll until something holds, and checks that no plugin process
//! outlives the host.

pub mod certmesh;
pub mod kill;
pub mod netlab;
pub mod proxy;
pub mod pty;
pub mod rawhost;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cargo target directory holding the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KOI_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/e2e-<hash> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins --examples` first (the README's test command does)",
        path.display()
    );
    path
}

/// A fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    built(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
}

/// A built SDK example (`target/debug/examples/<name>`).
pub fn example(name: &str) -> PathBuf {
    built(bin_dir().join("examples").join(name))
}

/// The built `koi-dns` plugin (`target/debug/koi-dns`).
pub fn dns_bin() -> PathBuf {
    built(bin_dir().join("koi-dns"))
}

/// One isolated Koi installation.
pub struct KoiEnv {
    pub dir: tempfile::TempDir,
    pub koi: PathBuf,
    pub home: PathBuf,
    pub plugins: PathBuf,
    pub pids: PathBuf,
    /// Program and arguments every `koi` command runs under (e.g. `ip netns exec …` in a lab).
    pub prefix: Vec<String>,
    /// Extra environment for every `koi` command.
    pub extra_env: Vec<(String, String)>,
}

impl KoiEnv {
    /// A fresh environment with no plugins.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("koi-e2e-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        let bin = dir.path().join("bin");
        let home = dir.path().join("home");
        let plugins = dir.path().join("plugins");
        let pids = dir.path().join("pids");
        for d in [&bin, &home, &plugins, &pids] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let koi = bin.join("koi");
        let original = built(bin_dir().join("koi"));
        if std::fs::hard_link(&original, &koi).is_err() {
            std::fs::copy(&original, &koi).expect("copy koi");
        }
        Self {
            dir,
            koi,
            home,
            plugins,
            pids,
            prefix: Vec::new(),
            extra_env: Vec::new(),
        }
    }

    /// Installs `source` as `koi-<moniker>` in the plugin directory (a symlink).
    pub fn install(&self, source: &Path, moniker: &str) -> PathBuf {
        let target = self.plugins.join(format!("koi-{moniker}"));
        std::os::unix::fs::symlink(source, &target).expect("symlink plugin");
        target
    }

    /// Installs the SDK example as `koi-hello`.
    pub fn with_hello(self) -> Self {
        self.install(&example("koi-hello"), "hello");
        self
    }

    /// Installs the built `koi-health` plugin.
    pub fn with_health(self) -> Self {
        self.install(&built(bin_dir().join("koi-health")), "health");
        self
    }

    /// Installs fixture `koi-<name>` as a copy (so its mtime is this environment's own), with the
    /// shared `_fixture.py` beside it.
    pub fn with_fixture(self, name: &str) -> Self {
        let helper = self.plugins.join("_fixture.py");
        if !helper.exists() {
            std::fs::copy(fixture("_fixture.py"), helper).expect("copy _fixture.py");
        }
        std::fs::copy(
            fixture(&format!("koi-{name}")),
            self.plugins.join(format!("koi-{name}")),
        )
        .expect("copy fixture");
        self
    }

    /// How many times fixtures were started (each start appends to `starts.log`).
    pub fn fixture_starts(&self) -> usize {
        std::fs::read_to_string(self.pids.join("starts.log")).map_or(0, |s| s.lines().count())
    }

    /// A `koi` command with this environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.koi);
                c
            }
            None => Command::new(&self.koi),
        };
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.dir.path())
            .env("KOI_HOME", &self.home)
            .env("KOI_PLUGIN_PATH", &self.plugins)
            .env("KOI_TEST_PID_DIR", &self.pids)
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `koi` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run koi"))
    }

    /// Runs `koi` with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn koi");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Run::from(child.wait_with_output().expect("wait koi"))
    }

    /// The pids fixtures recorded (`KOI_TEST_PID_DIR`).
    pub fn recorded_pids(&self) -> Vec<i32> {
        std::fs::read_dir(&self.pids)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that every recorded plugin process is gone (reaped, not a zombie or orphan).
    pub fn assert_no_plugin_left(&self) {
        for pid in self.recorded_pids() {
            assert_process_gone(pid);
        }
    }
}

/// Waits up to 3 s for `pid` to disappear from /proc, then fails naming its state.
pub fn assert_process_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let stat = format!("/proc/{pid}/stat");
    while Path::new(&stat).exists() {
        if Instant::now() > deadline {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            panic!("plugin process {pid} outlived the host: {state}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes a `sample` every `every` until `done` accepts it, and returns that sample; fails the test
/// after 30 s, naming `what` it waited for and showing the last sample.
#[track_caller]
pub fn poll_until<T: std::fmt::Display>(
    what: &str,
    every: Duration,
    mut sample: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = sample();
        if done(&last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "waited 30 s for {what}; last: {last:#}"
        );
        std::thread::sleep(every);
    }
}

/// The outcome of one `koi` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output on failure.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Parses stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts the host did not panic and the error is one paragraph naming `plugin`.
    pub fn expect_clean_error(&self, plugin: &str) -> &Self {
        assert!(
            !self.stderr.contains("panicked"),
            "host panicked:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("RUST_BACKTRACE"),
            "host panicked:\n{}",
            self.stderr
        );
        let error = self
            .stderr
            .lines()
            .skip_while(|l| !l.starts_with("error:"))
            .collect::<Vec<_>>();
        assert!(!error.is_empty(), "no `error:` line:\n{}", self.stderr);
        assert!(
            !error.iter().any(|l| l.trim().is_empty()),
            "the error is not one paragraph:\n{}",
            self.stderr
        );
        assert!(
            error.join("\n").contains(&format!("koi-{plugin}")),
            "the error does not name koi-{plugin}:\n{}",
            self.stderr
        );
        self
    }
}

/// A loopback TCP port that was free a moment ago (for a daemon's REST or CA API).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether root-only tests may run; skipping is a failure when `KOI_REQUIRE_ROOT_TESTS=1`.
pub fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("KOI_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "{test} needs root and KOI_REQUIRE_ROOT_TESTS=1 forbids skipping it"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A `koi daemon` started for one test; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct DaemonProc {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl KoiEnv {
    /// Starts `koi daemon` with extra environment and waits until it answers `koi status`.
    pub fn start_daemon(&self, env: &[(&str, &str)]) -> DaemonProc {
        let log = self.dir.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let file = std::fs::File::create(&log).expect("daemon log");
        let mut cmd = self.command(&["daemon"]);
        cmd.env("KOI_REST_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn koi daemon");
        let daemon = DaemonProc { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        // Until the socket exists, `koi status` would start the plugins itself.
        while !self.home.join("run/koi.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "koi daemon never bound its socket:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            let run = self.run(&["status", "--json"]);
            if run.code.is_some()
                && serde_json::from_str::<serde_json::Value>(&run.stdout).is_ok_and(|v| {
                    v.get("daemon").is_some()
                        && v["plugins"]
                            .as_array()
                            .is_some_and(|p| p.iter().all(|p| p["supervision"]["pid"].is_number()))
                })
            {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "koi daemon did not become ready:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The live status from the daemon.
    pub fn daemon_status(&self) -> serde_json::Value {
        let run = self.run(&["status", "--json"]);
        let status = run.json();
        assert!(
            status.get("daemon").is_some(),
            "not answered by the daemon: {}",
            run.stdout
        );
        status
    }
}

impl DaemonProc {
    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `limit`) for the exit; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && self.terminate(Duration::from_secs(10)).is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `sample` every 250 ms until it gives `Ok`, for at most `limit`; shows the last `Err`.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut sample: impl FnMut() -> Result<T, serde_json::Value>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match sample() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; last: {last:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A child process killed (and reaped) when the test ends, failures included.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks `done` every 250 ms until it is true; fails the test naming `what` after `limit`.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
