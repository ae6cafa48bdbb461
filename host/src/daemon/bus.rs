//! The daemon's event bus. Every subscriber has a bounded queue and its own delivery task: a
//! publish never waits for a subscriber, and an event that finds a subscriber's queue full is
//! dropped and counted for that subscriber (shown in `koi status`) rather than growing memory or
//! delaying the others. Delivery follows the subscriber across restarts.

use super::supervisor::Supervised;
use crate::schema::lock;
use koi_protocol::calls::{self, EventDelivery};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Subscriber {
    moniker: String,
    patterns: Mutex<Vec<String>>,
    queue: mpsc::Sender<Value>,
    queued: AtomicU64,
    delivered: Arc<AtomicU64>,
    dropped: AtomicU64,
}

impl Subscriber {
    fn wants(&self, topic: &str) -> bool {
        lock(&self.patterns)
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => p == topic,
            })
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
    pub fn subscribe(
        &self,
        target: &Arc<Supervised>,
        patterns: Vec<String>,
        capacity: usize,
        stop: &CancellationToken,
    ) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(existing) = subscribers.iter().find(|s| s.moniker == target.moniker) {
            *lock(&existing.patterns) = patterns;
            return;
        }
        if patterns.is_empty() {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Value>(capacity);
        let delivered = Arc::new(AtomicU64::new(0));
        subscribers.push(Arc::new(Subscriber {
            moniker: target.moniker.clone(),
            patterns: Mutex::new(patterns),
            queue: tx,
            queued: AtomicU64::new(0),
            delivered: delivered.clone(),
            dropped: AtomicU64::new(0),
        }));
        let target = target.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e { Some(e) => e, None => return },
                    _ = stop.cancelled() => return,
                };
                // Follow the subscriber across restarts; an event is retried on the next process.
                loop {
                    let connection = tokio::select! {
                        c = target.wait_connection(Duration::from_secs(3600)) => c,
                        _ = stop.cancelled() => return,
                    };
                    let Ok(connection) = connection else { continue };
                    let sent = tokio::select! {
                        ok = connection.deliver(calls::EVENT, event.clone()) => ok,
                        _ = stop.cancelled() => return,
                    };
                    if sent {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        });
    }

    /// Queues an event for every subscriber (except the source) whose topics match; returns how
    /// many queued it. A full queue drops the event for that subscriber and counts it.
    pub fn publish(&self, delivery: &EventDelivery) -> usize {
        let body = serde_json::to_value(delivery).unwrap_or(Value::Null);
        let subscribers: Vec<Arc<Subscriber>> = lock(&self.subscribers).clone();
        let mut queued = 0;
        for s in subscribers
            .iter()
            .filter(|s| s.moniker != delivery.source && s.wants(&delivery.topic))
        {
            match s.queue.try_send(body.clone()) {
                Ok(()) => {
                    s.queued.fetch_add(1, Ordering::Relaxed);
                    queued += 1;
                }
                Err(_) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
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
