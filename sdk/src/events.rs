//! Typed, ordered event subscriptions ([`crate::Plugin::on`]). Each subscription has its own
//! bounded queue and its own task, which runs the handler for one delivery at a time in the order
//! the host sent them. The protocol loop never waits for a queue: when one is full the delivery is
//! dropped and counted for that subscription, and the handler gets a [`Delivery::Gap`] exactly
//! where the events went missing — before the next event it receives, or on its own once the queue
//! has drained. Drops the host reports (`missed`, gap markers) and payloads that do not fit the
//! subscriber's type become gaps too, so a subscriber always knows when to resync
//! (docs/plugins.md, "Ordered events").

use crate::Context;
use crate::method::BoxFuture;
use koi_protocol::calls::EventDelivery;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio_util::task::TaskTracker;

/// How many deliveries a subscription's queue holds before further ones are dropped (and reported
/// as a [`Gap`]), unless [`crate::Plugin::on_with_capacity`] says otherwise.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// What a subscription's handler receives: an event, or the news that events were lost.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery<T> {
    /// The next event, in the order the host delivered it.
    Event(Event<T>),
    /// Events were lost at this point (dropped by the host or by this subscription's full queue,
    /// or one whose payload did not fit `T`). The handler's view may be stale: resync it from the
    /// publisher (docs/plugins.md, "Ordered events").
    Gap(Gap),
}

/// One delivered event with its typed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T> {
    /// The topic (`mdns.service.appeared`).
    pub topic: String,
    /// The moniker of the publishing plugin (`host` for host events).
    pub source: String,
    /// The payload, checked by the host against the publisher's schema.
    pub payload: T,
}

/// Events this subscription did not get, at this position in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// How many events were lost (at least one).
    pub missed: u64,
    /// Their topic, when they all had the same one.
    pub topic: Option<String>,
}

type RawHandler = Arc<dyn Fn(Context, Queued) -> BoxFuture<()> + Send + Sync>;

/// A declared subscription: pattern, queue size and type-erased handler.
pub(crate) struct Subscription {
    pub(crate) pattern: String,
    capacity: usize,
    handler: RawHandler,
}

impl Subscription {
    /// A subscription whose handler receives payloads deserialised into `T`.
    pub(crate) fn new<T, F, Fut>(pattern: &str, capacity: usize, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Context, Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let raw: RawHandler = Arc::new(move |ctx, queued| {
            let handler = handler.clone();
            Box::pin(async move {
                match queued {
                    Queued::Gap(gap) => handler(ctx, Delivery::Gap(gap)).await,
                    Queued::Event(event) => match serde_json::from_value::<T>(event.payload) {
                        Ok(payload) => {
                            let event = Event {
                                topic: event.topic,
                                source: event.source,
                                payload,
                            };
                            handler(ctx, Delivery::Event(event)).await;
                        }
                        Err(e) => {
                            tracing::warn!(
                                topic = %event.topic,
                                source = %event.source,
                                error = %e,
                                "an event's payload does not fit this subscription's type; \
                                 reporting it as a gap"
                            );
                            let gap = Gap {
                                missed: 1,
                                topic: Some(event.topic),
                            };
                            handler(ctx, Delivery::Gap(gap)).await;
                        }
                    },
                }
            })
        });
        Self {
            pattern: pattern.to_owned(),
            capacity: capacity.max(1),
            handler: raw,
        }
    }
}

/// What the handler task runs for: one step of the subscription's stream.
enum Queued {
    Event(RawEvent),
    Gap(Gap),
}

/// An event whose payload is not yet typed.
struct RawEvent {
    topic: String,
    source: String,
    payload: Value,
}

/// One queue entry: a delivery and the drops counted just before it was queued.
struct Entry {
    dropped_before: Lost,
    delivery: EventDelivery,
}

/// Events lost at one position: how many, and their topic when it is one topic.
#[derive(Default)]
struct Lost {
    count: u64,
    topic: Option<String>,
    mixed: bool,
}

impl Lost {
    fn add(&mut self, count: u64, topic: &str) {
        if count == 0 {
            return;
        }
        if self.count == 0 {
            self.topic = Some(topic.to_owned());
        } else if self.topic.as_deref() != Some(topic) {
            self.mixed = true;
        }
        self.count = self.count.saturating_add(count);
    }

    fn into_gap(self) -> Option<Gap> {
        (self.count > 0).then_some(Gap {
            missed: self.count,
            topic: if self.mixed { None } else { self.topic },
        })
    }
}

/// The live side of one subscription.
struct Lane {
    pattern: String,
    tx: mpsc::Sender<Entry>,
    /// Drops not yet handed to the handler. Locked by the router around `try_send` and by the task
    /// around "is the queue empty?", so a count is reported once, at its exact position.
    dropped: Arc<Mutex<Lost>>,
}

/// Routes deliveries from the protocol loop to the subscriptions' queues without ever waiting.
pub(crate) struct Router {
    lanes: Vec<Lane>,
}

impl Router {
    /// Starts one handler task per subscription on `tracker`. Each task serves `ctx` (a context not
    /// tied to a request, cancelled at shutdown) and ends at shutdown or when the router is dropped.
    pub(crate) fn start(subs: &[Subscription], ctx: &Context, tracker: &TaskTracker) -> Self {
        let mut lanes = Vec::with_capacity(subs.len());
        for sub in subs {
            let (tx, rx) = mpsc::channel(sub.capacity);
            let dropped = Arc::new(Mutex::new(Lost::default()));
            tracker.spawn(drive(rx, dropped.clone(), sub.handler.clone(), ctx.clone()));
            lanes.push(Lane {
                pattern: sub.pattern.clone(),
                tx,
                dropped,
            });
        }
        Self { lanes }
    }

    /// Handles the params of an `event` notification: queues the delivery for every subscription
    /// whose pattern matches its topic. Never waits.
    pub(crate) fn route_params(&self, params: Value) {
        match serde_json::from_value::<EventDelivery>(params) {
            Ok(delivery) => self.route(delivery),
            Err(e) => tracing::warn!(error = %e, "ignored a malformed event delivery"),
        }
    }

    /// Queues `delivery` for every matching subscription; a full queue counts it as dropped.
    pub(crate) fn route(&self, delivery: EventDelivery) {
        let matching: Vec<&Lane> = self
            .lanes
            .iter()
            .filter(|lane| pattern_matches(&lane.pattern, &delivery.topic))
            .collect();
        if let Some((last, others)) = matching.split_last() {
            for lane in others {
                lane.offer(delivery.clone());
            }
            last.offer(delivery);
        }
    }
}

impl Lane {
    fn offer(&self, delivery: EventDelivery) {
        let mut dropped = lock(&self.dropped);
        let entry = Entry {
            dropped_before: std::mem::take(&mut *dropped),
            delivery,
        };
        if let Err(TrySendError::Full(entry) | TrySendError::Closed(entry)) =
            self.tx.try_send(entry)
        {
            // Put back what was taken, and count this delivery (a gap marker counts its events).
            *dropped = entry.dropped_before;
            let d = entry.delivery;
            let lost = if d.gap {
                d.missed
            } else {
                d.missed.saturating_add(1)
            };
            dropped.add(lost, &d.topic);
        }
    }
}

fn pattern_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// The subscription's task: one delivery at a time, in queue order, each preceded by the gap that
/// was counted before it; a gap on its own once the queue is empty.
async fn drive(
    mut rx: mpsc::Receiver<Entry>,
    dropped: Arc<Mutex<Lost>>,
    handler: RawHandler,
    ctx: Context,
) {
    loop {
        if ctx.is_cancelled() {
            return;
        }
        let next = {
            let mut lost = lock(&dropped);
            match rx.try_recv() {
                Ok(entry) => Next::Entry(entry),
                Err(TryRecvError::Disconnected) => return,
                // Empty, and the router cannot queue while we hold the lock: whatever was dropped
                // came after everything already handled.
                Err(TryRecvError::Empty) => match std::mem::take(&mut *lost).into_gap() {
                    Some(gap) => Next::Gap(gap),
                    None => Next::Wait,
                },
            }
        };
        let entry = match next {
            Next::Entry(entry) => entry,
            Next::Gap(gap) => {
                handler(ctx.clone(), Queued::Gap(gap)).await;
                continue;
            }
            Next::Wait => tokio::select! {
                entry = rx.recv() => match entry {
                    Some(entry) => entry,
                    None => return,
                },
                _ = ctx.cancelled() => return,
            },
        };
        for step in steps(entry) {
            handler(ctx.clone(), step).await;
        }
    }
}

/// What the subscription's task does next.
enum Next {
    Entry(Entry),
    Gap(Gap),
    Wait,
}

/// What one queue entry means for the handler: at most one gap (local drops plus the host's), then
/// the event unless the delivery was only a gap marker.
fn steps(entry: Entry) -> Vec<Queued> {
    let Entry {
        mut dropped_before,
        delivery,
    } = entry;
    dropped_before.add(delivery.missed, &delivery.topic);
    let mut steps = Vec::with_capacity(2);
    if let Some(gap) = dropped_before.into_gap() {
        steps.push(Queued::Gap(gap));
    }
    if !delivery.gap {
        steps.push(Queued::Event(RawEvent {
            topic: delivery.topic,
            source: delivery.source,
            payload: delivery.payload,
        }));
    }
    steps
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
