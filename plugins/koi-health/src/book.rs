//! The plugin's state (`Plugin::state`): the stored checks (`$KOI_HOME/health/checks.json`,
//! written atomically through [`koi_sdk::store::JsonFile`]; a damaged file is reported and never
//! overwritten), each check's tracked state, the machines and their signals, and the one path
//! every transition takes — [`Health::record`]: a line in the log, a `health.changed` event, and a
//! copy for every `watch` — so the three never disagree.

use crate::probe::Prober;
use crate::spec::Check;
use crate::tracker::{CheckTrack, MachineSignals, State};
use crate::translog::{Log, format_line};
use koi_sdk::store::JsonFile;
use koi_sdk::{Context, MethodError, StateInit};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// Topic of the transition event.
pub const CHANGED: &str = "health.changed";
/// Default time without hearing a machine before it is down.
pub const DEFAULT_THRESHOLD: Duration = Duration::from_secs(60);
/// Environment variable that sets the machine threshold (`60s`, at least `1s`).
pub const THRESHOLD_ENV: &str = "KOI_HEALTH_THRESHOLD";
/// Most machines tracked (more are ignored, with one log line).
pub const MAX_MACHINES: usize = 1024;
/// Most services remembered per machine.
pub const MAX_SERVICES_PER_MACHINE: usize = 256;

/// What `checks.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Stored {
    /// The checks, by name order.
    pub checks: Vec<Check>,
}

/// What `states.json` holds: each check's last settled state, so a restarted daemon carries on
/// from it instead of logging every check's first result again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SavedStates {
    /// By check name.
    pub checks: BTreeMap<String, SavedState>,
}

/// One check's saved state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SavedState {
    /// up or down (pending is not saved).
    pub state: State,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why.
    pub reason: String,
}

/// What kind of thing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A machine on the LAN.
    Machine,
    /// A service check.
    Service,
}

/// Payload of `health.changed`, and one item of `watch --json`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Changed {
    /// When (RFC 3339, UTC).
    #[schemars(title = "Time")]
    pub at: String,
    /// The machine or service.
    pub name: String,
    /// Machine or service.
    pub kind: Kind,
    /// The state before.
    pub old: State,
    /// The state after.
    pub new: State,
    /// Why.
    pub reason: String,
}

/// A machine: its signals and the state they last gave.
#[derive(Debug, Clone)]
pub struct Machine {
    /// What is known.
    pub signals: MachineSignals,
    /// The state.
    pub state: State,
    /// Since when.
    pub since: SystemTime,
    /// Why.
    pub reason: String,
}

/// The plugin's state.
pub struct Health {
    /// The checks file, or why it cannot be used.
    pub file: Result<Arc<JsonFile<Stored>>, String>,
    /// The checks, by name.
    pub checks: Mutex<BTreeMap<String, Check>>,
    /// Each check's tracked state.
    pub tracks: Mutex<BTreeMap<String, CheckTrack>>,
    /// The machines, by host name (lowercase, without `.local.`).
    pub machines: Mutex<BTreeMap<String, Machine>>,
    /// The transition log.
    pub log: Log,
    /// The HTTP/TCP prober.
    pub prober: Arc<Prober>,
    /// Bumped when checks are added or removed (the runner reconciles on it).
    pub version: tokio::sync::watch::Sender<u64>,
    /// Transitions, for `watch`.
    pub transitions: tokio::sync::broadcast::Sender<Changed>,
    /// Machine threshold.
    pub threshold: Duration,
    /// One writer at a time for the checks file and the log.
    pub writing: tokio::sync::Mutex<()>,
    /// Whether certmesh's members could be read (for status).
    pub certmesh_note: Mutex<Option<String>>,
    /// `states.json` (daemon mode saves it when check states changed).
    pub states_file: Arc<JsonFile<SavedStates>>,
    /// A check's state changed since `states.json` was saved.
    pub states_dirty: std::sync::atomic::AtomicBool,
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every change is one assignment).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Parses the threshold from the environment (default 60 s; at least 1 s).
pub fn threshold_from(value: Option<&str>) -> Duration {
    value
        .and_then(|v| crate::spec::parse_duration("threshold", v).ok())
        .filter(|d| *d >= Duration::from_secs(1))
        .unwrap_or(DEFAULT_THRESHOLD)
}

impl Health {
    /// Loads the checks (a missing file is none; a damaged one is reported and kept as it is).
    pub fn load(init: &StateInit) -> Self {
        let dir = init
            .data_dir()
            .unwrap_or_else(|_| init.koi_home().join("health"));
        let file = JsonFile::<Stored>::new(dir.join("checks.json")).version(1);
        let (file, stored) = match file.load_or_default() {
            Ok(stored) => (Ok(Arc::new(file)), stored),
            Err(e) => {
                tracing::warn!("health checks not loaded: {e}");
                (Err(e.to_string()), Stored::default())
            }
        };
        let now = SystemTime::now();
        let checks: BTreeMap<_, _> = stored
            .checks
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let states_file = JsonFile::<SavedStates>::new(dir.join("states.json")).version(1);
        let saved = states_file.load_or_default().unwrap_or_else(|e| {
            tracing::info!("check states start pending ({e})");
            SavedStates::default()
        });
        let tracks = checks
            .keys()
            .map(|n| {
                let mut track = CheckTrack::new(now);
                if let Some(s) = saved.checks.get(n).filter(|s| s.state != State::Pending) {
                    track.state = s.state;
                    track.since = humantime::parse_rfc3339(&s.since).unwrap_or(now);
                    track.reason = s.reason.clone();
                }
                (n.clone(), track)
            })
            .collect();
        let threshold = threshold_from(std::env::var(THRESHOLD_ENV).ok().as_deref());
        Self {
            file,
            checks: Mutex::new(checks),
            tracks: Mutex::new(tracks),
            machines: Mutex::new(BTreeMap::new()),
            log: Log::in_dir(&dir),
            prober: Arc::new(Prober::new(init.koi_home())),
            version: tokio::sync::watch::channel(0).0,
            transitions: tokio::sync::broadcast::channel(1024).0,
            threshold,
            writing: tokio::sync::Mutex::new(()),
            certmesh_note: Mutex::new(None),
            states_file: Arc::new(states_file),
            states_dirty: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Saves the check states if they changed (off the protocol loop; errors are logged).
    pub async fn save_states(&self, ctx: &Context) {
        if !self
            .states_dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let saved = SavedStates {
            checks: lock(&self.tracks)
                .iter()
                .filter(|(_, t)| t.state != State::Pending)
                .map(|(n, t)| {
                    let state = SavedState {
                        state: t.state,
                        since: humantime::format_rfc3339_seconds(t.since).to_string(),
                        reason: t.reason.clone(),
                    };
                    (n.clone(), state)
                })
                .collect(),
        };
        let file = Arc::clone(&self.states_file);
        let saved = ctx
            .blocking("save the check states", move || {
                file.save(&saved)
                    .map_err(|e| MethodError::new(e.to_string()))
            })
            .await;
        if let Err(e) = saved {
            tracing::warn!("check states not saved: {}", e.message());
        }
    }

    /// The checks file, or a clear error when it could not be read.
    pub fn file(&self) -> Result<Arc<JsonFile<Stored>>, MethodError> {
        self.file.clone().map_err(|e| {
            MethodError::new(format!("the health checks file cannot be used: {e}")).hint(
                "nothing was changed; move the damaged file aside (see the path above) and add the checks again",
            )
        })
    }

    /// Saves `checks` atomically, then makes them the checks in memory (so a failed save changes
    /// nothing).
    pub async fn save_checks(
        &self,
        ctx: &Context,
        checks: BTreeMap<String, Check>,
    ) -> Result<(), MethodError> {
        let file = self.file()?;
        let stored = Stored {
            checks: checks.values().cloned().collect(),
        };
        ctx.blocking("save the health checks", move || {
            file.save(&stored).map_err(|e| {
                MethodError::new(format!("cannot save the health checks: {e}"))
                    .hint("nothing was changed; free disk space or fix the permissions of $KOI_HOME/health")
            })
        })
        .await?;
        let now = SystemTime::now();
        {
            let mut tracks = lock(&self.tracks);
            tracks.retain(|n, _| checks.contains_key(n));
            for name in checks.keys() {
                tracks
                    .entry(name.clone())
                    .or_insert_with(|| CheckTrack::new(now));
            }
        }
        *lock(&self.checks) = checks;
        self.states_dirty
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Records transitions: the log first (durably), then the event and the watchers.
    pub async fn record(&self, ctx: &Context, changes: Vec<Changed>) {
        if changes.is_empty() {
            return;
        }
        let lines: String = changes
            .iter()
            .map(|c| {
                let at = humantime::parse_rfc3339(&c.at).unwrap_or_else(|_| SystemTime::now());
                format_line(at, &c.name, c.old, c.new, &c.reason)
            })
            .collect();
        {
            let _one = self.writing.lock().await;
            let log = self.log.clone();
            let written = ctx
                .blocking("append to the health log", move || {
                    log.append(&lines)
                        .map_err(|e| MethodError::new(e.to_string()))
                })
                .await;
            if let Err(e) = written {
                tracing::warn!("health log not written: {}", e.message());
            }
        }
        for change in changes {
            if let Err(e) = ctx.publish(CHANGED, &change).await {
                tracing::debug!("health.changed not published: {e}");
            }
            let _ = self.transitions.send(change);
        }
    }
}

/// A [`Changed`] for now.
pub fn change(
    name: &str,
    kind: Kind,
    old: State,
    new: State,
    reason: &str,
    at: SystemTime,
) -> Changed {
    Changed {
        at: humantime::format_rfc3339_millis(at).to_string(),
        name: name.to_owned(),
        kind,
        old,
        new,
        reason: crate::translog::field(reason, crate::translog::REASON_MAX),
    }
}
