//! `koi dns status` (the protocol's `status`): listeners, zone, upstreams, counters (queries,
//! local answers, forwarded, NXDOMAIN, REFUSED, rate-limited, p50 and p99 latency), and how each
//! source is doing.

use crate::state::{Dns, lock};
use crate::stats;
use koi_sdk::Context;
use koi_sdk::protocol::calls::{HealthState, StatusReport};
use serde_json::{Map, json};

/// The status handler.
pub async fn report(ctx: Context) -> StatusReport {
    let Ok(dns) = ctx.state::<Dns>() else {
        return StatusReport {
            state: HealthState::Ok,
            summary: "starting".into(),
            details: Map::new(),
        };
    };
    let mut details = Map::new();
    let snap = dns.shared.snapshot.load();
    let (summary, serving) = {
        let server = dns.server.lock().await;
        match server.as_ref() {
            Some(r) => {
                let c = &r.config;
                let counters = stats::summarize(r.counters.iter().map(|c| &**c));
                details.insert("serving".into(), json!(true));
                details.insert(
                    "listeners".into(),
                    json!(c.listen.iter().map(ToString::to_string).collect::<Vec<_>>()),
                );
                details.insert("zone".into(), json!(c.zone_text));
                details.insert(
                    "upstreams".into(),
                    json!(
                        c.upstreams
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                    ),
                );
                details.insert("upstreams_from".into(), json!(c.upstreams_from));
                let exempt: Vec<String> = c.exempt.iter().map(ToString::to_string).collect();
                let limit = json!({"qps": c.rate, "burst": c.burst, "exempt": exempt});
                details.insert("rate_limit".into(), limit);
                details.insert(
                    "allow".into(),
                    json!(c.allow.iter().map(ToString::to_string).collect::<Vec<_>>()),
                );
                details.insert("counters".into(), json!(counters));
                (
                    format!(
                        "serving {} on {} address(es), {} names",
                        c.zone_text,
                        c.listen.len(),
                        snap.hosts.len()
                    ),
                    true,
                )
            }
            None => match crate::verbs::foreground(&dns) {
                Some(f) => {
                    let listeners: Vec<String> =
                        f.listeners.iter().map(ToString::to_string).collect();
                    let summary = format!(
                        "a foreground `koi dns serve` (pid {}) serves on {}",
                        f.pid,
                        listeners.join(", ")
                    );
                    details.insert(
                        "foreground".into(),
                        json!({"pid": f.pid, "listeners": listeners}),
                    );
                    (summary, false)
                }
                None => ("not serving (start with `koi dns serve`)".to_owned(), false),
            },
        }
    };
    if !serving {
        details.insert("serving".into(), json!(false));
    }
    details.insert("names".into(), json!(snap.hosts.len()));
    details.insert("static_entries".into(), json!(lock(&dns.statics).len()));
    if let Some(p) = &dns.static_problem {
        details.insert("static_problem".into(), json!(p));
    }
    {
        let mesh = lock(&dns.mesh);
        let certmesh = json!({
            "members": mesh.members.len(),
            "roster_version": mesh.roster_version,
            "note": mesh.note,
        });
        details.insert("certmesh".into(), certmesh);
    }
    details.insert("mdns_services".into(), json!(lock(&dns.services).len()));
    details.insert(
        "aliases".into(),
        json!(lock(&dns.aliases).keys().collect::<Vec<_>>()),
    );
    let san = lock(&dns.san_note).clone();
    if !san.is_empty() {
        details.insert("san_requests".into(), json!(san));
    }
    StatusReport {
        state: HealthState::Ok,
        summary,
        details,
    }
}
