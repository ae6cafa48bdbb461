//! Plugin logging: `tracing` events go to stderr as one JSON object per line (`level`, `message`,
//! `target`, fields), which the host re-emits in its own log tagged with the plugin's name. The
//! level filter comes from `KOI_LOG` (the host passes its own down), default `info`.

use tracing_subscriber::EnvFilter;

pub(crate) fn init() {
    let filter = EnvFilter::try_from_env("KOI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .without_time()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
