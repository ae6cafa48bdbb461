//! Supervision of one plugin in the daemon: start it in daemon mode, ping it (its `status`) on an
//! interval, and restart it when it exits, breaks the protocol or stops answering — after a delay
//! that doubles with each quick crash up to a cap, and resets once it has run long enough to count
//! as stable. Restart count and last failure are kept for `koi status`.

use super::config::Config;
use crate::connection::{Connection, LaunchOptions};
use crate::schema::lock;
use crate::services::HostServices;
use koi_protocol::{ErrorObject, Manifest, codes};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the plugin last stopped.
#[derive(Debug, Clone)]
struct Failure {
    at: SystemTime,
    reason: String,
}

#[derive(Debug, Default)]
struct Record {
    restarts: u64,
    last_failure: Option<Failure>,
    manifest: Option<Manifest>,
    first_attempt_done: bool,
    handshake_ok: bool,
}

/// One supervised plugin.
pub struct Supervised {
    /// The moniker.
    pub moniker: String,
    /// The executable.
    pub path: PathBuf,
    record: Mutex<Record>,
    current: watch::Sender<Option<Connection>>,
    attempted: watch::Sender<bool>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("moniker", &self.moniker)
            .finish_non_exhaustive()
    }
}

/// What supervision reports after each (re)start, for the event bus.
pub type OnStart = Arc<dyn Fn(&Arc<Supervised>, &Connection) + Send + Sync>;

impl Supervised {
    /// A plugin not yet started.
    pub fn new(moniker: &str, path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            moniker: moniker.to_owned(),
            path,
            record: Mutex::new(Record::default()),
            current: watch::channel(None).0,
            attempted: watch::channel(false).0,
        })
    }

    /// The running connection, if the plugin is up.
    pub fn connection(&self) -> Option<Connection> {
        self.current.borrow().clone().filter(|c| !c.has_exited())
    }

    /// The running connection, waiting up to `limit` for a restart to finish.
    pub async fn wait_connection(&self, limit: Duration) -> Result<Connection, ErrorObject> {
        if let Some(c) = self.connection() {
            return Ok(c);
        }
        let mut rx = self.current.subscribe();
        let waited = tokio::time::timeout(
            limit,
            rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.has_exited())),
        )
        .await;
        match waited {
            Ok(Ok(c)) => c.clone().ok_or_else(|| self.down_error()),
            _ => Err(self.down_error()),
        }
    }

    fn down_error(&self) -> ErrorObject {
        let record = lock(&self.record);
        let reason = record
            .last_failure
            .as_ref()
            .map_or_else(|| "it has not started yet".to_owned(), |f| f.reason.clone());
        ErrorObject::new(
            codes::PLUGIN_UNAVAILABLE,
            format!("koi-{} is not running under koi daemon (restarts so far: {}): {reason}", self.moniker, record.restarts),
        )
        .with_hint("The daemon restarts it automatically; try again shortly. `koi status` shows its last failure.")
    }

    /// The last manifest seen (from the most recent handshake).
    pub fn manifest(&self) -> Option<Manifest> {
        lock(&self.record).manifest.clone()
    }

    /// Whether the first start attempt has finished (successfully or not).
    pub fn first_attempt_done(&self) -> bool {
        lock(&self.record).first_attempt_done
    }

    /// Whether the plugin completed a handshake at least once.
    pub fn ever_ready(&self) -> bool {
        lock(&self.record).handshake_ok
    }

    /// Waits until the first start attempt has finished.
    pub async fn wait_first_attempt(&self) {
        let mut rx = self.attempted.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Restart count, last failure, pid — merged into this plugin's row of `koi status`.
    pub fn supervision_json(&self) -> Value {
        let record = lock(&self.record);
        json!({
            "restarts": record.restarts,
            "last_failure": record.last_failure.as_ref().map(|f| json!({
                "at": humantime::format_rfc3339_seconds(f.at).to_string(),
                "reason": f.reason,
            })),
            "pid": self.connection().map(|c| c.pid()),
        })
    }

    fn fail(&self, reason: String) {
        tracing::warn!(plugin = %self.moniker, "{reason}");
        let mut record = lock(&self.record);
        record.last_failure = Some(Failure {
            at: SystemTime::now(),
            reason,
        });
    }

    fn mark_attempted(&self) {
        lock(&self.record).first_attempt_done = true;
        self.attempted.send_replace(true);
    }

    /// Runs until `stop`: start, watch, restart with backoff.
    pub async fn supervise(
        self: Arc<Self>,
        launch: LaunchOptions,
        services: Weak<dyn HostServices>,
        config: Arc<Mutex<Config>>,
        on_start: OnStart,
        stop: CancellationToken,
    ) {
        let mut quick_crashes: u32 = 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let started = Instant::now();
            match Connection::start(&self.moniker, &self.path, &launch, services.clone()).await {
                Ok(connection) => {
                    {
                        let mut record = lock(&self.record);
                        record.manifest = Some(connection.manifest().clone());
                        record.handshake_ok = true;
                    }
                    self.current.send_replace(Some(connection.clone()));
                    self.mark_attempted();
                    on_start(&self, &connection);
                    tracing::info!(plugin = %self.moniker, pid = connection.pid(), "started");
                    if let Some(reason) = self.watch(&connection, &config, &stop).await {
                        self.fail(reason);
                    } else {
                        self.current.send_replace(None);
                        return; // stopping: watch() shut the plugin down
                    }
                    self.current.send_replace(None);
                }
                Err(e) => {
                    self.fail(format!("could not start: {}", e.message));
                    self.mark_attempted();
                }
            }
            let (initial, max, stable_after) = {
                let c = lock(&config);
                (c.restart_initial, c.restart_max, c.stable_after)
            };
            quick_crashes = if started.elapsed() >= stable_after {
                1
            } else {
                quick_crashes.saturating_add(1)
            };
            let delay = initial
                .saturating_mul(1u32 << (quick_crashes - 1).min(16))
                .min(max);
            lock(&self.record).restarts += 1;
            tracing::info!(plugin = %self.moniker, delay_ms = delay.as_millis() as u64, "restarting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Watches a running plugin; returns why it must be restarted, or `None` when stopping.
    async fn watch(
        &self,
        connection: &Connection,
        config: &Mutex<Config>,
        stop: &CancellationToken,
    ) -> Option<String> {
        loop {
            let (interval, timeout) = {
                let c = lock(config);
                (c.ping_interval, c.ping_timeout)
            };
            tokio::select! {
                _ = connection.closed() => {
                    let how = connection.exit_report().map_or_else(|| "ended".to_owned(), |r| r.description);
                    return Some(format!("koi-{} {how}", self.moniker));
                }
                _ = stop.cancelled() => {
                    connection.shutdown().await;
                    return None;
                }
                _ = tokio::time::sleep(interval) => {
                    let ping = tokio::time::timeout(timeout, connection.call(koi_protocol::calls::STATUS, Value::Null)).await;
                    let problem = match ping {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) if e.code == codes::PLUGIN_UNAVAILABLE => e.message,
                        Ok(Err(e)) => format!("koi-{} answered its ping with an error: {}", self.moniker, e.message),
                        Err(_) => format!("koi-{} stopped answering (no ping answer within {} s)", self.moniker, timeout.as_secs()),
                    };
                    connection.kill().await;
                    return Some(problem);
                }
            }
        }
    }
}
