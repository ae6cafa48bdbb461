//! `bench-subscriber`: the event-rate benchmark's subscriber plugin (moniker `benchsub`). It
//! subscribes to `hello.tick` (published by `koi hello publish`), and for every delivery records
//! the count, the wall-clock time of the first and last event, how many arrived out of order (a
//! sequence number below the highest seen) and how many the host reported dropped. `koi benchsub
//! stats` answers those figures; `koi benchsub reset` clears them between runs.
//!
//! The binary is deliberately not named `koi-*` (it would be discovered next to
//! `target/release/koi`); `bench/sdk/run.sh` copies it into a private plugin directory as
//! `koi-benchsub`. Every SDK subscription call lives in [`subscribe`], so porting it to a new
//! subscription API touches one function.

use koi_sdk::{Context, Delivery, Method, MethodError, NoParams, Plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Payload of `hello.tick`, as `koi-hello` publishes it.
#[derive(Deserialize, JsonSchema)]
struct Tick {
    /// Sequence number, from 1.
    n: u64,
    /// Padding (its size is the benchmark's payload size).
    #[allow(dead_code)]
    padding: String,
}

/// What the subscriber has seen since the last reset.
#[derive(Default, Clone, Serialize, JsonSchema)]
struct Stats {
    /// Events received (gap markers excluded).
    received: u64,
    /// Wall-clock time of the first event, nanoseconds since the Unix epoch (0: none yet).
    first_ns: u128,
    /// Wall-clock time of the last event, nanoseconds since the Unix epoch (0: none yet).
    last_ns: u128,
    /// Events received from first to last, per second (0 with fewer than two events).
    rate_per_s: f64,
    /// Highest sequence number seen.
    max_n: u64,
    /// Events whose sequence number was below the highest already seen.
    out_of_order: u64,
    /// Events the host reported dropped for this subscriber (`missed`, summed).
    missed: u64,
    /// Gap markers received.
    gaps: u64,
    /// Payloads that did not parse as a tick.
    malformed: u64,
}

/// The shared tally, updated by every delivery.
#[derive(Default)]
struct Tally(Mutex<Stats>);

impl Tally {
    /// Records one delivery: `n` is the tick's sequence number (`None` for a gap marker or a
    /// payload that did not parse), `missed` the drops the host reported with it.
    fn record(&self, n: Option<u64>, missed: u64, gap: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.missed += missed;
        if gap {
            s.gaps += 1;
            return;
        }
        let Some(n) = n else {
            s.malformed += 1;
            return;
        };
        if s.received == 0 {
            s.first_ns = now;
        }
        s.last_ns = now;
        s.received += 1;
        if n < s.max_n {
            s.out_of_order += 1;
        } else {
            s.max_n = n;
        }
    }

    fn snapshot(&self) -> Stats {
        let mut s = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let span = s.last_ns.saturating_sub(s.first_ns) as f64 / 1e9;
        if s.received > 1 && span > 0.0 {
            s.rate_per_s = (s.received - 1) as f64 / span;
        }
        s
    }

    fn reset(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Stats::default();
    }
}

/// The only code that uses the SDK's subscription API: subscribe to `hello.tick` (one ordered
/// queue, `Plugin::on`) and feed every delivery to the tally. A payload that does not fit [`Tick`]
/// reaches the handler as a gap of one, so it is counted with the gaps.
fn subscribe(plugin: Plugin, tally: Arc<Tally>) -> Plugin {
    plugin.on::<Tick, _, _>(
        "hello.tick",
        move |_ctx: Context, delivery: Delivery<Tick>| {
            let tally = tally.clone();
            async move {
                match delivery {
                    Delivery::Event(event) => tally.record(Some(event.payload.n), 0, false),
                    Delivery::Gap(gap) => tally.record(None, gap.missed, true),
                }
            }
        },
    )
}

fn main() -> std::process::ExitCode {
    let tally = Arc::new(Tally::default());
    let for_stats = tally.clone();
    let for_reset = tally.clone();
    let plugin = Plugin::new(
        "benchsub",
        env!("CARGO_PKG_VERSION"),
        "Benchmark subscriber: counts hello.tick events",
    )
    .method(Method::new(
        "stats",
        "What was received since the last reset",
        move |_ctx: Context, _p: NoParams| {
            let tally = for_stats.clone();
            async move { Ok::<Stats, MethodError>(tally.snapshot()) }
        },
    ))
    .method(
        Method::new(
            "reset",
            "Forget everything received",
            move |_ctx: Context, _p: NoParams| {
                let tally = for_reset.clone();
                async move {
                    tally.reset();
                    Ok::<Stats, MethodError>(Stats::default())
                }
            },
        )
        .mutating(),
    );
    subscribe(plugin, tally).run()
}
