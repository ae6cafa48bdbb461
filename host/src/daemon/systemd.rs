//! systemd integration: `READY=1` once every plugin has finished its first start, `WATCHDOG=1` at
//! half the `WATCHDOG_USEC` interval while the daemon is healthy, `RELOADING=1`/`READY=1` around a
//! SIGHUP reload and `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` all of this is a no-op.

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the daemon is ready.
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// Tells systemd a reload started.
pub fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval until `stop`, if systemd asked for it.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
                _ = stop.cancelled() => return,
            }
        }
    });
}
