//! `koi-hello`: the SDK's runnable example plugin, and the well-behaved fixture the host's tests and
//! benchmarks use. It exercises every part of the protocol: plain calls (`greet`), a long-running,
//! cancellable method with progress (`wait`), a streaming method (`count`), questions for the user
//! (`ask`), raw keystrokes with timings (`mash`), tables and QR codes (`show`), calls to another
//! plugin and events (`relay`).

use koi_sdk::protocol::calls::{HealthState, StatusReport};
use koi_sdk::{Context, Method, MethodError, NoParams, Plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Params of `greet`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GreetParams {
    /// Who to greet.
    name: String,
    /// Greet loudly.
    #[serde(default)]
    shout: bool,
}

/// Result of `greet`.
#[derive(Serialize, JsonSchema)]
struct Greeting {
    /// The greeting.
    greeting: String,
}

async fn greet(_ctx: Context, p: GreetParams) -> Result<Greeting, MethodError> {
    if p.name.trim().is_empty() {
        return Err(
            MethodError::new("the name is empty").hint("Pass a name: `koi hello greet Ada`.")
        );
    }
    let greeting = format!("Hello, {}!", p.name);
    Ok(Greeting {
        greeting: if p.shout {
            greeting.to_uppercase()
        } else {
            greeting
        },
    })
}

/// Params of `wait`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    /// How long to wait, in seconds.
    #[schemars(range(max = 86400))]
    seconds: u64,
    /// Write this process's pid to the file before waiting (lets tests check it is reaped).
    #[serde(default)]
    pid_file: Option<String>,
}

/// Result of `wait`.
#[derive(Serialize, JsonSchema)]
struct Waited {
    /// Seconds actually waited.
    seconds: u64,
}

async fn wait(ctx: Context, p: WaitParams) -> Result<Waited, MethodError> {
    if let Some(path) = &p.pid_file {
        std::fs::write(path, std::process::id().to_string())
            .map_err(|e| MethodError::new(format!("cannot write the pid file {path}: {e}")))?;
    }
    for second in 0..p.seconds {
        ctx.progress("waiting", Some(second), Some(p.seconds));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(Waited { seconds: p.seconds })
}

/// Params of `count`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountParams {
    /// Count up to this number, streaming each number.
    #[schemars(range(max = 100000))]
    to: u32,
}

/// One streamed item of `count`.
#[derive(Serialize, JsonSchema)]
struct Tick {
    /// The number.
    n: u32,
}

/// Result of `count`.
#[derive(Serialize, JsonSchema)]
struct Counted {
    /// How many items were streamed.
    count: u32,
}

async fn count(ctx: Context, p: CountParams) -> Result<Counted, MethodError> {
    for n in 1..=p.to {
        ctx.emit(&Tick { n }).await;
    }
    Ok(Counted { count: p.to })
}

/// Result of `ask`.
#[derive(Serialize, JsonSchema)]
struct Answers {
    /// The name typed.
    name: String,
    /// How long the secret was (the secret itself never leaves the plugin).
    secret_length: usize,
    /// Whether the user confirmed.
    confirmed: bool,
    /// The colour chosen.
    colour: String,
}

async fn ask(ctx: Context, _p: NoParams) -> Result<Answers, MethodError> {
    let name = ctx.prompt("Your name", Some("Ada")).await?;
    let secret = ctx.secret("A secret word", false).await?;
    let confirmed = ctx.confirm("Proceed?", true).await?;
    let (_, colour) = ctx
        .choose("Favourite colour", &["red", "green", "blue"], Some(1))
        .await?;
    Ok(Answers {
        name,
        secret_length: secret.len(),
        confirmed,
        colour,
    })
}

/// Params of `mash`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MashParams {
    /// How many keystrokes to collect.
    #[serde(default = "default_mash_count")]
    #[schemars(range(min = 1, max = 4096))]
    count: u32,
}

fn default_mash_count() -> u32 {
    64
}

/// Result of `mash` (the keystrokes themselves never leave the plugin).
#[derive(Serialize, JsonSchema)]
struct Mashed {
    /// How many keystrokes were collected.
    collected: usize,
    /// Milliseconds from the first keystroke to the last.
    span_ms: u64,
}

async fn mash(ctx: Context, p: MashParams) -> Result<Mashed, MethodError> {
    let keys = ctx
        .keystrokes(
            "Type random keys until the bar is full (Ctrl-C cancels)",
            p.count,
        )
        .await?;
    let span = match (keys.first(), keys.last()) {
        (Some(first), Some(last)) => last.nanos.saturating_sub(first.nanos),
        _ => 0,
    };
    Ok(Mashed {
        collected: keys.len(),
        span_ms: span / 1_000_000,
    })
}

/// Result of `show`.
#[derive(Serialize, JsonSchema)]
struct Shown {
    /// What was shown.
    shown: Vec<String>,
}

async fn show(ctx: Context, _p: NoParams) -> Result<Shown, MethodError> {
    ctx.show_text("Here is a table and a QR code.");
    ctx.show_table(
        &["name", "port"],
        vec![
            vec!["web".into(), "80".into()],
            vec!["dns".into(), "53".into()],
        ],
    );
    ctx.show_qr(
        "otpauth://totp/Koi:example?secret=JBSWY3DPEHPK3PXP&issuer=Koi",
        Some("Scan with an authenticator app"),
    );
    Ok(Shown {
        shown: vec!["text".into(), "table".into(), "qr".into()],
    })
}

/// Params of `relay`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RelayParams {
    /// Plugin to call through the host.
    plugin: String,
    /// Its method.
    method: String,
    /// The params, as JSON text.
    #[serde(default)]
    params: Option<String>,
}

/// Result of `relay`.
#[derive(Serialize, JsonSchema)]
struct Relayed {
    /// The other plugin's result.
    result: serde_json::Value,
    /// Subscribers the `hello.relayed` event reached.
    delivered: usize,
}

/// Payload of `hello.relayed`.
#[derive(Serialize, JsonSchema)]
struct RelayedEvent {
    /// `plugin.method` that was called.
    target: String,
}

async fn relay(ctx: Context, p: RelayParams) -> Result<Relayed, MethodError> {
    let params: serde_json::Value = match &p.params {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| MethodError::invalid_params(format!("--params is not JSON: {e}")))?,
        None => serde_json::json!({}),
    };
    let result: serde_json::Value = ctx.call(&p.plugin, &p.method, &params).await?;
    let delivered = ctx
        .publish(
            "hello.relayed",
            &RelayedEvent {
                target: format!("{}.{}", p.plugin, p.method),
            },
        )
        .await?;
    Ok(Relayed { result, delivered })
}

/// Params of `publish`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    /// How many `hello.tick` events to publish.
    #[schemars(range(min = 1, max = 100000))]
    count: u32,
    /// Bytes of padding in each event (to make them heavy).
    #[serde(default)]
    #[schemars(range(max = 65536))]
    size: u32,
    /// Await the host's answer to each event before the next (`ctx.publish`, one round trip per
    /// event) instead of pipelining them (`ctx.post`); paces the stream to the host.
    #[serde(default)]
    await_each: bool,
}

/// Result of `publish`.
#[derive(Serialize, JsonSchema)]
struct Published {
    /// Events sent to the host, in order (pipelined unless `--await-each`: then the host's answers
    /// are not awaited, and a refused event is logged by the plugin).
    published: u32,
}

/// Payload of `hello.tick`.
#[derive(Serialize, JsonSchema)]
struct TickEvent {
    /// Sequence number, from 1.
    n: u32,
    /// Padding.
    padding: String,
}

async fn publish(ctx: Context, p: PublishParams) -> Result<Published, MethodError> {
    let mut tick = TickEvent {
        n: 0,
        padding: "x".repeat(p.size as usize),
    };
    for n in 1..=p.count {
        tick.n = n;
        if p.await_each {
            ctx.publish("hello.tick", &tick).await?;
        } else {
            // Pipelined: sent in order without waiting for each answer (one round trip per event
            // caps the rate at about 1 / the round trip).
            ctx.post("hello.tick", &tick).await?;
        }
        if n % 500 == 0 {
            ctx.progress("publishing", Some(u64::from(n)), Some(u64::from(p.count)));
        }
    }
    Ok(Published { published: p.count })
}

fn main() -> std::process::ExitCode {
    Plugin::new("hello", env!("CARGO_PKG_VERSION"), "Example plugin: greetings, waiting, questions")
        .description("The koi-sdk example plugin. Every verb exercises one part of the protocol.")
        .method(
            Method::new("greet", "Greet someone by name", greet)
                .positional(["name"])
                .short("shout", 's')
                .example("koi hello greet Ada --shout"),
        )
        .method(Method::new("wait", "Wait, reporting progress; Ctrl-C cancels", wait).positional(["seconds"]).long_running())
        .method(Method::new("count", "Stream the numbers 1..=TO", count).positional(["to"]).streams::<Tick>())
        .method(Method::new("ask", "Ask a few questions", ask).interactive())
        .method(Method::new("mash", "Collect COUNT raw keystrokes with their timings", mash).interactive().example("koi hello mash --count 32"))
        .method(Method::new("show", "Show a table and a QR code", show))
        .method(Method::new("relay", "Call another plugin through the host and publish an event", relay).positional(["plugin", "method"]))
        .method(Method::new("publish", "Publish COUNT `hello.tick` events", publish).mutating())
        .publishes::<RelayedEvent>("hello.relayed", "A relay call completed")
        .publishes::<TickEvent>("hello.tick", "A numbered event from `publish`")
        .legacy_route("/greet", "greet")
        .deprecated_alias("greet", "greet", "Warning: `koi greet` is deprecated. Use `koi hello greet`.\nThis alias will be removed in the next release.")
        .status(|_ctx: Context| async {
            StatusReport { state: HealthState::Ok, summary: "ready to greet".into(), details: Default::default() }
        })
        .run()
}
