//! koi-health: what is up and down on the LAN right now, from signals Koi already has — mDNS
//! announcements and goodbyes, certmesh's roster, certificate expiry and heartbeats — plus HTTP
//! and TCP service checks with fail/recover thresholds. Health in the present tense: no time
//! series, no graphs, no alerting. The blueprint, with the rule that combines signals and the
//! invariants with their tests, is `docs/health.md`.
//!
//! # Methods
//! | Method | CLI | What it does |
//! |---|---|---|
//! | (`status` protocol) | `koi health status`, `koi status` | counts up, down, pending; details: machines and services with state, since, reason, signals (one-shot: runs each check once) |
//! | `state` | `koi health state` | the same view with a declared schema |
//! | `watch` | `koi health watch [--json]` | streams transitions as they happen, until Ctrl-C (daemon) |
//! | `add` | `koi health add NAME --http URL \| --tcp HOST:PORT [--expect] [--interval] [--timeout] [--fail-after] [--recover-after] [--allow-remote]` | store a check |
//! | `remove` | `koi health remove NAME` | delete a check |
//! | `log` | `koi health log [--name N] [--since T] [--last N]` | the transition log |
//!
//! Event published: `health.changed` ([`book::Changed`]). Subscribed: `mdns.service.*`,
//! `mdns.host.seen`, `certmesh.heartbeat`, `certmesh.members.changed`, `certmesh.cert.renewed`.
//! Daemon services: `checks` (runs the checks) and `machines` (applies the machine rule).
//!
//! # Modules
//! - [`spec`] — what a check is, and the input rules of `add`.
//! - [`tracker`] — states, thresholds and the machine rule (pure).
//! - [`book`] — the plugin's state, the checks file, and recording transitions.
//! - [`translog`] — the append-only transition log and its rotation.
//! - [`probe`] — HTTP(S) and TCP checks.
//! - [`runner`] — scheduling checks with jitter (daemon) or once (one-shot).
//! - [`machines`] — machine health from events.
//! - [`verbs`] — the methods and the `koi status` line.

#![forbid(unsafe_code)]

pub mod book;
pub mod machines;
pub mod probe;
pub mod runner;
pub mod spec;
pub mod tracker;
pub mod translog;
pub mod verbs;

use koi_sdk::{Method, Plugin};
use std::time::Duration;

/// The koi-health plugin: every method, event and service.
pub fn plugin() -> Plugin {
    // `status` is the protocol's (reserved): `koi health status` is the host's verb for it, and
    // its details carry the same view as `state`, which has a declared result schema.
    let status = Method::new(
        "state",
        "Machines and services: state, since when, why, and the signals behind it",
        verbs::state,
    )
    .description(
        "Under `koi daemon` this is the daemon's current view (nothing is re-run). Without the \
         daemon each check runs once and machine health is not available.",
    )
    .timeout(Duration::from_secs(120))
    .example("koi health state")
    .example("koi health state --json");

    let watch = Method::new(
        "watch",
        "Follow transitions as they happen, until Ctrl-C",
        verbs::watch,
    )
    .description("One line per change (`--json`: NDJSON, one `health.changed` payload per line).")
    .long_running()
    .handles_cancellation()
    .streams::<book::Changed>()
    .example("koi health watch")
    .example("koi health watch --json");

    let add = Method::new("add", "Add an HTTP or TCP service check", verbs::add)
        .description(
            "Checks are for the LAN: a public address needs --allow-remote. The timeout is always \
             below the interval. A new check is pending until its first run.",
        )
        .positional(["name"])
        .mutating()
        .local_only()
        .example("koi health add grafana --http https://grafana.lan/ --expect 2xx --interval 30s --timeout 5s")
        .example("koi health add nas-ssh --tcp nas.lan:22 --fail-after 3 --recover-after 2");

    let remove = Method::new("remove", "Remove a service check", verbs::remove)
        .positional(["name"])
        .mutating()
        .local_only()
        .example("koi health remove grafana");

    let log = Method::new("log", "The transition log", verbs::log)
        .example("koi health log --name grafana --last 20")
        .example("koi health log --since 1h");

    Plugin::new(
        "health",
        env!("CARGO_PKG_VERSION"),
        "What is up and down on the LAN right now",
    )
    .description(
        "Machine health from mDNS and certmesh signals (no probing), plus HTTP/TCP service checks \
         with fail/recover thresholds; only changes are logged. See docs/health.md.",
    )
    .method(status)
    .method(watch)
    .method(add)
    .method(remove)
    .method(log)
    .publishes::<book::Changed>(book::CHANGED, "A machine or service changed state")
    .on(koi_mdns_api::ALL_SERVICE_EVENTS, machines::on_mdns)
    .on(koi_mdns_api::HOST_SEEN, machines::on_host_seen)
    .on("certmesh.heartbeat", machines::on_heartbeat)
    .on("certmesh.members.changed", machines::on_roster)
    .on("certmesh.cert.renewed", machines::on_roster)
    .state(book::Health::load)
    .status(verbs::report)
    .service("checks", runner::service)
    .service("machines", machines::service)
    .shutdown_grace(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declaration_is_valid() {
        assert_eq!(super::plugin().check(), Ok(()));
    }
}
