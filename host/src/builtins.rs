//! The built-in commands that are not about one plugin: `status`, `version`, `plugins list` and
//! `completions`. (`help` lives with the command tree in `app`.)

use crate::app::{EXIT_METHOD_FAILED, EXIT_OK, EXIT_PLUGIN_FAILED, EXIT_USAGE, Globals};
use crate::catalog::PluginInfo;
use crate::discovery::Shadow;
use crate::paths::KoiHome;
use crate::render::{self, Style};
use crate::session::Session;
use koi_protocol::calls::{HealthState, StatusReport};
use koi_protocol::{PROTOCOL_VERSION, codes};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::Arc;

fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", crate::sanitize::json(value));
}

fn print_text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
}

/// `koi status`: every plugin's `status`, concurrently; failures are shown, never hidden.
pub async fn status(session: Arc<Session>, infos: &[PluginInfo], globals: &Globals) -> u8 {
    let mut tasks = tokio::task::JoinSet::new();
    for info in infos {
        let session = session.clone();
        let moniker = info.candidate.moniker.clone();
        let path = info.candidate.path.display().to_string();
        tasks.spawn(async move {
            let outcome = match session.start_private(&moniker).await {
                Ok(connection) => {
                    let version = connection.manifest().version.clone();
                    let report = connection
                        .call(koi_protocol::calls::STATUS, Value::Null)
                        .await;
                    connection.shutdown().await;
                    report.map(|r| (version, r))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok((version, report)) => {
                    let report: StatusReport =
                        serde_json::from_value(report).unwrap_or(StatusReport {
                            state: HealthState::Failed,
                            summary: "unreadable status".into(),
                            details: Default::default(),
                        });
                    json!({"name": moniker, "path": path, "version": version, "state": report.state,
                           "summary": report.summary, "details": report.details})
                }
                Err(e) => json!({"name": moniker, "path": path, "version": null, "state": "failed",
                                 "summary": e.message, "error": e}),
            }
        });
    }
    let mut rows = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(row) = joined {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    render_status(
        &json!({"koi": {"version": env!("CARGO_PKG_VERSION")}, "plugins": rows}),
        globals,
    )
}

/// `koi status` answered by a running `koi daemon` (live state, restarts, event counters).
pub async fn status_from_daemon(daemon: &crate::peer::Peer, globals: &Globals) -> u8 {
    match daemon
        .request(crate::daemon::control::methods::STATUS, Value::Null)
        .await
    {
        Ok(report) => render_status(&report, globals),
        Err(e) => {
            eprintln!(
                "error: koi daemon did not answer `status`: {}",
                crate::sanitize::line(&e.message)
            );
            EXIT_PLUGIN_FAILED
        }
    }
}

/// Prints a status report (one-shot or from the daemon) and returns the exit code.
fn render_status(report: &Value, globals: &Globals) -> u8 {
    let empty = Vec::new();
    let rows = report["plugins"].as_array().unwrap_or(&empty);
    let any_failed = rows.iter().any(|r| r["state"] == "failed");
    if globals.json {
        print_json(report);
    } else {
        let style = Style::new(globals.color);
        let mut text = format!(
            "{} {} — {} plugin(s)",
            style.bold("koi"),
            env!("CARGO_PKG_VERSION"),
            rows.len()
        );
        match report.get("daemon") {
            Some(d) => text.push_str(&format!(
                ", koi daemon pid {} up {} s\n",
                d["pid"], d["uptime_secs"]
            )),
            None => {
                text.push_str(" (no daemon running: each plugin was started for this command)\n")
            }
        }
        if rows.is_empty() {
            text.push_str("  No plugins found. `koi plugins list` shows where koi looks for koi-<name> executables.\n");
        }
        let width = rows
            .iter()
            .filter_map(|r| r["name"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(0);
        for row in rows {
            let state = row["state"].as_str().unwrap_or("failed");
            let (mark, painted) = match state {
                "ok" => ("●", style.green(&format!("{state:<8}"))),
                "degraded" => ("◐", style.yellow(&format!("{state:<8}"))),
                "inactive" => ("○", style.dim(&format!("{state:<8}"))),
                _ => ("✗", style.red(&format!("{state:<8}"))),
            };
            let name = crate::sanitize::line(row["name"].as_str().unwrap_or("?"));
            text.push_str(&format!(
                "  {mark} {name:<width$}  {painted} {}\n",
                crate::sanitize::line(row["summary"].as_str().unwrap_or(""))
            ));
            let restarts = row["supervision"]["restarts"].as_u64().unwrap_or(0);
            if restarts > 0 {
                let last = crate::sanitize::line(
                    row["supervision"]["last_failure"]["reason"]
                        .as_str()
                        .unwrap_or(""),
                );
                text.push_str(&format!(
                    "      {}\n",
                    style.yellow(&format!(
                        "restarted {restarts} time(s); last failure: {last}"
                    ))
                ));
            }
            if globals.verbosity > 0 {
                if let Some(details) = row
                    .get("details")
                    .filter(|d| d.as_object().is_some_and(|m| !m.is_empty()))
                {
                    for line in render::value(style, details).lines() {
                        text.push_str(&format!("      {line}\n"));
                    }
                }
            }
        }
        if let Some(events) = report["daemon"]["events"].as_array() {
            for e in events
                .iter()
                .filter(|e| e["dropped"].as_u64().unwrap_or(0) > 0)
            {
                text.push_str(&format!(
                    "  {} {} dropped {} event(s): it reads them too slowly\n",
                    style.yellow("warning:"),
                    e["subscriber"].as_str().unwrap_or("?"),
                    e["dropped"]
                ));
            }
        }
        print_text(&text);
    }
    if any_failed {
        EXIT_METHOD_FAILED
    } else {
        EXIT_OK
    }
}

/// `koi version`.
pub fn version(infos: &[PluginInfo], globals: &Globals) -> u8 {
    let plugins: Vec<Value> = infos
        .iter()
        .map(|info| match &info.manifest {
            Some(Ok((manifest, protocol))) => json!({"name": manifest.name, "version": manifest.version,
                "protocol": protocol.to_string(), "path": info.candidate.path}),
            Some(Err(e)) => json!({"name": info.candidate.moniker, "version": null, "protocol": null,
                "path": info.candidate.path, "error": e.message}),
            None => json!({"name": info.candidate.moniker, "version": null, "protocol": null, "path": info.candidate.path}),
        })
        .collect();
    let report = json!({
        "koi": {"version": env!("CARGO_PKG_VERSION"), "git_hash": env!("KOI_GIT_HASH"), "protocol": PROTOCOL_VERSION.to_string()},
        "plugins": plugins,
    });
    if globals.json {
        print_json(&report);
    } else {
        let mut text = format!(
            "koi {} (git {}), plugin protocol {PROTOCOL_VERSION}\n",
            env!("CARGO_PKG_VERSION"),
            env!("KOI_GIT_HASH")
        );
        for p in &plugins {
            let name = crate::sanitize::line(p["name"].as_str().unwrap_or("?"));
            match p["version"].as_str() {
                Some(v) => text.push_str(&format!(
                    "  koi-{name} {} (protocol {})\n",
                    crate::sanitize::line(v),
                    p["protocol"].as_str().unwrap_or("?")
                )),
                None => text.push_str(&format!(
                    "  koi-{name} (unknown: {})\n",
                    crate::sanitize::line(p["error"].as_str().unwrap_or("not inspected"))
                )),
            }
        }
        print_text(&text);
    }
    EXIT_OK
}

/// `koi plugins list`: every candidate found, kubectl-style warnings for the ones not used.
pub async fn plugins_list(session: Arc<Session>, home: &KoiHome, globals: &Globals) -> u8 {
    let infos = crate::catalog::inspect_all(&session, home).await;
    let mut rows: Vec<Value> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    for candidate in session.discovery.candidates() {
        let path = candidate.path.display().to_string();
        let mut row = json!({"name": candidate.moniker, "path": path, "source": candidate.source,
                             "version": null, "protocol": null});
        let (state, detail) = if let Some(shadow) = &candidate.shadowed_by {
            let detail = match shadow {
                Shadow::Builtin => format!(
                    "`koi {}` is a built-in command, so {path} is never used",
                    candidate.moniker
                ),
                Shadow::Plugin(winner) => format!(
                    "{path} is overshadowed by a similarly named plugin: {}",
                    winner.display()
                ),
            };
            ("shadowed", detail)
        } else if !candidate.executable {
            (
                "not_executable",
                format!(
                    "{path} is named like a koi plugin but is not executable; run `chmod +x {path}` to use it"
                ),
            )
        } else {
            match infos
                .iter()
                .find(|i| i.candidate.path == candidate.path)
                .and_then(|i| i.manifest.clone())
            {
                Some(Ok((manifest, protocol))) => {
                    row["version"] = json!(manifest.version);
                    row["protocol"] = json!(protocol.to_string());
                    ("ok", manifest.summary.clone())
                }
                Some(Err(e)) if e.code == codes::PROTOCOL_MISMATCH => {
                    row["protocol"] = e
                        .data
                        .as_ref()
                        .and_then(|d| d.get("plugin_protocol"))
                        .map_or(Value::Null, |v| {
                            json!(format!("{}.{}", v["major"], v["minor"]))
                        });
                    ("incompatible", sentences(&e))
                }
                Some(Err(e)) => ("failing", sentences(&e)),
                None => ("failing", "not inspected".to_owned()),
            }
        };
        if state != "ok" {
            warnings.push(format!("{state}: {detail}"));
        }
        row["state"] = json!(state);
        row["detail"] = json!(detail);
        rows.push(row);
    }
    if globals.json {
        print_json(
            &json!({"protocol": PROTOCOL_VERSION.to_string(), "plugins": rows, "warnings": warnings}),
        );
    } else {
        let style = Style::new(globals.color);
        if rows.is_empty() {
            print_text(
                "No koi-<name> plugins found in KOI_PLUGIN_PATH, $KOI_HOME/plugins, koi's own directory or PATH.\n",
            );
        } else {
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    ["name", "version", "protocol", "state", "path"]
                        .iter()
                        .map(|k| render::scalar(&r[*k]))
                        .collect()
                })
                .collect();
            let columns: Vec<String> = ["Name", "Version", "Protocol", "State", "Path"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let mut text = render::table(style, &columns, &table_rows);
            for w in &warnings {
                let w = crate::sanitize::line(w);
                text.push_str(&format!("{} {w}\n", style.yellow("warning:")));
            }
            print_text(&text);
        }
    }
    if rows
        .iter()
        .any(|r| r["state"] == "failing" || r["state"] == "incompatible")
    {
        EXIT_PLUGIN_FAILED
    } else {
        EXIT_OK
    }
}

/// An error as the sentences a warning line shows: the message ended by a full stop, then the
/// hint (`ErrorObject`'s `Display` joins them with a bare space).
fn sentences(e: &koi_protocol::ErrorObject) -> String {
    let message = e.message.trim_end_matches('.');
    match e.hint() {
        Some(hint) => format!("{message}. {hint}"),
        None => format!("{message}."),
    }
}

/// `koi completions <shell>`: generated from the command tree built from cached manifests only.
pub fn completions(mut root: clap::Command, matches: &clap::ArgMatches) -> u8 {
    let Some(shell) = matches
        .get_one::<String>("shell")
        .and_then(|s| s.parse::<clap_complete::Shell>().ok())
    else {
        return EXIT_USAGE;
    };
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut root, "koi", &mut out);
    EXIT_OK
}
