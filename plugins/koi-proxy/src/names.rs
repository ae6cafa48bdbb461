//! What certmesh is asked: the zone for `NAME.<zone>` (`certmesh/members`, its `zone_hint`) and
//! the entries' host names on this machine's certificate (`certmesh/request-names`). Both are
//! best effort: when certmesh is not installed or does not have the method yet, the proxy keeps
//! working, says so in `status`, and asks again later.

use crate::config::{DEFAULT_ZONE, Entry};
use crate::state::{Proxy, lock};
use koi_sdk::Context;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Members {
    #[serde(default)]
    zone_hint: Vec<String>,
}

/// The zone for new entries: certmesh's first `zone_hint`, else `lan`.
pub async fn zone(ctx: &Context) -> String {
    match ctx
        .call::<_, Members>("certmesh", "members", &json!({}))
        .await
    {
        Ok(m) => m
            .zone_hint
            .into_iter()
            .find_map(|z| crate::config::check_host(&z).ok())
            .unwrap_or_else(|| DEFAULT_ZONE.to_owned()),
        Err(e) => {
            tracing::info!(
                "no zone from certmesh ({}); using .{DEFAULT_ZONE}",
                e.message()
            );
            DEFAULT_ZONE.to_owned()
        }
    }
}

#[derive(Deserialize)]
struct Refused {
    name: String,
    reason: String,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    accepted: Vec<String>,
    #[serde(default)]
    already: Vec<String>,
    #[serde(default)]
    refused: Vec<Refused>,
    #[serde(default)]
    effective: String,
}

/// Asks certmesh to add the entries' host names to their certificates; records each answer in
/// `proxy.names`. Returns whether every request got an answer.
pub async fn request(ctx: &Context, proxy: &Proxy, entries: &[Entry]) -> bool {
    let mut by_cert: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for e in entries {
        by_cert
            .entry(e.cert_host.clone())
            .or_default()
            .push(e.host.clone());
    }
    let mut all = true;
    for (cert_host, hosts) in by_cert {
        let mut params = json!({ "names": hosts, "requester": "proxy" });
        if let Some(h) = &cert_host {
            params["host"] = json!(h);
        }
        let answer = ctx
            .call::<_, Answer>("certmesh", "request-names", &params)
            .await;
        let mut names = lock(&proxy.names);
        // Only the names asked for are recorded (an answer cannot grow the map), and certmesh's
        // text is cut to a line of printable characters.
        let mut record = |name: String, text: String| {
            if hosts.contains(&name) {
                let clean: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
                names.insert(name, clean);
            }
        };
        match answer {
            Ok(a) => {
                for n in a.accepted {
                    record(n, format!("requested from certmesh: {}", a.effective));
                }
                for n in a.already {
                    record(n, "certmesh has it for this certificate".to_owned());
                }
                for r in a.refused {
                    record(r.name, format!("refused by certmesh: {}", r.reason));
                }
            }
            Err(e) => {
                all = false;
                // Logged once at info; the retries every 5 minutes at debug.
                if proxy
                    .certmesh_silent
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::debug!("certmesh still does not answer: {}", e.message());
                } else {
                    tracing::info!(
                        "cannot ask certmesh for {hosts:?} yet ({}); asking again every 5 minutes",
                        e.message()
                    );
                }
                for h in hosts.clone() {
                    record(
                        h,
                        format!(
                            "not requested yet: certmesh did not answer ({}); retried every 5 \
                             minutes",
                            e.message()
                        ),
                    );
                }
            }
        }
    }
    all
}
