//! Unit tests of ordered subscriptions: deliveries go through the same `Router::route_params` the
//! protocol loop calls, as the JSON the host sends, and a publisher's "truth" is kept beside them
//! so that each test can check the subscriber ends with the right state.

use super::*;
use crate::runtime::detached_context;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The test payload: service `key` appeared or was removed, the `seq`-th event published.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Svc {
    key: u32,
    seq: u64,
}

/// Service key → the seq of the event that last made it appear.
type Services = BTreeMap<u32, u64>;

fn apply(state: &mut Services, topic: &str, svc: &Svc) {
    if topic.ends_with("appeared") {
        state.insert(svc.key, svc.seq);
    } else {
        state.remove(&svc.key);
    }
}

/// The wire form of one event, as the host sends it in an `event` notification.
fn wire(topic: &str, key: u32, seq: u64) -> Value {
    json!({"topic": topic, "source": "pub", "payload": {"key": key, "seq": seq}})
}

/// What a handler saw, in order: `Ok(seq)` for an event, `Err(gap)` for a gap.
type Seen = Arc<Mutex<Vec<Result<u64, Gap>>>>;

fn seen_len(seen: &Seen) -> usize {
    lock(seen).len()
}

/// Waits (at most 30 s, to never hang) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

fn start(sub: Subscription) -> (Router, TaskTracker, CancellationToken) {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let router = Router::start(&[sub], &detached_context(cancel.clone()), &tracker);
    (router, tracker, cancel)
}

async fn stop(router: Router, tracker: TaskTracker, cancel: CancellationToken) {
    drop(router);
    cancel.cancel();
    tracker.close();
    until("every handler task ended", || tracker.is_empty()).await;
}

/// A subscription whose handler gets its own clone of `shared` with each delivery, so that a test
/// names the handles it shares once instead of cloning them for the closure and again per call.
fn subscription<S, Fut>(
    pattern: &str,
    capacity: usize,
    shared: S,
    handler: impl Fn(S, Context, Delivery<Svc>) -> Fut + Send + Sync + 'static,
) -> Subscription
where
    S: Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Subscription::new(pattern, capacity, move |ctx, d| {
        handler(shared.clone(), ctx, d)
    })
}

/// 10,000 `appeared`/`removed` pairs for the same 64 keys, from one publisher, reach the handler
/// in publication order (the handler awaits between deliveries, as one that calls the host does),
/// and the subscriber's state equals the publisher's. With a task per event, as before, later
/// events overtake earlier ones and a `removed` is applied before its `appeared`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_appeared_removed_pairs_arrive_in_order_and_the_final_state_matches() {
    let seen: Seen = Arc::default();
    let state: Arc<Mutex<Services>> = Arc::default();
    let shared = (seen.clone(), state.clone());
    let sub = subscription(
        "svc.*",
        DEFAULT_QUEUE_CAPACITY,
        shared,
        |(seen, state), _, d| async move {
            tokio::task::yield_now().await;
            match d {
                Delivery::Event(e) => {
                    apply(&mut lock(&state), &e.topic, &e.payload);
                    lock(&seen).push(Ok(e.payload.seq));
                }
                Delivery::Gap(g) => lock(&seen).push(Err(g)),
            }
        },
    );
    let (router, tracker, cancel) = start(sub);
    let mut truth = Services::new();
    let mut seq = 0u64;
    for batch in 0..10 {
        // 1,000 pairs at a time, well inside the queue: nothing may be dropped here.
        for pair in 0..1000u32 {
            let key = (batch * 1000 + pair) % 64;
            for topic in ["svc.appeared", "svc.removed"] {
                seq += 1;
                apply(&mut truth, topic, &Svc { key, seq });
                router.route_params(wire(topic, key, seq));
            }
        }
        let routed = usize::try_from(seq).unwrap_or(usize::MAX);
        until("the handler caught up", || seen_len(&seen) >= routed).await;
    }
    let seen = lock(&seen).clone();
    let expected: Vec<Result<u64, Gap>> = (1..=seq).map(Ok).collect();
    assert!(seen == expected, "deliveries out of order or lost");
    assert_eq!(*lock(&state), truth);
    stop(router, tracker, cancel).await;
}

/// A handler that falls behind: its queue (16) fills while it is stuck on event 1, events 18 to
/// 100 are dropped, and event 101 is queued once a slot frees. The handler sees events 1 to 17,
/// then a gap of 83 — exactly there, never lost, never early — then 101. On the gap it resyncs from
/// the publisher's truth, as the snapshot-then-subscribe-then-resync pattern says, and ends with the
/// publisher's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_a_gap_where_its_queue_overflowed_resyncs_and_ends_right() {
    let seen: Seen = Arc::default();
    let started: Arc<Mutex<Vec<u64>>> = Arc::default();
    let state: Arc<Mutex<Services>> = Arc::default();
    let truth: Arc<Mutex<Services>> = Arc::default();
    let permits = Arc::new(Semaphore::new(0));
    let shared = (
        seen.clone(),
        started.clone(),
        state.clone(),
        truth.clone(),
        permits.clone(),
    );
    let sub = subscription("svc.*", 16, shared, |shared, _, d| async move {
        let (seen, started, state, truth, permits) = shared;
        if let Delivery::Event(e) = &d {
            lock(&started).push(e.payload.seq);
        }
        if let Ok(permit) = permits.acquire().await {
            permit.forget();
        }
        match d {
            Delivery::Event(e) => {
                apply(&mut lock(&state), &e.topic, &e.payload);
                lock(&seen).push(Ok(e.payload.seq));
            }
            Delivery::Gap(g) => {
                // Resync: read the publisher's state (koi-mdns: call `mdns.query`).
                *lock(&state) = lock(&truth).clone();
                lock(&seen).push(Err(g));
            }
        }
    });
    let (router, tracker, cancel) = start(sub);
    let publish = |seq: u64| {
        let key = u32::try_from(seq % 7).unwrap_or(0);
        let topic = if (seq / 7) % 2 == 0 {
            "svc.appeared"
        } else {
            "svc.removed"
        };
        apply(&mut lock(&truth), topic, &Svc { key, seq });
        router.route_params(wire(topic, key, seq));
    };
    publish(1);
    until("the handler holds event 1", || lock(&started).contains(&1)).await;
    for seq in 2..=100 {
        publish(seq);
    }
    permits.add_permits(1);
    until("the handler holds event 2", || lock(&started).contains(&2)).await;
    publish(101);
    permits.add_permits(1000);
    until("the handler saw event 101", || {
        lock(&seen).last() == Some(&Ok(101))
    })
    .await;

    let mut expected: Vec<Result<u64, Gap>> = (1..=17).map(Ok).collect();
    expected.push(Err(Gap {
        missed: 83,
        topic: None,
    }));
    expected.push(Ok(101));
    assert_eq!(*lock(&seen), expected);
    assert_eq!(*lock(&state), *lock(&truth));
    stop(router, tracker, cancel).await;
}

/// When nothing follows the dropped events, the gap comes on its own once the queue has drained,
/// naming the topic when every lost event had the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_reported_on_its_own_once_the_queue_drains() {
    let seen: Seen = Arc::default();
    let started: Arc<Mutex<Vec<u64>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(0));
    let shared = (seen.clone(), started.clone(), permits.clone());
    let sub = subscription("svc.appeared", 4, shared, |shared, _, d| async move {
        let (seen, started, permits) = shared;
        if let Delivery::Event(e) = &d {
            lock(&started).push(e.payload.seq);
        }
        if let Ok(permit) = permits.acquire().await {
            permit.forget();
        }
        lock(&seen).push(match d {
            Delivery::Event(e) => Ok(e.payload.seq),
            Delivery::Gap(g) => Err(g),
        });
    });
    let (router, tracker, cancel) = start(sub);
    router.route_params(wire("svc.appeared", 1, 1));
    router.route_params(wire("svc.removed", 1, 99)); // not subscribed: never counted
    until("the handler holds event 1", || lock(&started).contains(&1)).await;
    for seq in 2..=10 {
        router.route_params(wire("svc.appeared", 1, seq));
    }
    permits.add_permits(1000);
    until("six deliveries arrived", || seen_len(&seen) >= 6).await;
    let mut expected: Vec<Result<u64, Gap>> = (1..=5).map(Ok).collect();
    expected.push(Err(Gap {
        missed: 5,
        topic: Some("svc.appeared".into()),
    }));
    assert_eq!(*lock(&seen), expected);
    stop(router, tracker, cancel).await;
}

/// Losses the host reports become gaps: `missed` before its event, a gap marker (`gap: true`) on
/// its own. A payload that does not fit the subscriber's type is a gap too (the subscriber's view
/// can no longer be trusted), not a silently skipped event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reported_losses_and_payloads_of_the_wrong_shape_become_gaps() {
    let seen: Seen = Arc::default();
    let sub = subscription(
        "svc.*",
        DEFAULT_QUEUE_CAPACITY,
        seen.clone(),
        |seen, _, d| async move {
            lock(&seen).push(match d {
                Delivery::Event(e) => Ok(e.payload.seq),
                Delivery::Gap(g) => Err(g),
            });
        },
    );
    let (router, tracker, cancel) = start(sub);
    router.route_params(wire("svc.appeared", 1, 1));
    let mut late = wire("svc.appeared", 1, 2);
    late["missed"] = json!(3);
    router.route_params(late);
    router.route_params(
        json!({"topic": "svc.removed", "source": "pub", "payload": null,
        "missed": 2, "gap": true}),
    );
    router.route_params(
        json!({"topic": "svc.changed", "source": "pub", "payload": {"key": "not a number"}}),
    );
    router.route_params(wire("svc.removed", 1, 3));
    until("six deliveries arrived", || seen_len(&seen) >= 6).await;
    let gap = |missed, topic: &str| {
        Err(Gap {
            missed,
            topic: Some(topic.into()),
        })
    };
    assert_eq!(
        *lock(&seen),
        vec![
            Ok(1),
            gap(3, "svc.appeared"),
            Ok(2),
            gap(2, "svc.removed"),
            gap(1, "svc.changed"),
            Ok(3),
        ]
    );
    stop(router, tracker, cancel).await;
}

/// A handler's context is cancelled at shutdown, and shutdown (the tracker) waits for the handler
/// to return; deliveries still queued then are not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_running_handler_and_waits_for_it() {
    let finished: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sub = subscription(
        "svc.*",
        16,
        finished.clone(),
        |finished, ctx, d| async move {
            ctx.cancelled().await;
            if let Delivery::Event(e) = d {
                lock(&finished).push(e.payload.seq);
            }
        },
    );
    let (router, tracker, cancel) = start(sub);
    router.route_params(wire("svc.appeared", 1, 1));
    router.route_params(wire("svc.appeared", 1, 2));
    tokio::task::yield_now().await;
    cancel.cancel();
    tracker.close();
    let waited = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    assert!(
        waited.is_ok(),
        "shutdown did not end the subscription's task"
    );
    let finished = lock(&finished).clone();
    assert!(
        finished.len() <= 1,
        "a queued delivery started after shutdown: {finished:?}"
    );
    drop(router);
}

/// `on` adds its pattern to the manifest's `subscribes` once, however many handlers share it.
#[test]
fn each_pattern_is_declared_once_in_the_manifest() {
    async fn ignore(_ctx: Context, _d: Delivery<serde_json::Value>) {}
    let plugin = crate::Plugin::new("t", "0", "t")
        .on("mdns.service.*", ignore)
        .on("mdns.service.*", ignore)
        .on("host.plugin.restarted", ignore);
    assert_eq!(
        plugin.manifest().subscribes,
        ["mdns.service.*", "host.plugin.restarted"]
    );
}
