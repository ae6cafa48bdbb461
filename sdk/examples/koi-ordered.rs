//! koi-ordered: a test plugin for ordered event subscriptions (tests/tests/e2e/ordered_events.rs
//! drives it over raw stdio, playing the host). It subscribes to `svc.*` with a queue large enough
//! for the tests' bursts, and to `slow.*` with a queue of 8 and a handler that takes a few
//! milliseconds per event. Each subscription keeps the services it believes exist (key → the seq
//! of the event that made it appear), checks that events arrive in publication order, resyncs from
//! the publisher (`pub.truth`) on every gap, and `observed` reports what each one saw.

use koi_sdk::{Context, Delivery, Method, MethodError, NoParams, Plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The test payload: service `key` appeared or was removed, in the publisher's `seq`-th event.
#[derive(Debug, Deserialize, JsonSchema)]
struct Svc {
    /// The service.
    key: u32,
    /// The publisher's sequence number.
    seq: u64,
}

/// One gap as the handler received it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
struct GapSeen {
    /// How many events were lost.
    missed: u64,
    /// Their topic, when known.
    topic: Option<String>,
}

/// What one subscription saw.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
struct View {
    /// Events applied.
    events: u64,
    /// Events whose seq was not above the previous one's.
    out_of_order: u64,
    /// The seq of the last event applied.
    last_seq: u64,
    /// Gaps, in order.
    gaps: Vec<GapSeen>,
    /// Resyncs that failed.
    resync_errors: u64,
    /// Service key → the seq of the event that made it appear.
    services: BTreeMap<String, u64>,
}

/// The publisher's answer to `pub.truth`.
#[derive(Debug, Deserialize)]
struct Truth {
    services: BTreeMap<String, u64>,
}

/// Result of `observed`.
#[derive(Debug, Serialize, JsonSchema)]
struct Observed {
    /// The `svc.*` subscription.
    svc: View,
    /// The `slow.*` subscription.
    slow: View,
}

type Shared = Arc<Mutex<View>>;

fn view(shared: &Shared) -> std::sync::MutexGuard<'_, View> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies one delivery to `shared`; on a gap, asks the publisher for `stream`'s current state.
async fn handle(stream: &str, shared: Shared, ctx: Context, delivery: Delivery<Svc>) {
    match delivery {
        Delivery::Event(event) => {
            let mut v = view(&shared);
            if event.payload.seq <= v.last_seq {
                v.out_of_order += 1;
            }
            v.last_seq = event.payload.seq;
            v.events += 1;
            let key = event.payload.key.to_string();
            if event.topic.ends_with(".removed") {
                v.services.remove(&key);
            } else {
                v.services.insert(key, event.payload.seq);
            }
        }
        Delivery::Gap(gap) => {
            view(&shared).gaps.push(GapSeen {
                missed: gap.missed,
                topic: gap.topic,
            });
            match ctx
                .call::<_, Truth>("pub", "truth", &json!({"stream": stream}))
                .await
            {
                Ok(truth) => view(&shared).services = truth.services,
                Err(_) => view(&shared).resync_errors += 1,
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let svc = Shared::default();
    let slow = Shared::default();
    let (svc_on, slow_on) = (svc.clone(), slow.clone());
    let observed = Method::new(
        "observed",
        "What each subscription saw",
        move |_ctx: Context, _p: NoParams| {
            let (svc, slow) = (svc.clone(), slow.clone());
            async move {
                Ok::<_, MethodError>(Observed {
                    svc: view(&svc).clone(),
                    slow: view(&slow).clone(),
                })
            }
        },
    )
    .not_on_cli();
    Plugin::new(
        "ordered",
        env!("CARGO_PKG_VERSION"),
        "Test plugin: ordered event subscriptions",
    )
    .method(observed)
    .on_with_capacity("svc.*", 65_536, move |ctx, d| {
        handle("svc", svc_on.clone(), ctx, d)
    })
    .on_with_capacity("slow.*", 8, move |ctx, d| {
        let shared = slow_on.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            handle("slow", shared, ctx, d).await;
        }
    })
    .run()
}
