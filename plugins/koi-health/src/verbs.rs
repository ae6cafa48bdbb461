//! The verbs: `status` (machines and services with state, since, reason and signals; without the
//! daemon it runs each check once and says continuous checking needs `koi daemon`), `add`,
//! `remove`, `log` (filter by name, time, count) and `watch` (a stream of transitions), plus the
//! dashboard line for `koi status`.

use crate::book::{Changed, Health, lock};
use crate::spec::{self, AddParams, MAX_CHECKS};
use crate::tracker::State;
use crate::translog::Line;
use koi_sdk::protocol::calls::{HealthState, StatusReport};
use koi_sdk::{Context, MethodError, NoParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::SystemTime;

/// The note a one-shot `status` carries.
pub const ONE_SHOT_NOTE: &str = "checked once just now: continuous checking and machine health need `koi daemon` (start it with `koi daemon`)";

/// One machine or service in `status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Row {
    /// The machine or service.
    pub name: String,
    /// up, down, pending or degraded.
    pub state: State,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why.
    pub reason: String,
    /// The signals behind it.
    pub signals: String,
}

/// Result of `status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusOut {
    /// Machines on the LAN.
    pub machines: Vec<Row>,
    /// Service checks.
    pub services: Vec<Row>,
    /// What to know about this answer (left out when there is nothing to say, so not required
    /// by the schema: `default` is what tells schemars so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The rows, from memory only (the daemon's answer never re-runs a check).
pub fn rows(health: &Health) -> (Vec<Row>, Vec<Row>) {
    let now = SystemTime::now();
    let machines = lock(&health.machines)
        .iter()
        .map(|(name, m)| {
            let s = &m.signals;
            let mut signals = Vec::new();
            if let Some(t) = s.last_heard {
                let secs = now.duration_since(t).unwrap_or_default().as_secs();
                signals.push(format!(
                    "mDNS heard {secs}s ago ({} services)",
                    s.services.len()
                ));
            }
            if s.goodbye.is_some() {
                signals.push("mDNS goodbye".into());
            }
            if let Some(end) = s.cert_not_after {
                signals.push(format!("certificate until {}", stamp(end)));
            }
            if s.heartbeat_failing.is_some() {
                signals.push("heartbeat failing".into());
            }
            Row {
                name: name.clone(),
                state: m.state,
                since: stamp(m.since),
                reason: m.reason.clone(),
                signals: signals.join("; "),
            }
        })
        .collect();
    let checks = lock(&health.checks);
    let services = lock(&health.tracks)
        .iter()
        .filter_map(|(name, t)| {
            let check = checks.get(name)?;
            let last = t.last.as_ref().map_or_else(
                || "not run yet".to_owned(),
                |(at, o)| format!("last run {}: {}", stamp(*at), o.detail),
            );
            Some(Row {
                name: name.clone(),
                state: t.state,
                since: stamp(t.since),
                reason: t.reason.clone(),
                signals: format!(
                    "{} every {}; {last}",
                    check.target.display(),
                    humantime::format_duration(check.interval())
                ),
            })
        })
        .collect();
    (machines, services)
}

/// The note the one-shot dashboard (`koi status`) carries: it does not run the checks.
pub const DASHBOARD_NOTE: &str =
    "not checked: `koi health status` runs each check once; continuous checking needs `koi daemon`";

/// The current view: from memory under the daemon; without it, each check is run once first —
/// except for the host's own dashboard call (`koi status`), which must stay quick.
pub async fn snapshot(ctx: &Context, health: &Arc<Health>) -> StatusOut {
    let mut notes = Vec::new();
    if ctx.mode() != koi_sdk::protocol::handshake::RunMode::Daemon {
        let dashboard = matches!(ctx.caller(), Some(koi_sdk::protocol::context::Caller::Host));
        if dashboard {
            notes.push(DASHBOARD_NOTE.to_owned());
        } else {
            crate::runner::run_all_once(health).await;
            notes.push(ONE_SHOT_NOTE.to_owned());
        }
    }
    if let Err(e) = &health.file {
        notes.push(format!("the checks file cannot be read: {e}"));
    }
    if let Some(n) = lock(&health.certmesh_note).clone() {
        notes.push(n);
    }
    let (machines, services) = rows(health);
    StatusOut {
        machines,
        services,
        notes,
    }
}

/// `state`: the same view as `koi health status`, with a declared result schema.
pub async fn state(ctx: Context, _: NoParams) -> Result<StatusOut, MethodError> {
    let health = ctx.state::<Health>()?;
    Ok(snapshot(&ctx, &health).await)
}

/// Result of `add`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Added {
    /// The stored check.
    #[serde(flatten)]
    pub check: spec::Check,
    /// When it starts running.
    pub runs: String,
}

/// `add`.
pub async fn add(ctx: Context, p: AddParams) -> Result<Added, MethodError> {
    let health = ctx.state::<Health>()?;
    let check = spec::build(
        &p,
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    )?;
    let _one = health.writing.lock().await;
    let mut checks = lock(&health.checks).clone();
    if checks.contains_key(&check.name) {
        return Err(MethodError::invalid_params(format!(
            "a check named {:?} already exists",
            check.name
        ))
        .hint(format!(
            "pick another name, or `koi health remove {}` first to replace it",
            check.name
        )));
    }
    if checks.len() >= MAX_CHECKS {
        return Err(MethodError::invalid_params(format!(
            "there are already {MAX_CHECKS} checks, the most one machine keeps"
        ))
        .hint("remove checks you no longer need with `koi health remove NAME`"));
    }
    checks.insert(check.name.clone(), check.clone());
    health.save_checks(&ctx, checks).await?;
    let runs = if ctx.mode() == koi_sdk::protocol::handshake::RunMode::Daemon {
        "now, under the daemon (pending until its first run)".to_owned()
    } else {
        "saved; it runs continuously under `koi daemon` (`koi health status` checks it once now)"
            .to_owned()
    };
    Ok(Added { check, runs })
}

/// Params of `remove`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// The check's name.
    pub name: String,
}

/// Result of `remove`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    /// The check removed.
    pub removed: String,
}

/// `remove`.
pub async fn remove(ctx: Context, p: RemoveParams) -> Result<Removed, MethodError> {
    let health = ctx.state::<Health>()?;
    spec::check_name(&p.name)?;
    let _one = health.writing.lock().await;
    let mut checks = lock(&health.checks).clone();
    if checks.remove(&p.name).is_none() {
        return Err(
            MethodError::invalid_params(format!("no check named {:?}", p.name))
                .hint("`koi health status` lists the checks"),
        );
    }
    health.save_checks(&ctx, checks).await?;
    Ok(Removed { removed: p.name })
}

/// Params of `log`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Only this machine or service.
    #[serde(default)]
    pub name: Option<String>,
    /// Only since this time: RFC 3339 (`2026-11-30T10:00:00Z`) or a duration ago (`1h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Only the last N lines.
    #[serde(default)]
    pub last: Option<u32>,
}

/// Result of `log`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LogOut {
    /// The transitions, oldest first.
    pub transitions: Vec<Line>,
    /// The log file.
    pub file: String,
}

/// `log`.
pub async fn log(ctx: Context, p: LogParams) -> Result<LogOut, MethodError> {
    let health = ctx.state::<Health>()?;
    let since = match &p.since {
        None => None,
        Some(t) => Some(
            match humantime::parse_rfc3339_weak(t.trim().trim_end_matches('Z')) {
                Ok(at) => at,
                Err(_) => {
                    let ago = spec::parse_duration("--since", t).map_err(|e| {
                        MethodError::invalid_params(format!("{}; or an RFC 3339 time", e.message()))
                            .hint("for example --since 1h or --since 2026-11-30T10:00:00Z")
                    })?;
                    SystemTime::now()
                        .checked_sub(ago)
                        .unwrap_or(SystemTime::UNIX_EPOCH)
                }
            },
        ),
    };
    let log = health.log.clone();
    let mut lines = ctx
        .blocking("read the health log", move || {
            log.read_all().map_err(|e| {
                MethodError::new(format!("cannot read the health log: {e}"))
                    .hint("check the permissions of $KOI_HOME/health")
            })
        })
        .await?;
    if let Some(name) = &p.name {
        lines.retain(|l| &l.name == name);
    }
    if let Some(since) = since {
        lines.retain(|l| humantime::parse_rfc3339(&l.at).is_ok_and(|t| t >= since));
    }
    if let Some(n) = p.last {
        let n = n as usize;
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    Ok(LogOut {
        transitions: lines,
        file: health.log.path().display().to_string(),
    })
}

/// Result of `watch` (only when it ends by itself).
#[derive(Debug, Serialize, JsonSchema)]
pub struct WatchEnd {
    /// Why the watch ended.
    pub ended: String,
}

/// How often the live view is redrawn without a change (its "heard Ns ago" ages).
pub const VIEW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Transitions the live view lists.
pub const VIEW_RECENT: usize = 10;

fn pad_table(rows: &[Row]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.state.word().to_owned(),
                r.since.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    let head = ["NAME", "STATE", "SINCE", "REASON"].map(str::to_owned);
    let mut widths = head.clone().map(|h| h.len());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    std::iter::once(&head)
        .chain(&cells)
        .map(|row| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}  "));
                }
            }
            line.trim_end().to_owned() + "\n"
        })
        .collect()
}

/// The live view's screen: counts, machines, services, the last transitions.
pub fn screen(health: &Health, recent: &std::collections::VecDeque<Changed>) -> String {
    let (machines, services) = rows(health);
    let count = |s: State| {
        machines
            .iter()
            .chain(&services)
            .filter(|r| r.state == s)
            .count()
    };
    let mut out = format!(
        "koi health — {} up, {} down, {} pending, {} degraded   {}   (Ctrl-C to leave)\n\n",
        count(State::Up),
        count(State::Down),
        count(State::Pending),
        count(State::Degraded),
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    out.push_str(&format!("Machines ({})\n", machines.len()));
    out.push_str(&pad_table(&machines));
    out.push_str(&format!("\nServices ({})\n", services.len()));
    out.push_str(&pad_table(&services));
    out.push_str("\nLast transitions\n");
    for c in recent.iter().rev() {
        out.push_str(&format!(
            "{} | {} | {} → {} | {}\n",
            c.at,
            c.name,
            c.old.word(),
            c.new.word(),
            c.reason
        ));
    }
    out
}

/// `watch`: streams every transition as it happens, until Ctrl-C. At a terminal (no `--json`)
/// the host draws the live view (`$/view`) this sends instead of printing the items.
pub async fn watch(ctx: Context, _: NoParams) -> Result<WatchEnd, MethodError> {
    let health: Arc<Health> = ctx.state::<Health>()?;
    if ctx.mode() != koi_sdk::protocol::handshake::RunMode::Daemon {
        return Err(MethodError::new(
            "there is nothing to watch without the daemon: transitions come from continuous checking",
        )
        .hint("start `koi daemon`, then run `koi health watch` again"));
    }
    let mut rx = health.transitions.subscribe();
    let mut recent = std::collections::VecDeque::with_capacity(VIEW_RECENT);
    let mut redraw = tokio::time::interval(VIEW_EVERY);
    loop {
        tokio::select! {
            () = ctx.cancelled() => return Ok(WatchEnd { ended: "cancelled".into() }),
            _ = redraw.tick() => ctx.view_text(&screen(&health, &recent)),
            next = rx.recv() => match next {
                Ok(change) => {
                    ctx.emit::<Changed>(&change).await;
                    if recent.len() == VIEW_RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(change);
                    ctx.view_text(&screen(&health, &recent));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!("a slow watcher missed {n} transitions (they are in `koi health log`)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Ok(WatchEnd { ended: "the plugin is stopping".into() });
                }
            }
        }
    }
}

/// The dashboard line for `koi status`: counts up, down, pending (and degraded).
pub async fn report(ctx: Context) -> StatusReport {
    let Ok(health) = ctx.state::<Health>() else {
        return StatusReport {
            state: HealthState::Failed,
            summary: "state unavailable".into(),
            details: Default::default(),
        };
    };
    let view = snapshot(&ctx, &health).await;
    let (machines, services) = (&view.machines, &view.services);
    let count = |s: State| {
        machines
            .iter()
            .chain(services)
            .filter(|r| r.state == s)
            .count()
    };
    let (up, down, pending, degraded) = (
        count(State::Up),
        count(State::Down),
        count(State::Pending),
        count(State::Degraded),
    );
    let mut summary = format!("{up} up, {down} down, {pending} pending");
    if degraded > 0 {
        summary.push_str(&format!(", {degraded} degraded"));
    }
    summary.push_str(&format!(
        " ({} machines, {} checks)",
        machines.len(),
        services.len()
    ));
    let state = if health.file.is_err() {
        HealthState::Failed
    } else if machines.is_empty() && services.is_empty() {
        HealthState::Inactive
    } else {
        HealthState::Ok
    };
    // The details carry the whole view, so `koi health status` (the host's verb for this
    // method) shows every machine and service; `koi health state --json` has the same, typed.
    let mut details = match serde_json::to_value(&view) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    for (k, v) in [
        ("up", up),
        ("down", down),
        ("pending", pending),
        ("degraded", degraded),
    ] {
        details.insert(k.into(), v.into());
    }
    StatusReport {
        state,
        summary,
        details,
    }
}

#[cfg(test)]
mod tests {
    /// The SDK declares `schema_for!(StatusOut)` as `state`'s result, and the host checks every
    /// answer against it: `notes` is left out when empty, so the schema must not require it.
    #[test]
    fn notes_are_not_required_by_the_declared_schema() {
        let schema = schemars::schema_for!(super::StatusOut).to_value();
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        assert!(!required.iter().any(|r| r == "notes"), "{schema:#}");
        assert!(required.iter().any(|r| r == "machines"), "{schema:#}");
    }
}
