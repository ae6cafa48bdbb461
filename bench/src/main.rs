//! `rpc-bench`: measures the plugin protocol through the host's own `Connection`, the code path
//! `koi` uses: the handshake (spawn + `initialize`, then shutdown and reap), the round trip of one
//! call to a plugin kept running (many calls over one connection, schema checks included), the
//! plugin's resident memory after the handshake and 100 calls, what one schema check costs, and —
//! when the plugin has koi-hello's `publish` verb — how fast it publishes events one after the
//! other to a host that checks each against its schema and answers at once (no bus behind it).
//! Prints a JSON report.
//!
//! Usage: `rpc-bench PLUGIN_PATH MONIKER [CALLS]` — the plugin must answer `greet {"name": ..}`
//! (the SDK example `koi-hello` does).

use anyhow::{Context as _, Result, bail};
use koi_host::connection::{Connection, LaunchOptions};
use koi_host::schema::{PayloadKind, Validators};
use koi_host::services::{BoxFuture, HostServices};
use koi_protocol::ErrorObject;
use koi_protocol::handshake::RunMode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The benchmark answers no plugin→host calls but `host/publish`, which it accepts at once
/// (the connection has already checked the payload against the publisher's schema).
struct NoServices;

impl HostServices for NoServices {
    fn request(
        &self,
        _from: Connection,
        method: String,
        _params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        Box::pin(async move {
            if method == koi_protocol::calls::PUBLISH {
                return Ok(json!({"delivered": 0}));
            }
            Err(ErrorObject::new(
                -32601,
                format!("rpc-bench does not serve {method}"),
            ))
        })
    }
    fn notification(&self, _from: &Connection, _method: &str, _params: Value) {}
}

fn stats(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let pick =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    json!({"n": samples.len(), "median_us": pick(0.5), "p90_us": pick(0.9), "p99_us": pick(0.99),
           "min_us": pick(0.0), "mean_us": mean})
}

/// `VmRSS` and `VmHWM` of process `pid`, in KiB, from `/proc` (`None` off Linux or once it exited).
fn rss_kib(pid: u32) -> Option<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    Some(json!({"vm_rss_kib": field("VmRSS:")?, "vm_hwm_kib": field("VmHWM:")?}))
}

/// Times `publish {count, size}` for each payload size: the plugin awaits the host's answer to
/// every event, so this is the publisher's own ceiling, without a daemon's bus behind it.
async fn publisher_rates(connection: &Connection, count: u32) -> Result<Value> {
    let mut rates = serde_json::Map::new();
    for size in [0u32, 1024] {
        let start = Instant::now();
        connection
            .call("publish", json!({"count": count, "size": size}))
            .await
            .map_err(|e| anyhow::anyhow!("publish {count} events of {size} bytes: {e}"))?;
        let elapsed = start.elapsed().as_secs_f64();
        rates.insert(
            format!("size_{size}"),
            json!({"events": count, "seconds": elapsed,
                   "events_per_s": f64::from(count) / elapsed,
                   "us_per_event": elapsed * 1e6 / f64::from(count)}),
        );
    }
    Ok(Value::Object(rates))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: rpc-bench PLUGIN_PATH MONIKER [CALLS]");
    }
    let path = PathBuf::from(&args[1]);
    let moniker = args[2].clone();
    let calls: usize = args
        .get(3)
        .map(|c| c.parse())
        .transpose()
        .context("CALLS must be a number")?
        .unwrap_or(20_000);
    let home = std::env::temp_dir().join(format!("rpc-bench-{}", std::process::id()));
    let launch = LaunchOptions {
        mode: RunMode::OneShot,
        koi_home: home.clone(),
        interactive: false,
        max_frame_bytes: koi_protocol::DEFAULT_MAX_FRAME_BYTES as usize,
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        log_filter: "warn".into(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async move {
        let services: Arc<dyn HostServices> = Arc::new(NoServices);
        let weak: Weak<dyn HostServices> = Arc::downgrade(&services);

        // Handshake alone: spawn + initialize; lifecycle: that plus shutdown and reap.
        let mut handshakes = Vec::new();
        let mut lifecycles = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            let connection = Connection::start(&moniker, &path, &launch, weak.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            handshakes.push(start.elapsed());
            connection.shutdown().await;
            lifecycles.push(start.elapsed());
        }

        // Kept-alive round trips.
        let connection = Connection::start(&moniker, &path, &launch, weak.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let params = json!({"name": "Ada"});
        let mut rss_after_100_calls = Value::Null;
        for i in 0..1000 {
            connection
                .call("greet", params.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if i == 99 {
                rss_after_100_calls = rss_kib(connection.pid()).unwrap_or(Value::Null);
            }
        }
        let mut round_trips = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            connection
                .call("greet", params.clone())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            round_trips.push(start.elapsed());
        }
        let spec = connection
            .manifest()
            .method("greet")
            .cloned()
            .context("the plugin has no greet method")?;
        let rss_after_all_calls = rss_kib(connection.pid()).unwrap_or(Value::Null);
        let publisher = if connection.manifest().method("publish").is_some() {
            publisher_rates(&connection, 20_000).await?
        } else {
            Value::Null
        };
        connection.shutdown().await;

        // Cost of one schema check (compiled validator, as on every call after the first).
        let validators = Validators::default();
        let result = json!({"greeting": "Hello, Ada!"});
        let rounds = 100_000;
        let start = Instant::now();
        for _ in 0..rounds {
            validators
                .check(
                    &moniker,
                    PayloadKind::Params,
                    "greet",
                    &spec.params,
                    &params,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            validators
                .check(
                    &moniker,
                    PayloadKind::Result,
                    "greet",
                    &spec.result,
                    &result,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let per_call_checks_ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        let start = Instant::now();
        for _ in 0..200 {
            let fresh = Validators::default();
            fresh
                .check(
                    &moniker,
                    PayloadKind::Params,
                    "greet",
                    &spec.params,
                    &params,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            fresh
                .check(
                    &moniker,
                    PayloadKind::Result,
                    "greet",
                    &spec.result,
                    &result,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let first_call_checks_us = start.elapsed().as_secs_f64() * 1e6 / 200.0;
        drop(services);
        anyhow::Ok(json!({
            "plugin": path.display().to_string(),
            "handshake": stats(handshakes),
            "spawn_handshake_shutdown_reap": stats(lifecycles),
            "round_trip": stats(round_trips),
            "plugin_rss_after_handshake_and_100_calls": rss_after_100_calls,
            "plugin_rss_after_all_calls": rss_after_all_calls,
            "publisher_alone": publisher,
            "schema_checks_per_call_ns": per_call_checks_ns,
            "schema_compile_and_check_first_call_us": first_call_checks_us,
        }))
    })?;
    let _ = std::fs::remove_dir_all(home);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
