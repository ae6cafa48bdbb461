//! The test as a plugin's host over raw stdio, for tests that must drive the protocol themselves
//! (deliver `event` notifications, pipeline requests, answer the plugin's own requests): spawns the
//! plugin as `koi` does (launch cookie, a private `KOI_HOME`), reads its stdout frames on a thread,
//! does the `initialize` handshake and matches responses to request ids.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// The largest frame offered at the handshake: the host's default (`DEFAULT_MAX_FRAME_BYTES`).
const MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;

/// What the stdout reader passes on: a frame, or a line that is not JSON.
type Line = Result<Value, String>;

/// A running plugin and the host end of its pipes. Dropping it kills the plugin.
pub struct RawHost {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Line>,
    next_id: u64,
    home: tempfile::TempDir,
}

impl RawHost {
    /// Starts `program` with `env`, the launch cookie and `KOI_HOME` set to a private temporary
    /// directory (as the host does); its stderr goes to `stderr.log` in that directory.
    pub fn spawn(program: &Path, env: &[(&str, &str)]) -> Self {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let home = tempfile::tempdir().expect("temp KOI_HOME");
        let stderr = std::fs::File::create(home.path().join("stderr.log")).expect("stderr file");
        let mut child = Command::new(program)
            .envs(env.iter().copied())
            .env("KOI_PLUGIN_COOKIE", "koi-stdio-jsonrpc")
            .env("KOI_HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, frames) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let frame =
                    serde_json::from_str::<Value>(&line).map_err(|e| format!("{e}: {line}"));
                if tx.send(frame).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            name,
            child,
            stdin,
            frames,
            next_id: 1,
            home,
        }
    }

    /// The handshake as the host does it, in `mode` (`daemon`/`one_shot`) offering `features`;
    /// returns the plugin's `initialize` result (its manifest and the features it accepted).
    pub fn initialize(&mut self, mode: &str, features: &[&str]) -> Value {
        let koi_home = self.home.path().display().to_string();
        self.call(
            "initialize",
            json!({
                "protocol": {"major": 1, "minor": 1},
                "host": {"name": "koi", "version": "test"},
                "mode": mode,
                "features": features,
                "max_frame_bytes": MAX_FRAME_BYTES,
                "koi_home": koi_home,
                "interactive": false,
            }),
            Duration::from_secs(30),
        )
    }

    fn write(&mut self, frame: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        let mut line = serde_json::to_vec(frame).expect("json");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.name));
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Sends a notification.
    pub fn notify(&mut self, method: &str, params: Value) {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Answers the plugin's request `id` with `result`.
    pub fn respond(&mut self, id: &Value, result: Value) {
        self.write(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    /// The next frame, or `None` after `limit`. Fails the test if the plugin wrote a line that is
    /// not JSON or closed its stdout (exited).
    pub fn next_frame(&self, limit: Duration) -> Option<Value> {
        match self.frames.recv_timeout(limit) {
            Ok(Ok(frame)) => Some(frame),
            Ok(Err(bad)) => panic!("{} wrote a frame that is not JSON ({bad})", self.name),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("{} closed its stdout", self.name),
        }
    }

    /// Calls `method` and returns its result, failing the test on an error, on a request from the
    /// plugin, or after `limit`.
    pub fn call(&mut self, method: &str, params: Value, limit: Duration) -> Value {
        let name = self.name.clone();
        self.call_answering(method, params, limit, |request| {
            panic!("{name} sent a request this test does not answer: {request}")
        })
    }

    /// Calls `method` and returns its result, answering each request the plugin sends meanwhile
    /// with what `answer` returns for it; fails the test on an error or after `limit`.
    pub fn call_answering(
        &mut self,
        method: &str,
        params: Value,
        limit: Duration,
        mut answer: impl FnMut(&Value) -> Value,
    ) -> Value {
        let id = self.request(method, params);
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.next_frame(left).unwrap_or_else(|| {
                panic!(
                    "no answer to `{method}` from {} within {limit:?}",
                    self.name
                )
            });
            if frame.get("method").is_some() {
                if frame.get("id").is_some() {
                    let result = answer(&frame);
                    self.respond(&frame["id"], result);
                }
            } else if frame["id"] == json!(id) {
                assert!(frame.get("error").is_none(), "`{method}` failed: {frame}");
                return frame["result"].clone();
            }
        }
    }

    /// The plugin's `KOI_HOME`.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// What the plugin wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.home.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit on its own (reaping it); kills it otherwise.
    pub fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for RawHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
