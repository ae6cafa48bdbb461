//! The host's log: `tracing` to stderr, filtered by `KOI_LOG` (default `warn`; `-v` gives `info`,
//! `-vv` `debug`), and the relay that re-emits each plugin stderr line in it, tagged with the
//! plugin's name and the level the plugin gave (unstructured lines are logged at `warn`). Relayed
//! text has its control characters escaped ([`crate::sanitize::line`]): a plugin's log may quote
//! remote data, and the host log is read on a terminal.

use serde_json::Value;
use tracing_subscriber::EnvFilter;

/// The filter in force, also handed to plugins as `KOI_LOG`.
pub fn filter_string(verbosity: u8) -> String {
    match std::env::var("KOI_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => match verbosity {
            0 => "warn".into(),
            1 => "info".into(),
            2 => "debug".into(),
            _ => "trace".into(),
        },
    }
}

/// Installs the stderr subscriber.
pub fn init(filter: &str, color: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Re-emits one stderr line of a plugin in the host's log; returns the text kept for crash reports.
pub fn relay_plugin_line(plugin: &str, line: &str) -> String {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(line).ok();
    let Some(mut fields) = parsed.filter(|m| m.contains_key("level")) else {
        let line = crate::sanitize::line(line);
        tracing::warn!(plugin, "{line}");
        return line.into_owned();
    };
    let level = fields
        .remove("level")
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
        .unwrap_or_default();
    let message = match fields.remove("message").or_else(|| {
        fields
            .get_mut("fields")
            .and_then(|f| f.get_mut("message"))
            .map(Value::take)
    }) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    fields.remove("target");
    fields.remove("timestamp");
    // Decoded JSON strings may hold raw control characters (`\u001b` decodes to ESC).
    let message = crate::sanitize::line(&message).into_owned();
    let extra = if fields.is_empty() {
        String::new()
    } else {
        format!(" {}", crate::sanitize::json(&Value::Object(fields)))
    };
    match level.as_str() {
        "ERROR" => tracing::error!(plugin, "{message}{extra}"),
        "WARN" | "WARNING" => tracing::warn!(plugin, "{message}{extra}"),
        "INFO" => tracing::info!(plugin, "{message}{extra}"),
        "DEBUG" => tracing::debug!(plugin, "{message}{extra}"),
        _ => tracing::trace!(plugin, "{message}{extra}"),
    }
    format!("{message}{extra}")
}
