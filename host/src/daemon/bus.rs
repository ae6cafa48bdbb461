//! The daemon's event bus. Every subscriber has a bounded queue and its own delivery task: a
//! publish never waits for a subscriber, and an event that finds a subscriber's queue full is
//! dropped and counted for that subscriber (shown in `koi status`) rather than growing memory or
//! delaying the others. Delivery follows the subscriber across restarts.
//!
//! Order: one delivery task per subscriber sends its queue in order, and the connection queues a
//! publisher's events in the order it sent them, so each subscriber sees each publisher's events
//! in publication order. Gaps (feature `event_gaps`): drops are counted per topic, and the next
//! queued delivery of that topic carries `missed = n`; when the queue drains with drops still
//! unreported, a gap marker (`gap: true`, `payload: null`) reports them.

use super::supervisor::Supervised;
use crate::schema::lock;
use koi_protocol::calls::{self, EventDelivery};
use koi_protocol::context::host_events;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Distinct topics whose drops are counted one by one per subscriber. Topics are declared in
/// manifests, so this is never reached in practice; drops of further topics are folded into one
/// count, reported with the next delivery of any topic (or as a gap marker of topic
/// [`ANY_TOPIC`]).
pub const MAX_GAP_TOPICS: usize = 256;
/// The topic of a gap marker for drops folded past [`MAX_GAP_TOPICS`]: resync everything.
pub const ANY_TOPIC: &str = "*";

/// Drops not yet reported to one subscriber.
#[derive(Debug, Default)]
struct Missed {
    /// Per topic: how many, and who published them (`host` when several did).
    topics: HashMap<String, (u64, String)>,
    /// Drops of topics past [`MAX_GAP_TOPICS`].
    overflow: u64,
}

impl Missed {
    fn record(&mut self, topic: &str, source: &str) {
        if let Some((n, who)) = self.topics.get_mut(topic) {
            *n += 1;
            if who != source {
                *who = host_events::SOURCE.to_owned();
            }
        } else if self.topics.len() < MAX_GAP_TOPICS {
            self.topics.insert(topic.to_owned(), (1, source.to_owned()));
        } else {
            self.overflow += 1;
        }
    }

    /// What the next queued delivery of `topic` reports: drops of it, plus any folded ones.
    fn take(&mut self, topic: &str) -> u64 {
        let n = self.topics.remove(topic).map_or(0, |(n, _)| n);
        n + std::mem::take(&mut self.overflow)
    }

    /// Gap markers for everything unreported, emptying the record.
    fn markers(&mut self) -> Vec<EventDelivery> {
        let mut out: Vec<EventDelivery> = self
            .topics
            .drain()
            .map(|(topic, (n, source))| gap_marker(topic, source, n))
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        let overflow = std::mem::take(&mut self.overflow);
        if overflow > 0 {
            out.push(gap_marker(
                ANY_TOPIC.to_owned(),
                host_events::SOURCE.to_owned(),
                overflow,
            ));
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.overflow == 0
    }
}

fn gap_marker(topic: String, source: String, missed: u64) -> EventDelivery {
    EventDelivery {
        missed,
        gap: true,
        ..EventDelivery::new(topic, source, Value::Null)
    }
}

struct Subscriber {
    moniker: String,
    patterns: Mutex<Vec<String>>,
    queue: mpsc::Sender<Value>,
    queued: AtomicU64,
    delivered: Arc<AtomicU64>,
    dropped: AtomicU64,
    /// Whether the subscriber's current process negotiated `event_gaps`.
    gaps: AtomicBool,
    /// Held across the `try_send` of a delivery, so a count is reported exactly once and at its
    /// place in the queue.
    missed: Mutex<Missed>,
}

impl Subscriber {
    fn new(
        moniker: &str,
        patterns: Vec<String>,
        gaps: bool,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel::<Value>(capacity.max(1));
        let subscriber = Subscriber {
            moniker: moniker.to_owned(),
            patterns: Mutex::new(patterns),
            queue: tx,
            queued: AtomicU64::new(0),
            delivered: Arc::new(AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
            gaps: AtomicBool::new(gaps),
            missed: Mutex::new(Missed::default()),
        };
        (subscriber, rx)
    }

    fn wants(&self, topic: &str) -> bool {
        lock(&self.patterns)
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => p == topic,
            })
    }

    /// Queues `delivery` (serialized as `body`) or, if the queue is full, drops and counts it.
    fn offer(&self, delivery: &EventDelivery, body: &Value) -> bool {
        if !self.gaps.load(Ordering::Acquire) {
            return self.queue_or_drop(body.clone());
        }
        let mut missed = lock(&self.missed);
        // Every offer to this subscriber holds `missed`, and the delivery task only frees room,
        // so room seen here is still there for the `try_send` below.
        if self.queue.capacity() == 0 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            missed.record(&delivery.topic, &delivery.source);
            return false;
        }
        let n = missed.take(&delivery.topic);
        let mut body = body.clone();
        if n > 0 {
            body["missed"] = json!(n);
        }
        self.queue_or_drop(body)
    }

    fn queue_or_drop(&self, body: Value) -> bool {
        match self.queue.try_send(body) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Gap markers to send now: drops unreported while the queue is empty (nothing queued will
    /// carry them). Empty for a subscriber without `event_gaps`.
    fn due_markers(&self, queue: &mpsc::Receiver<Value>) -> Vec<Value> {
        let mut missed = lock(&self.missed);
        if missed.is_empty() || !queue.is_empty() {
            return Vec::new();
        }
        let markers = missed.markers();
        if !self.gaps.load(Ordering::Acquire) {
            return Vec::new();
        }
        markers
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .collect()
    }
}

/// Routes published events to subscribers.
#[derive(Default)]
pub struct Bus {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// Registers (or updates the topics of) `target` as a subscriber, with a queue of `capacity`.
    /// `gaps`: whether the target's current process negotiated `event_gaps`.
    pub fn subscribe(
        &self,
        target: &Arc<Supervised>,
        patterns: Vec<String>,
        gaps: bool,
        capacity: usize,
        stop: &CancellationToken,
    ) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(existing) = subscribers.iter().find(|s| s.moniker == target.moniker) {
            *lock(&existing.patterns) = patterns;
            existing.gaps.store(gaps, Ordering::Release);
            return;
        }
        if patterns.is_empty() {
            return;
        }
        let (subscriber, rx) = Subscriber::new(&target.moniker, patterns, gaps, capacity);
        let subscriber = Arc::new(subscriber);
        subscribers.push(subscriber.clone());
        tokio::spawn(deliver_loop(subscriber, rx, target.clone(), stop.clone()));
    }

    /// Queues an event for every subscriber (except the source) whose topics match; returns how
    /// many queued it. A full queue drops the event for that subscriber and counts it (and, with
    /// `event_gaps`, reports it with the subscriber's next delivery of the topic).
    pub fn publish(&self, delivery: &EventDelivery) -> usize {
        let body = serde_json::to_value(delivery).unwrap_or(Value::Null);
        let subscribers: Vec<Arc<Subscriber>> = lock(&self.subscribers).clone();
        let queued = subscribers
            .iter()
            .filter(|s| s.moniker != delivery.source && s.wants(&delivery.topic))
            .filter(|s| s.offer(delivery, &body))
            .count();
        tracing::debug!(topic = %delivery.topic, source = %delivery.source, queued, "event published");
        queued
    }

    /// Per-subscriber counters for `koi status`.
    pub fn stats(&self) -> Value {
        let subscribers = lock(&self.subscribers);
        Value::Array(
            subscribers
                .iter()
                .map(|s| {
                    json!({
                        "subscriber": s.moniker,
                        "topics": *lock(&s.patterns),
                        "queued": s.queued.load(Ordering::Relaxed),
                        "delivered": s.delivered.load(Ordering::Relaxed),
                        "dropped": s.dropped.load(Ordering::Relaxed),
                    })
                })
                .collect(),
        )
    }
}

/// Sends one subscriber's queue, in order, to whichever process of it is running, then (with
/// `event_gaps`) gap markers for drops nothing queued will report.
///
/// Restarts: the queue follows the subscriber, so events queued for a process that died go to its
/// successor, which starts from a fresh snapshot anyway (docs/plugins.md, "Ordered events"). No
/// gap marker is made up for the restart itself; the event that was being written to the dead
/// process is sent again to the new one.
async fn deliver_loop(
    subscriber: Arc<Subscriber>,
    mut rx: mpsc::Receiver<Value>,
    target: Arc<Supervised>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            _ = stop.cancelled() => return,
        };
        if !send(&target, event, &stop).await {
            return;
        }
        subscriber.delivered.fetch_add(1, Ordering::Relaxed);
        for marker in subscriber.due_markers(&rx) {
            if !send(&target, marker, &stop).await {
                return;
            }
        }
    }
}

/// Delivers `event` to the target's running process, waiting for one across restarts; false
/// when the daemon is stopping.
async fn send(target: &Supervised, mut event: Value, stop: &CancellationToken) -> bool {
    loop {
        let connection = tokio::select! {
            c = target.wait_connection(Duration::from_secs(3600)) => c,
            _ = stop.cancelled() => return false,
        };
        let Ok(connection) = connection else { continue };
        if !connection.event_gaps() {
            // A process that did not negotiate `event_gaps` gets neither counts nor markers.
            if event.get("gap").is_some_and(|g| g == true) {
                return true;
            }
            if let Some(body) = event.as_object_mut() {
                body.remove("missed");
            }
        }
        let sent = tokio::select! {
            ok = connection.deliver(calls::EVENT, &event) => ok,
            _ = stop.cancelled() => return false,
        };
        if sent {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, n: u64) -> EventDelivery {
        EventDelivery::new(topic, "pub", json!({ "n": n }))
    }

    fn offer(s: &Subscriber, d: &EventDelivery) -> bool {
        s.offer(d, &serde_json::to_value(d).expect("serializable"))
    }

    fn take(rx: &mut mpsc::Receiver<Value>) -> EventDelivery {
        serde_json::from_value(rx.try_recv().expect("a queued event")).expect("an EventDelivery")
    }

    #[test]
    fn drops_are_reported_with_the_next_delivery_of_their_topic_at_their_place() {
        let (s, mut rx) = Subscriber::new("sub", vec!["t.*".into()], true, 2);
        for n in 0..5 {
            offer(&s, &event("t.a", n));
        }
        assert!(!offer(&s, &event("t.b", 0)));
        assert_eq!(s.dropped.load(Ordering::Relaxed), 4);
        // The two queued before the drops carry nothing.
        assert_eq!((take(&mut rx).missed, take(&mut rx).missed), (0, 0));
        // The next queued delivery of each topic carries its drops.
        assert!(offer(&s, &event("t.b", 1)));
        assert!(offer(&s, &event("t.a", 5)));
        let b = take(&mut rx);
        let a = take(&mut rx);
        assert_eq!((b.topic.as_str(), b.missed, b.gap), ("t.b", 1, false));
        assert_eq!(
            (a.topic.as_str(), a.missed, a.payload),
            ("t.a", 3, json!({"n": 5}))
        );
        // Reported once.
        assert!(offer(&s, &event("t.a", 6)));
        assert_eq!(take(&mut rx).missed, 0);
        assert!(s.due_markers(&rx).is_empty());
    }

    #[test]
    fn drops_still_unreported_when_the_queue_drains_become_gap_markers() {
        let (s, mut rx) = Subscriber::new("sub", vec!["t.*".into()], true, 1);
        assert!(offer(&s, &event("t.a", 0)));
        assert!(!offer(&s, &event("t.a", 1)));
        assert!(!offer(&s, &event("t.a", 2)));
        assert!(!offer(&s, &event("t.b", 0)));
        // Not due while the queue holds an event.
        assert!(s.due_markers(&rx).is_empty());
        assert_eq!(take(&mut rx).missed, 0);
        let markers: Vec<EventDelivery> = s
            .due_markers(&rx)
            .into_iter()
            .map(|m| serde_json::from_value(m).expect("a gap marker"))
            .collect();
        let expected = vec![
            gap_marker("t.a".into(), "pub".into(), 2),
            gap_marker("t.b".into(), "pub".into(), 1),
        ];
        assert_eq!(markers, expected);
        assert_eq!(
            serde_json::to_value(&markers[0]).expect("serializable")["payload"],
            Value::Null
        );
        // Reported once.
        assert!(s.due_markers(&rx).is_empty());
        assert!(offer(&s, &event("t.a", 3)));
        assert_eq!(take(&mut rx).missed, 0);
    }

    #[test]
    fn a_subscriber_without_event_gaps_gets_neither_counts_nor_markers() {
        let (s, mut rx) = Subscriber::new("sub", vec!["t.*".into()], false, 1);
        assert!(offer(&s, &event("t.a", 0)));
        assert!(!offer(&s, &event("t.a", 1)));
        assert_eq!(s.dropped.load(Ordering::Relaxed), 1);
        let first = rx.try_recv().expect("a queued event");
        assert!(s.due_markers(&rx).is_empty());
        assert!(offer(&s, &event("t.a", 2)));
        let next = rx.try_recv().expect("a queued event");
        assert!(
            first.get("missed").is_none() && next.get("missed").is_none(),
            "{next}"
        );
        assert!(next.get("gap").is_none());
    }

    #[test]
    fn drops_of_topics_past_the_cap_are_folded_into_one_count() {
        let mut missed = Missed::default();
        for i in 0..MAX_GAP_TOPICS + 3 {
            missed.record(&format!("t.{i}"), "pub");
        }
        missed.record("t.0", "other");
        assert_eq!(missed.topics.len(), MAX_GAP_TOPICS);
        assert_eq!(missed.overflow, 3);
        // The next delivery of any topic carries the folded count too.
        assert_eq!(missed.take("t.0"), 2 + 3);
        let markers = missed.markers();
        assert_eq!(markers.len(), MAX_GAP_TOPICS - 1);
        assert!(missed.is_empty());
        missed.record("t.x", "pub");
        missed.record("t.x", "other");
        assert_eq!(missed.markers()[0].source, host_events::SOURCE);
    }
}
