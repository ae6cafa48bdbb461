//! The snapshot-subscribe-resync example of docs/plugins.md ("Ordered events"), copied verbatim
//! between the markers so that it keeps compiling against the SDK and koi-mdns-api: a subscriber
//! of `mdns.service.*` that resyncs with koi-mdns's `query` on every gap.

// --- docs/plugins.md, "Ordered events" (begin) ---
use std::collections::BTreeMap;
use std::sync::Arc;

use koi_mdns_api::{ALL_SERVICE_EVENTS, REMOVED, ServiceEventPayload, ServiceRecord};
use koi_sdk::{Context, Delivery, Plugin};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

/// The services this plugin knows, by full name. An async lock: a resync holds it across the
/// `query` call, so no event is applied between the snapshot and its replacing the map.
type Services = Arc<Mutex<BTreeMap<String, ServiceRecord>>>;

/// The result of `mdns.query`.
#[derive(Deserialize)]
struct Snapshot {
    services: Vec<ServiceRecord>,
}

/// Replaces what we know with koi-mdns's cache.
async fn resync(ctx: &Context, known: &Services) {
    let mut map = known.lock().await;
    match ctx
        .call::<_, Snapshot>("mdns", "query", &json!({"service_type": "_http._tcp"}))
        .await
    {
        Ok(snapshot) => {
            *map = snapshot
                .services
                .into_iter()
                .map(|s| (s.fullname.clone(), s))
                .collect();
        }
        Err(e) => tracing::warn!("cannot read koi-mdns's services: {}", e.message()),
    }
}

fn plugin() -> Plugin {
    let known = Services::default();
    let (on_event, at_start) = (known.clone(), known);
    Plugin::new(
        "watcher",
        env!("CARGO_PKG_VERSION"),
        "Keeps a list of web servers",
    )
    // Subscribe first (the manifest does it at the handshake), then take the snapshot: an
    // event that overlaps it is applied again, which changes nothing.
    .on(
        ALL_SERVICE_EVENTS,
        move |ctx: Context, d: Delivery<ServiceEventPayload>| {
            let known = on_event.clone();
            async move {
                match d {
                    Delivery::Event(e) if e.payload.service.service_type != "_http._tcp" => {}
                    Delivery::Event(e) => {
                        let mut map = known.lock().await;
                        let service = e.payload.service;
                        if e.topic == REMOVED {
                            map.remove(&service.fullname);
                        } else {
                            // appeared, or changed (whose payload also carries `service`)
                            map.insert(service.fullname.clone(), service);
                        }
                    }
                    Delivery::Gap(_) => resync(&ctx, &known).await,
                }
            }
        },
    )
    .background(move |ctx: Context| {
        let known = at_start.clone();
        async move { resync(&ctx, &known).await }
    })
}
// --- docs/plugins.md, "Ordered events" (end) ---

#[test]
fn the_documented_subscriber_declares_its_subscription() {
    let plugin = plugin();
    plugin.check().expect("a valid declaration");
    assert_eq!(plugin.manifest().subscribes, ["mdns.service.*"]);
}

#[test]
fn the_example_in_the_docs_is_the_one_compiled_here() {
    let docs = include_str!("../../docs/plugins.md");
    let here = include_str!("ordered_events_doc.rs");
    let begin = "// --- docs/plugins.md, \"Ordered events\" (begin) ---\n";
    let end = "// --- docs/plugins.md, \"Ordered events\" (end) ---";
    let start = here
        .find(begin)
        .map(|i| i + begin.len())
        .expect("begin marker");
    let stop = here.find(end).expect("end marker");
    assert!(
        docs.contains(&here[start..stop]),
        "docs/plugins.md's example differs from this file"
    );
}
