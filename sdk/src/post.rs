//! Pipelined publishing ([`crate::Context::post`]): an event goes out as a `host/publish` request
//! at once, and the caller does not wait for the host's answer. Posted events keep their order:
//! they share the plugin's one ordered outbound queue with every other frame, and the host handles
//! a plugin's `host/publish` requests in the order it reads them (docs/protocol.md). The answer
//! still comes; nobody awaits it, so the reader checks it here: a refusal (an undeclared topic, a
//! payload that breaks the schema, a host that is going away) is counted and logged at warn, never
//! dropped silently.
//!
//! At most [`WINDOW`] posted events await their answers at once; `post` waits for one to be
//! answered beyond that. The host queues its answers for the plugin's stdin and closes the
//! connection when more than 1024 frames wait there unread, so an unbounded number of unanswered
//! posts would let a plugin whose reader falls behind (a starved thread under load) lose its
//! connection. The window does not slow a healthy plugin: the host answers a publish as soon as it
//! has read and routed it, without waiting for subscribers.
//!
//! A posted request carries a string id `post-<n>`, a space the SDK's awaited calls (numeric ids)
//! never use, so its answer needs no entry in the pending-calls table: no lock and no allocation
//! shared with the reader per event. The frame is serialised straight from the caller's payload
//! into bytes (no intermediate `serde_json::Value`).

use koi_protocol::calls::PUBLISH;
use koi_protocol::{ErrorObject, codes};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;

/// Prefix of the ids of posted `host/publish` requests.
const ID_PREFIX: &str = "post-";

/// Refusals logged one by one before the log thins out to the 16th, 32nd, 64th … (a plugin posting
/// an undeclared topic at 50,000 events/s must not flood the host's log).
const LOG_EACH: u64 = 10;

/// Posted events that may await their answers at once: well below the host's 1024-frame queue
/// towards the plugin, leaving room for its other frames (deliveries, calls, responses).
pub(crate) const WINDOW: usize = 512;

/// The counters behind `post`: ids handed out, refusals seen, and the window of unanswered ones.
pub(crate) struct Posts {
    next: AtomicU64,
    refused: AtomicU64,
    window: Semaphore,
}

impl Default for Posts {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            window: Semaphore::new(WINDOW),
        }
    }
}

/// A posted `host/publish` request, borrowed from the caller for one serialisation.
#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    jsonrpc: &'static str,
    id: &'a str,
    method: &'static str,
    params: Params<'a, T>,
}

#[derive(Serialize)]
struct Params<'a, T: Serialize> {
    topic: &'a str,
    payload: &'a T,
}

impl Posts {
    /// Waits for a place in the window of unanswered posts; `None` once the connection is over.
    /// Once [`Reservation::sent`], the place is held until [`Self::answer`] sees the answer;
    /// dropped unsent (the event never left, or the caller was cancelled) it is given back.
    pub(crate) async fn reserve(&self) -> Option<Reservation<'_>> {
        let permit = self.window.acquire().await.ok()?;
        Some(Reservation { permit })
    }

    /// The connection is over: no answer will come, and every waiting or later `post` fails.
    pub(crate) fn close(&self) {
        self.window.close();
    }

    /// The frame body (no newline) of a posted `host/publish` of `payload` on `topic`, under a new
    /// id.
    pub(crate) fn frame<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{ID_PREFIX}{n}");
        serde_json::to_vec(&Frame {
            jsonrpc: "2.0",
            id: &id,
            method: PUBLISH,
            params: Params { topic, payload },
        })
    }

    /// Takes the host's answer to a request with string id `id` if it is a posted one (returns
    /// false otherwise, so the caller treats it as any other answer). A refusal is counted and
    /// logged at warn: each of the first ten, then the 16th, 32nd, 64th and so on, each with the
    /// running count.
    pub(crate) fn answer(
        &self,
        id: &str,
        outcome: &Result<serde_json::Value, ErrorObject>,
    ) -> bool {
        if !id.starts_with(ID_PREFIX) {
            return false;
        }
        self.window.add_permits(1);
        if let Err(e) = outcome {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused <= LOG_EACH || refused.is_power_of_two() {
                let hint = e.hint().unwrap_or_default();
                tracing::warn!(
                    request = id,
                    code = e.code,
                    refused,
                    "the host refused an event sent with ctx.post: {}{}{hint} \
                     (use ctx.publish to get each answer)",
                    e.message,
                    if hint.is_empty() { "" } else { " — " },
                );
            }
        }
        true
    }

    /// Places free in the window of unanswered posts.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.window.available_permits()
    }

    /// Posted events the host refused so far.
    #[cfg(test)]
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A place in the window of unanswered posts, for one event about to be sent.
pub(crate) struct Reservation<'a> {
    permit: tokio::sync::SemaphorePermit<'a>,
}

impl Reservation<'_> {
    /// The event was queued for the host: its place is now released by its answer.
    pub(crate) fn sent(self) {
        self.permit.forget();
    }
}

/// The error for a posted event over the frame limit.
pub(crate) fn too_large(topic: &str, bytes: usize, limit: usize) -> ErrorObject {
    ErrorObject::new(
        codes::FRAME_TOO_LARGE,
        format!("the `{topic}` event is {bytes} bytes, over the {limit}-byte frame limit"),
    )
    .with_hint("Publish less per event (split the payload) or raise KOI_MAX_FRAME_BYTES.")
}
