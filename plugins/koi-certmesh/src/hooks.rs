//! Reload hooks: one command per machine, run after each renewal so servers pick up the new
//! certificate. `koi certmesh set-hook --reload "<command>"` stores it in this machine's state
//! (`certmesh/hook.json`, [`koi_sdk::store::JsonFile`]); the next renewal mirrors it into the
//! roster entry. `--clear` removes it; `--test` runs it once now.
//!
//! A run ([`run`]): `sh -c <command>` as the daemon's user, in its own process group, with
//! `KOI_CERT_DIR` and `KOI_CERT_HOST` set, stdin from /dev/null, a timeout (default
//! [`DEFAULT_TIMEOUT_SECS`]) after which the whole group is killed; the last [`OUTPUT_TAIL_BYTES`]
//! of its output are kept, written to the log and, with the exit status, to `hook.json` (shown by
//! `status`, and sent to the CA's audit log with the next renewal). A failing hook is reported and
//! tried again at the next renewal; it never holds a renewal back: it starts only after the
//! files are in place, and off the protocol loop.
//!
//! `set-hook` is `local_only`: the command runs as the daemon's user, so only the local CLI may set
//! it, never the REST API.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error;
use crate::files::{CertFiles, Membership};
use crate::layout::Layout;

/// Default hook timeout.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;
/// Output kept from one run.
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// After the hook exits, how long its output pipes may stay open (a server it started in the
/// background without redirecting them) before reading stops.
const DRAIN: Duration = Duration::from_secs(2);

/// One finished run of the hook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HookRun {
    /// The command run.
    pub command: String,
    /// Why it ran: `renewal` or `test`.
    pub trigger: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Whether it was killed at the timeout.
    pub timed_out: bool,
    /// Exit code 0 within the timeout.
    pub ok: bool,
    /// The end of its output (stdout and stderr interleaved, at most 16 KiB).
    pub output_tail: String,
    /// One line: `exit 0`, `exit 3`, `killed after 60 s (timeout)`, `could not start: …`.
    pub outcome: String,
}

/// This machine's hook and its last run (`certmesh/hook.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct HookState {
    /// The reload command, if set.
    #[serde(default)]
    pub reload: Option<String>,
    /// Timeout in seconds (default 60).
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// The last run.
    #[serde(default)]
    pub last: Option<HookRun>,
}

fn store(layout: &Layout) -> JsonFile<HookState> {
    JsonFile::new(layout.dir().join("hook.json"))
}

/// The hook state (default when none was set).
pub fn load(layout: &Layout) -> Result<HookState, MethodError> {
    store(layout).load_or_default().map_err(|e| {
        error::fail(
            format!("Cannot read the reload hook: {e}."),
            "Set it again with `koi certmesh set-hook --reload \"<command>\"` (or --clear).",
        )
    })
}

fn save(layout: &Layout, state: &HookState) -> Result<(), MethodError> {
    store(layout)
        .save(state)
        .map_err(|e| MethodError::new(format!("Cannot save the reload hook: {e}.")))
}

/// Runs `command` once (see the module docs).
pub async fn run(
    command: &str,
    trigger: &str,
    files: &CertFiles,
    host: &str,
    timeout: Duration,
) -> HookRun {
    let started_at = crate::names::rfc3339(time::OffsetDateTime::now_utc());
    let start = Instant::now();
    let mut record = HookRun {
        command: command.to_owned(),
        trigger: trigger.to_owned(),
        started_at,
        duration_ms: 0,
        exit_code: None,
        timed_out: false,
        ok: false,
        output_tail: String::new(),
        outcome: String::new(),
    };
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("KOI_CERT_DIR", &files.dir)
        .env("KOI_CERT_HOST", host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            record.outcome = format!("could not start `sh -c`: {e}");
            return record;
        }
    };
    tracing::info!(command, trigger, "reload hook started");
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_BYTES)));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(collect(out, tail.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(collect(err, tail.clone())));
    }
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            record.exit_code = status.code();
            record.ok = status.success();
            record.outcome = match status.code() {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            };
        }
        Ok(Err(e)) => record.outcome = format!("could not wait for it: {e}"),
        Err(_) => {
            if let Some(pid) = pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait().await;
            record.timed_out = true;
            record.outcome = format!("killed after {} s (timeout)", timeout.as_secs());
        }
    }
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN, reader).await.is_err() {
            abort.abort();
        }
    }
    let bytes: Vec<u8> = tail
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    record.output_tail = String::from_utf8_lossy(&bytes).into_owned();
    record.duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    if record.ok {
        tracing::info!(command, outcome = %record.outcome, output = %record.output_tail, "reload hook finished");
    } else {
        tracing::warn!(command, outcome = %record.outcome, output = %record.output_tail, "reload hook FAILED; it runs again at the next renewal");
    }
    record
}

async fn collect(mut pipe: impl tokio::io::AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let mut t = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.extend(&buf[..n]);
        let over = t.len().saturating_sub(OUTPUT_TAIL_BYTES);
        t.drain(..over);
    }
}

/// Runs this machine's hook, if one is set, and records the run in `hook.json`.
pub async fn run_configured(
    layout: &Layout,
    membership: &Membership,
    trigger: &str,
) -> Result<Option<HookRun>, MethodError> {
    let state = load(layout)?;
    let Some(command) = state.reload.clone() else {
        return Ok(None);
    };
    let files = CertFiles::at(layout, &membership.hostname);
    let timeout = Duration::from_secs(u64::from(
        state.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
    ));
    let record = run(&command, trigger, &files, &membership.hostname, timeout).await;
    let mut state = load(layout)?;
    state.last = Some(record.clone());
    save(layout, &state)?;
    Ok(Some(record))
}

/// Params of `set-hook`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHookParams {
    /// The command to run after each renewal (through `sh -c`, as the daemon's user).
    #[serde(default)]
    pub reload: Option<String>,
    /// Remove the hook.
    #[serde(default)]
    pub clear: bool,
    /// Run the hook once now (after setting it, if --reload is given too).
    #[serde(default)]
    pub test: bool,
    /// Kill the hook (and everything it started in its process group) after this many seconds.
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u32>,
}

/// Result of `set-hook`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SetHookResult {
    /// The hook now set, if any.
    pub reload: Option<String>,
    /// Its timeout in seconds.
    pub timeout_secs: u32,
    /// Where it is stored.
    pub stored_in: String,
    /// The run made by --test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<HookRun>,
    /// When the CA's roster gets a copy.
    pub roster: String,
}

/// The `set-hook` method.
pub async fn set_hook(ctx: Context, p: SetHookParams) -> Result<SetHookResult, MethodError> {
    let layout = crate::app::App::of(&ctx)?.authority().layout().clone();
    let membership = Membership::load(&layout)?.ok_or_else(|| {
        error::fail(
            "This machine is not in a mesh, so it has no certificate to reload.",
            "Join one first with `koi certmesh join`.",
        )
    })?;
    if p.clear && p.reload.is_some() {
        return Err(error::fail(
            "--reload and --clear contradict each other.",
            "Pass one of them: `koi certmesh set-hook --reload \"<command>\"` or `--clear`.",
        ));
    }
    if !p.clear && !p.test && p.reload.is_none() && p.timeout_secs.is_none() {
        return Err(error::fail(
            "Nothing to do: set-hook needs --reload \"<command>\", --clear or --test.",
            "For example `koi certmesh set-hook --reload \"systemctl reload nginx\"`.",
        ));
    }
    let mut state = load(&layout)?;
    if let Some(command) = &p.reload {
        if command.trim().is_empty() {
            return Err(error::fail(
                "--reload was given an empty command.",
                "Pass the command to run, or use --clear to remove the hook.",
            ));
        }
        state.reload = Some(command.clone());
    }
    if p.clear {
        state.reload = None;
    }
    if p.timeout_secs.is_some() {
        state.timeout_secs = p.timeout_secs;
    }
    save(&layout, &state)?;
    let test = if p.test {
        if state.reload.is_none() {
            return Err(error::fail(
                "There is no reload hook to test.",
                "Set one with `koi certmesh set-hook --reload \"<command>\" --test`.",
            ));
        }
        run_configured(&layout, &membership, "test").await?
    } else {
        None
    };
    Ok(SetHookResult {
        reload: state.reload,
        timeout_secs: state.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        stored_in: store(&layout).path().display().to_string(),
        test,
        roster: if membership.role == "member" {
            "mirrored into the CA's roster at the next renewal".into()
        } else {
            "this machine is the CA: its own certificate does not renew by itself yet, so the \
             hook runs only with --test"
                .into()
        },
    })
}

/// The hook file's path (for status and docs).
pub fn path(layout: &Layout) -> PathBuf {
    store(layout).path().to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> CertFiles {
        CertFiles::in_dir(dir)
    }

    #[tokio::test]
    async fn a_hook_gets_its_environment_and_its_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let run = run(
            "echo \"$KOI_CERT_HOST in $KOI_CERT_DIR\"; echo oops >&2; exit 3",
            "test",
            &files(dir.path()),
            "m1",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(run.exit_code, Some(3));
        assert!(!run.ok && !run.timed_out);
        assert_eq!(run.outcome, "exit 3");
        assert!(
            run.output_tail
                .contains(&format!("m1 in {}", dir.path().display())),
            "{}",
            run.output_tail
        );
        assert!(run.output_tail.contains("oops"));
    }

    #[tokio::test]
    async fn at_the_timeout_the_whole_process_group_is_killed_and_output_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let command = format!(
            "head -c 100000 /dev/zero | tr '\\0' x; sleep 30 & echo $! > {}; wait",
            pidfile.display()
        );
        let run = run(
            &command,
            "test",
            &files(dir.path()),
            "m1",
            Duration::from_secs(1),
        )
        .await;
        assert!(run.timed_out && !run.ok, "{run:?}");
        assert!(run.output_tail.len() <= OUTPUT_TAIL_BYTES);
        assert!(run.output_tail.len() >= OUTPUT_TAIL_BYTES / 2);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child went with the group (a zombie at most until reaped by init).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let gone = state.is_empty() || state.split(' ').nth(2) == Some("Z");
            if gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the hook's child {pid} survived: {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
