//! Protocol tracing: with `KOI_TRACE_PROTOCOL=1` every frame in and out is written to stderr (or,
//! when the variable holds a path, appended to that file) as `koi-trace <plugin> <-|-> <json>`, with
//! secret fields redacted (see `koi_protocol::redact`).

use koi_protocol::redact::{REDACTED, redact};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// Direction of a traced frame.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Host → plugin.
    ToPlugin,
    /// Plugin → host.
    FromPlugin,
}

enum Sink {
    Off,
    Stderr,
    File(Mutex<std::fs::File>),
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| match std::env::var("KOI_TRACE_PROTOCOL") {
        Ok(v) if v.is_empty() || v == "0" => Sink::Off,
        Ok(v) if v == "1" || v == "stderr" => Sink::Stderr,
        Ok(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Sink::File(Mutex::new(f)),
            Err(e) => {
                eprintln!(
                    "koi: cannot open KOI_TRACE_PROTOCOL file {path}: {e}; tracing to stderr"
                );
                Sink::Stderr
            }
        },
        Err(_) => Sink::Off,
    })
}

/// Whether tracing is on (checked before doing any work for it).
pub fn enabled() -> bool {
    !matches!(sink(), Sink::Off)
}

/// Traces one frame. `secret_names` are the plugin's secret property names; `whole_result_secret`
/// hides the entire result (answers to `host/secret` and `host/keystrokes`).
pub fn frame(
    plugin: &str,
    direction: Direction,
    body: &[u8],
    secret_names: &BTreeSet<String>,
    whole_result_secret: bool,
) {
    write(
        plugin,
        direction,
        body,
        secret_names,
        whole_result_secret,
        false,
    );
}

/// Traces a frame the plugin sent before the handshake completed: the answer to `initialize`.
/// Its `result.manifest` is declarations, not values (a params schema with a property named
/// `password` holds no password), so it is shown whole; the rest is redacted as usual.
pub fn handshake_answer(plugin: &str, body: &[u8]) {
    write(
        plugin,
        Direction::FromPlugin,
        body,
        &BTreeSet::new(),
        false,
        true,
    );
}

fn write(
    plugin: &str,
    direction: Direction,
    body: &[u8],
    secret_names: &BTreeSet<String>,
    whole_result_secret: bool,
    manifest_is_schema: bool,
) {
    if !enabled() {
        return;
    }
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            // Taken out (leaving null in its place, so the order of keys is kept) while the rest
            // is redacted.
            let manifest = manifest_is_schema
                .then(|| value.pointer_mut("/result/manifest").map(std::mem::take))
                .flatten();
            // Only payloads are redacted: the envelope (ids, error codes) is never secret.
            for payload in ["params", "result"] {
                if let Some(v) = value.get_mut(payload) {
                    redact(v, secret_names);
                }
            }
            if let (Some(manifest), Some(slot)) = (manifest, value.pointer_mut("/result/manifest"))
            {
                *slot = manifest;
            }
            if let Some(data) = value.get_mut("error").and_then(|e| e.get_mut("data")) {
                redact(data, secret_names);
            }
            // A QR code shown to the user often carries a secret (an otpauth URI, a Wi-Fi key).
            if value.get("method").and_then(Value::as_str) == Some(koi_protocol::calls::SHOW)
                && let Some(content) = value.pointer_mut("/params/content")
                && content.get("kind").and_then(Value::as_str) == Some("qr")
                && let Some(data) = content.get_mut("data")
            {
                *data = Value::String(REDACTED.to_owned());
            }
            if whole_result_secret {
                if let Some(result) = value.get_mut("result") {
                    *result = Value::String(REDACTED.to_owned());
                }
            }
            // A trace is read on a terminal too: no raw DEL, C1 or bidi character (serde already
            // escapes C0).
            crate::sanitize::json(&value)
        }
        Err(_) => format!("(non-JSON, {} bytes, not shown)", body.len()),
    };
    let arrow = match direction {
        Direction::ToPlugin => "->",
        Direction::FromPlugin => "<-",
    };
    let line = format!("koi-trace {plugin} {arrow} {text}\n");
    match sink() {
        Sink::Off => {}
        Sink::Stderr => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        Sink::File(f) => {
            let _ = crate::schema::lock(f).write_all(line.as_bytes());
        }
    }
}
