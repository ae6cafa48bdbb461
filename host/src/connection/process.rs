//! The plugin process's end, for [`super::Connection`]: the shutdown steps (`shutdown` request,
//! the plugin's declared grace, SIGTERM, SIGKILL), killing its process group, cleaning up what a
//! plugin left in its group, and describing how it exited.

use super::*;

impl Connection {
    /// Stops the plugin: `shutdown` request and close stdin, then (after [`Self::shutdown_grace`])
    /// SIGTERM, then (after [`SHUTDOWN_STEP`]) SIGKILL; returns once the process has been reaped
    /// (and whatever else was left in its process group killed).
    pub async fn shutdown(&self) {
        if self.has_exited() {
            return;
        }
        if lock(&self.inner.fatal).is_none() {
            // The answer is not awaited: the plugin answers and exits, and the reaper sees it.
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            self.send(&Message::Request {
                id: Id::Number(id),
                method: calls::SHUTDOWN.to_owned(),
                params: Value::Null,
            });
        }
        // Close stdin right behind the `shutdown` frame (the writer sends queued frames first).
        lock(&self.inner.out).take();
        let grace = self.shutdown_grace();
        if self.wait_exit(grace).await {
            return;
        }
        tracing::warn!(plugin = %self.inner.moniker, grace_ms = grace.as_millis() as u64, "did not exit after shutdown; sending SIGTERM");
        self.signal_group(rustix::process::Signal::TERM);
        if self.wait_exit(SHUTDOWN_STEP).await {
            return;
        }
        tracing::warn!(plugin = %self.inner.moniker, "ignored SIGTERM; sending SIGKILL");
        self.kill().await;
    }

    /// Kills the plugin's process group at once and waits for the process to be reaped.
    pub async fn kill(&self) {
        lock(&self.inner.out).take();
        self.signal_group(rustix::process::Signal::KILL);
        self.wait_exit(Duration::from_secs(5)).await;
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        if self.has_exited() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.inner.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }

    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut exit = self.inner.exit.clone();
        tokio::time::timeout(limit, exit.wait_for(Option::is_some))
            .await
            .is_ok()
    }
}

/// See [`Connection::shutdown_grace`].
pub fn shutdown_grace(manifest: &Manifest) -> Duration {
    let asked = manifest
        .shutdown_grace_ms
        .map(|ms| {
            Duration::from_millis(ms.min(koi_protocol::MAX_SHUTDOWN_GRACE_MS))
                + Duration::from_secs(1)
        })
        .unwrap_or_default();
    asked.max(SHUTDOWN_STEP)
}

/// After the plugin process `pid` ended (however it ended), kills whatever is left in the process
/// group it led: children its services spawned and did not stop. Only that group: the host spawns
/// every plugin with `process_group(0)`, so the group id is the plugin's pid. Safe against pid
/// reuse: a process group id stays allocated (the kernel does not hand it out as a new pid) while
/// any member of the group lives, so while there is anything to kill the id names this group;
/// once the group is empty the call fails with ESRCH, which is ignored. (The one theoretical
/// case, the pid wrapping round and a new process making itself a group leader with that id in
/// the instant between the reap and this call, needs the whole pid space to cycle meanwhile.)
pub(super) fn kill_leftovers(moniker: &str, pid: u32) {
    let Some(group) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if rustix::process::kill_process_group(group, rustix::process::Signal::KILL).is_ok() {
        tracing::info!(plugin = %moniker, pgid = pid, "killed what the plugin left running in its process group");
    }
}

pub(super) fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => format!(
            "was killed by signal {sig}{}",
            match sig {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            }
        ),
        None => "ended".to_owned(),
    }
}
