//! Services: long-lived daemon-mode work, supervised.
//!
//! Each service declared with [`crate::Plugin::service`] starts right after the first successful
//! `initialize` under `koi daemon`. One that fails (returns `Err` or panics) is restarted after a
//! backoff that doubles from the initial delay up to the maximum, and resets once a run has lasted
//! the maximum without failing; one that returns `Ok(())` is finished. The board below records
//! each service's state, which the runtime adds to every `status` report under
//! `details.daemon_services`, degrading the overall state while any service is failing.

use crate::method::BoxFuture;
use crate::{Context, MethodError};
use koi_protocol::calls::{HealthState, StatusReport};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The key of `status` details that lists the services. Not `services`: plugins use that word for
/// what they serve or find (koi-mdns's discovered services).
pub(crate) const STATUS_KEY: &str = "daemon_services";

/// A service's body: called again for every restart.
pub(crate) type ServiceFn =
    Arc<dyn Fn(Context) -> BoxFuture<Result<(), MethodError>> + Send + Sync>;

/// A declared service.
pub(crate) struct ServiceDef {
    pub name: Arc<str>,
    pub run: ServiceFn,
}

/// Restart delays: `initial`, doubled per consecutive failure, capped at `max`; a run that lasted
/// `max` without failing resets the delay to `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, given the previous delay (none on the first failure)
    /// and how long the failed run lasted.
    pub(crate) fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(d) if ran < self.max => d.saturating_mul(2).min(self.max),
            _ => self.initial.min(self.max),
        }
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Running,
    Restarting { next_attempt: Instant },
    Failed,
    Finished,
}

#[derive(Debug, Clone)]
struct Entry {
    phase: Phase,
    last_error: Option<String>,
    restarts: u64,
}

/// Every service's state, for `status`.
#[derive(Default)]
pub(crate) struct Board {
    entries: Mutex<BTreeMap<Arc<str>, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Board {
    fn set(&self, name: &Arc<str>, change: impl FnOnce(&mut Entry)) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(name.clone()).or_insert(Entry {
            phase: Phase::Running,
            last_error: None,
            restarts: 0,
        });
        change(entry);
    }

    /// Adds `details.daemon_services` (unless the report already has that key) and, while a service is
    /// failing, lowers an `ok` state to `degraded` and names the service in the summary.
    pub(crate) fn merge_into(&self, report: &mut StatusReport) {
        let entries = lock(&self.entries);
        if entries.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut services = Map::new();
        let mut failing = Vec::new();
        for (name, entry) in entries.iter() {
            let mut item = Map::new();
            let state = match &entry.phase {
                Phase::Running => "running",
                Phase::Restarting { next_attempt } => {
                    let wait = next_attempt.saturating_duration_since(now);
                    item.insert(
                        "next_attempt_in_ms".into(),
                        json!(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                    );
                    "restarting"
                }
                Phase::Failed => "failed",
                Phase::Finished => "finished",
            };
            item.insert("state".into(), json!(state));
            item.insert("restarts".into(), json!(entry.restarts));
            item.insert("last_error".into(), json!(entry.last_error));
            if matches!(entry.phase, Phase::Restarting { .. } | Phase::Failed) {
                failing.push(format!(
                    "service `{name}` is failing ({}; restarted {} times)",
                    entry.last_error.as_deref().unwrap_or("no error text"),
                    entry.restarts
                ));
            }
            services.insert(name.to_string(), Value::Object(item));
        }
        report
            .details
            .entry(STATUS_KEY)
            .or_insert(Value::Object(services));
        if !failing.is_empty() {
            if report.state == HealthState::Ok {
                report.state = HealthState::Degraded;
            }
            report.summary = format!("{}; {}", report.summary, failing.join("; "));
        }
    }
}

/// Aborts a spawned attempt when its supervisor is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one service until it finishes or `ctx` is cancelled (shutdown), restarting it after
/// failures. Every attempt gets a clone of `ctx`.
pub(crate) async fn supervise(
    def: Arc<ServiceDef>,
    backoff: Backoff,
    board: Arc<Board>,
    ctx: Context,
) {
    let name = def.name.clone();
    let mut delay: Option<Duration> = None;
    loop {
        board.set(&name, |e| e.phase = Phase::Running);
        let started = Instant::now();
        let attempt = crate::watchdog::watched(&name, (def.run)(ctx.clone()));
        // Spawned so a panic is caught (as a JoinError) rather than unwinding through us; aborted
        // if the supervisor is dropped (shutdown's grace ran out).
        let handle = tokio::spawn(attempt);
        let _abort = AbortOnDrop(handle.abort_handle());
        let outcome = match handle.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("it panicked ({e})")),
        };
        let error = match outcome {
            Ok(()) => {
                board.set(&name, |e| e.phase = Phase::Finished);
                return;
            }
            Err(error) => error,
        };
        if ctx.is_cancelled() {
            tracing::warn!("service `{name}` failed while the plugin was stopping: {error}");
            board.set(&name, |e| {
                e.phase = Phase::Failed;
                e.last_error = Some(error);
            });
            return;
        }
        let wait = backoff.next(delay, started.elapsed());
        delay = Some(wait);
        tracing::warn!(
            "service `{name}` failed: {error}; restarting in {} ms",
            wait.as_millis()
        );
        board.set(&name, |e| {
            e.phase = Phase::Restarting {
                next_attempt: Instant::now() + wait,
            };
            e.last_error = Some(error);
            e.restarts += 1;
        });
        tokio::select! {
            _ = ctx.cancelled() => {
                board.set(&name, |e| e.phase = Phase::Failed);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let b = Backoff::default();
        let short = Duration::from_millis(10);
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let next = b.next(d, short);
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.next(d, Duration::from_secs(61)), Duration::from_secs(1));
    }

    #[test]
    fn a_failing_service_degrades_status_and_keeps_a_handlers_own_services_key() {
        let board = Board::default();
        let name: Arc<str> = Arc::from("watch");
        board.set(&name, |e| {
            e.phase = Phase::Restarting {
                next_attempt: Instant::now() + Duration::from_secs(4),
            };
            e.last_error = Some("socket closed".into());
            e.restarts = 3;
        });
        let mut report = StatusReport {
            state: HealthState::Ok,
            summary: "ready".into(),
            details: Map::new(),
        };
        board.merge_into(&mut report);
        assert_eq!(report.state, HealthState::Degraded);
        assert!(report.summary.contains("`watch`"));
        let watch = &report.details[STATUS_KEY]["watch"];
        assert_eq!(watch["state"], "restarting");
        assert_eq!(watch["restarts"], 3);
        assert_eq!(watch["last_error"], "socket closed");
        assert!(
            watch["next_attempt_in_ms"]
                .as_u64()
                .is_some_and(|ms| ms <= 4000)
        );

        let mut own = StatusReport {
            state: HealthState::Failed,
            summary: "broken".into(),
            details: Map::from_iter([(STATUS_KEY.to_owned(), json!("mine"))]),
        };
        board.merge_into(&mut own);
        assert_eq!(own.details[STATUS_KEY], "mine");
        assert_eq!(own.state, HealthState::Failed);
    }
}
