//! `koi` at a real pseudo-terminal: `script -qec … /dev/null`, fed from a pipe, so what a test
//! writes is typed at the terminal and everything the terminal shows is collected. After `koi`
//! exits, the same shell runs a caller-chosen trailer (e.g. `stty -a`, or a read of what was left
//! in the terminal's input). Used by the keystroke, prompt and certmesh modules; the deadlines
//! only stop a hung test.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::KoiEnv;

/// How long a hung session may wait before it fails, unless the caller says otherwise.
const FAILSAFE: Duration = Duration::from_secs(30);

/// The trailer of [`Pty::start`]: a blank line, then `STTY: ` and the terminal's `stty -a`.
const STTY_TRAILER: &str = "echo; echo STTY: $(stty -a)";

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `koi` run by `script` under a pseudo-terminal; what we write to `stdin` is typed at it.
pub struct Pty {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    failsafe: Duration,
}

impl Pty {
    /// Starts `koi <args>` in a pseudo-terminal with `env`'s environment plus `extra`; afterwards
    /// the same shell prints `stty -a`, so tests can check the terminal was restored.
    pub fn start(env: &KoiEnv, args: &[&str], extra: &[(&str, &str)]) -> Pty {
        Pty::start_with(env, args, extra, STTY_TRAILER, FAILSAFE)
    }

    /// Starts `koi <args>` (with `env`'s prefix and environment plus `extra`) under `script`; the
    /// shell then runs `trailer` and exits with `koi`'s status. Waits fail after `failsafe`.
    pub fn start_with(
        env: &KoiEnv,
        args: &[&str],
        extra: &[(&str, &str)],
        trailer: &str,
        failsafe: Duration,
    ) -> Pty {
        let koi = env.command(args);
        let mut line = quote(koi.get_program().to_str().expect("utf-8 path"));
        for arg in koi.get_args() {
            line.push(' ');
            line.push_str(&quote(arg.to_str().expect("utf-8 arg")));
        }
        line.push_str(&format!("; status=$?; {trailer}; exit $status"));
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]).env_clear();
        for (key, value) in koi.get_envs() {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        cmd.envs(extra.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn script (util-linux)");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("output lock")
                    .extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            stdin,
            output,
            reader: Some(reader),
            failsafe,
        }
    }

    /// Everything the terminal has shown so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }

    /// Waits until the terminal has shown `text` `n` times.
    pub fn wait_for_nth(&mut self, text: &str, n: usize) {
        let deadline = Instant::now() + self.failsafe;
        while self.text().matches(text).count() < n {
            if Instant::now() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
                panic!("the terminal never showed {text:?} ×{n}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the terminal shows `text`.
    pub fn wait_for(&mut self, text: &str) {
        self.wait_for_nth(text, 1);
    }

    /// Types `bytes` at the terminal.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("type");
        stdin.flush().expect("flush");
    }

    /// Types `text` at the terminal.
    pub fn type_text(&mut self, text: &str) {
        self.type_bytes(text.as_bytes());
    }

    /// Waits for the session to end; returns its exit status and everything the terminal showed.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + self.failsafe;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the session never ended:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(self.stdin.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code(), self.text())
    }
}

/// The JSON result line the terminal showed.
pub fn result_line(output: &str) -> Value {
    output
        .lines()
        .map(|l| l.trim_matches(['\r', '\n']))
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON result on the terminal:\n{output}"))
}
