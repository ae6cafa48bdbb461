//! The entries mirrored in this machine's roster entry (`certmesh/set-proxy-entries`, the complete
//! list each time): after every `add` and `remove`, and once when the `serve` service starts. Best
//! effort, like the name requests: when certmesh is missing, this machine is in no mesh or the CA
//! is locked, the verb still succeeds, the failure is logged once at info (retries at debug),
//! `status` shows it under `roster`, and the service sends the list again later.

use crate::state::{Proxy, lock};
use koi_sdk::Context;
use serde::Deserialize;
use serde_json::json;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The mirror's state, part of [`Proxy`].
#[derive(Debug)]
pub struct Mirror {
    /// One call at a time, each sending the entries as they are when it starts: the last call
    /// always carries the latest list.
    one: tokio::sync::Mutex<()>,
    /// The last outcome, in words (shown by `status` as `roster`).
    outcome: Mutex<String>,
    /// Whether the list still has to be sent (the service retries then).
    pending: AtomicBool,
    /// Whether a failure was logged already (logged once at info until a call succeeds).
    silent: AtomicBool,
}

impl Default for Mirror {
    fn default() -> Self {
        Self {
            one: tokio::sync::Mutex::new(()),
            outcome: Mutex::new(
                "not mirrored yet: the service sends the entries at its start".into(),
            ),
            pending: AtomicBool::new(true),
            silent: AtomicBool::new(false),
        }
    }
}

impl Mirror {
    /// Whether the list still has to be sent.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The last outcome, in words.
    pub fn outcome(&self) -> String {
        lock(&self.outcome).clone()
    }
}

#[derive(Deserialize)]
struct Answer {
    host: String,
    stored: usize,
    roster_version: u64,
}

/// certmesh's text cut to one line of printable characters.
fn clean(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Sends the complete entry list to `certmesh/set-proxy-entries`; records the outcome and returns
/// it in words. Never fails: a refusal or silence leaves the list pending for the service's retry.
pub async fn send(ctx: &Context, proxy: &Proxy) -> String {
    let mirror = &proxy.mirror;
    let _one = mirror.one.lock().await;
    let entries: Vec<serde_json::Value> = proxy
        .entries()
        .iter()
        .map(|e| json!({"name": e.host, "listen_port": e.listen_port, "backend": e.backend}))
        .collect();
    let count = entries.len();
    let answer = ctx
        .call::<_, Answer>(
            "certmesh",
            "set-proxy-entries",
            &json!({ "entries": entries }),
        )
        .await;
    let outcome = match answer {
        Ok(a) => {
            mirror.pending.store(false, Ordering::Release);
            mirror.silent.store(false, Ordering::Relaxed);
            format!(
                "mirrored: {} entries in the roster entry of {} (roster version {})",
                a.stored,
                clean(&a.host, 64),
                a.roster_version
            )
        }
        Err(e) => {
            mirror.pending.store(true, Ordering::Release);
            let why = clean(e.message(), 300);
            if mirror.silent.swap(true, Ordering::Relaxed) {
                tracing::debug!("certmesh still does not take the proxy entries: {why}");
            } else {
                tracing::info!(
                    "cannot mirror {count} proxy entries in the roster yet ({why}); sending them \
                     again every 5 minutes under koi daemon"
                );
            }
            format!(
                "not mirrored yet: certmesh did not take the entries ({why}); `koi daemon` sends \
                 them again every 5 minutes"
            )
        }
    };
    *lock(&mirror.outcome) = outcome.clone();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certmesh_text_is_one_bounded_line() {
        assert_eq!(clean("a\nb\u{1b}[31mc", 10), "ab[31mc");
        assert_eq!(clean(&"x".repeat(500), 300).len(), 300);
        assert!(Mirror::default().pending());
    }
}
