//! Running the trust-store tools (`update-ca-certificates`, `certutil`, `keytool`, ...): finding
//! them, running each with a deadline (the whole process group is killed when it passes), feeding
//! stdin, capturing both outputs, and describing a failure as "the command, its exit status and the
//! last lines it printed" so a report can say what went wrong without a second look.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// One command to run: program, arguments, optional stdin bytes.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The command as a user would type it (shell-quoted).
    pub fn display(&self) -> String {
        let mut parts = vec![shell_quote(&self.program.to_string_lossy())];
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub display: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// "`cmd` exited with status 1: <last lines>" — stderr's last lines and stdout's error lines,
    /// or stdout's last lines when both are empty.
    pub fn failure(&self) -> String {
        let status = match self.status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        // keytool prints its errors on stdout and warnings on stderr: keep stdout's error lines.
        let stdout_errors: String = self
            .stdout
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("error"))
            .collect::<Vec<_>>()
            .join("\n");
        let parts: Vec<String> = [last_lines(&self.stderr, 4), last_lines(&stdout_errors, 2)]
            .into_iter()
            .flatten()
            .collect();
        let tail = if parts.is_empty() {
            last_lines(&self.stdout, 4)
        } else {
            Some(parts.join(" | "))
        }
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
        format!("`{}` {status}{tail}", self.display)
    }

    /// Whether the tool said it lacked permission (messages are forced to English with LC_ALL=C).
    pub fn permission_denied(&self) -> bool {
        let all = format!("{}\n{}", self.stdout, self.stderr);
        [
            "Permission denied",
            "Operation not permitted",
            "AccessDeniedException",
            "SEC_ERROR_READ_ONLY",
            "must be root",
            "Read-only file system",
            "Access is denied",
            "ERROR_ACCESS_DENIED",
            "authorization was denied",
        ]
        .iter()
        .any(|m| all.contains(m))
    }

    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn last_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(lines[lines.len().saturating_sub(n)..].join(" | "))
}

/// Why a command produced no [`Output`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("could not start `{display}`: {source}")]
    Spawn {
        display: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{display}` did not finish within {secs} s and was killed; run it by hand to see where it hangs"
    )]
    Timeout { display: String, secs: u64 },
    #[error("lost track of `{display}`: {source}")]
    Wait {
        display: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `cmd` with a deadline, `LC_ALL=C`, and stdin from `cmd.stdin` (or /dev/null, so no tool
/// can wait for a prompt answer).
pub(crate) fn run(cmd: &Cmd, timeout: Duration) -> Result<Output, RunError> {
    let display = cmd.display();
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env("LC_ALL", "C")
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Its own process group, so a timeout can kill the helpers a script started too.
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        display: display.clone(),
        source,
    })?;

    if let (Some(data), Some(mut pipe)) = (cmd.stdin.clone(), child.stdin.take()) {
        // A writer thread, so a tool that prints a lot before reading cannot deadlock us. A tool
        // that exits without reading makes the write fail with EPIPE, which is not our error.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill(&mut child);
                return Err(RunError::Timeout {
                    display,
                    secs: timeout.as_secs().max(1),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                kill(&mut child);
                return Err(RunError::Wait { display, source });
            }
        }
    };
    // The outputs end when the last holder of the pipes exits; a daemon a tool left behind could
    // hold them, so wait a little and take what arrived.
    let grace = Duration::from_secs(2);
    Ok(Output {
        display,
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn kill(child: &mut Child) {
    #[cfg(unix)]
    {
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The first executable called `name` on PATH, then in the sbin directories a non-root PATH often
/// lacks (`update-ca-certificates` lives in /usr/sbin).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if cfg!(unix) {
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs.iter().find_map(|d| executable_in(d, name))
}

pub(crate) fn executable_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut candidates = vec![dir.join(name)];
    if cfg!(windows) {
        candidates.push(dir.join(format!("{name}.exe")));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// A certificate written to a private temporary file for tools that only read files (macOS
/// `security`, Windows `certutil`); deleted on drop.
#[cfg(any(target_os = "macos", target_os = "windows"))]
pub(crate) struct TempFile(pub PathBuf);

#[cfg(any(target_os = "macos", target_os = "windows"))]
impl TempFile {
    pub fn with(name: &str, content: &[u8]) -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "koi-trust-{}-{nanos}-{name}.pem",
            std::process::id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let file = Self(path);
        f.write_all(content)?;
        Ok(file)
    }
}

#[cfg(any(target_os = "macos", target_os = "windows"))]
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// POSIX-shell quoting, only when needed: `a-b/c` stays, `a b` becomes `'a b'`.
pub(crate) fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | ',' | '=' | '+' | '@')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn output_and_failures_are_captured() {
        let out = run(
            &Cmd::new("/bin/sh")
                .args(["-c", "cat; echo oops >&2; exit 3"])
                .stdin("hello"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.stdout, "hello");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            out.failure(),
            "`/bin/sh -c 'cat; echo oops >&2; exit 3'` exited with status 3: oops"
        );
    }

    #[test]
    fn a_hanging_command_is_killed_with_its_children() {
        let err = run(
            &Cmd::new("/bin/sh").args(["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn missing_programs_and_quoting() {
        let err = run(&Cmd::new("/nonexistent/koi-tool"), Duration::from_secs(5)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("could not start `/nonexistent/koi-tool`")
        );
        assert_eq!(shell_quote("sql:/a b/c"), "'sql:/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("C,,"), "C,,");
        assert!(which("sh").is_some());
        assert!(which("koi-no-such-tool").is_none());
    }
}
