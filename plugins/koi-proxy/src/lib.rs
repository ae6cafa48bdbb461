//! koi-proxy: `https://grafana.lan` for any plain-HTTP service on this machine, with the
//! certificate certmesh issued, swapped live on renewal without dropping a connection. The
//! blueprint (invariants, each with its test; defaults and limits) is `docs/proxy.md`.
//!
//! Entries are stored in `$KOI_HOME/proxy/entries.json` and served by the `serve` service under
//! `koi daemon`; without the daemon, `add` stores the entry and says the daemon serves it.
//!
//! # Methods
//! | Method | CLI | What it does |
//! |---|---|---|
//! | `add` | `koi proxy add NAME --listen PORT --backend URL [--backend-remote] [--host NAME.ZONE] [--redirect-http PORT] [--cert-host H] [--trusted-proxy CIDR]... [--timeout-secs N]` | store and serve an entry; ask certmesh for its name |
//! | `remove` | `koi proxy remove NAME` | stop serving an entry and forget it |
//! | `list` | `koi proxy list` | the stored entries |
//! | `status` | `koi proxy status` | listening, backend, certificate (missing name), counts |
//!
//! # Events
//! `proxy.backend.down` and `proxy.backend.up` ([`backend::BackendEvent`]): a backend's state
//! changed, as traffic showed it. Subscribes to `certmesh.cert.renewed` (reload certificates).
//!
//! # Modules
//! - [`add`], [`verbs`] (`remove`, `list`), [`status`]: the verbs.
//! - [`config`] — entries, their checks and file; [`state`] — the plugin state and routing table.
//! - [`service`] — the daemon service: listeners, rebuilds, reloads, events.
//! - [`listener`] — TLS/SNI and redirect listeners; [`limits`] — timeouts, caps, idle tracking.
//! - [`forward`] — one request to the backend; [`headers`] — hop-by-hop and forwarding headers;
//!   [`body`] — streamed response bodies; [`backend`] — loopback rule, health;
//!   [`local`] — an HTTP/1.1 client connection's own backend connections, driven in its task;
//!   [`pool`] — a serving thread's idle backend connections, for first requests and HTTP/2.
//! - [`certs`] — certificate files, checked and swapped atomically; [`names`] — certmesh calls;
//!   [`mirror`] — the entries mirrored in this machine's roster entry.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod add;
pub mod backend;
pub mod body;
pub mod certs;
pub mod config;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod listener;
pub mod local;
pub mod mirror;
pub mod names;
pub mod pool;
pub mod service;
pub mod state;
pub mod status;
pub mod verbs;

use koi_sdk::{Context, Delivery, Method, Plugin};
use std::time::Duration;

async fn on_renewed(ctx: Context, _: Delivery<serde_json::Value>) {
    if let Ok(proxy) = ctx.state::<state::Proxy>() {
        proxy.reload.notify_one();
    }
}

/// The koi-proxy plugin: every method.
pub fn plugin() -> Plugin {
    let add = Method::new(
        "add",
        "Serve a plain-HTTP service on this machine over HTTPS, e.g. https://grafana.lan",
        add::run,
    )
    .description(
        "Stores the entry and, under `koi daemon`, serves it at once: TLS 1.2/1.3 with the \
         certificate certmesh wrote for this machine, HTTP/2 and HTTP/1.1, several entries per \
         port chosen by SNI. Asks certmesh to add NAME.<zone> to the certificate at its next \
         renewal, and mirrors the entries in this machine's roster entry. The backend must be \
         this machine unless --backend-remote.",
    )
    .positional(["name"])
    .mutating()
    .local_only()
    .example("koi proxy add grafana --listen 443 --backend http://localhost:3000")
    .example("koi proxy add jellyfin --backend http://127.0.0.1:8096 --redirect-http 80")
    .example("koi proxy add nas --backend http://10.0.0.7:5000 --backend-remote --host nas.lan");
    let remove = Method::new(
        "remove",
        "Stop serving an entry and forget it",
        verbs::remove,
    )
    .positional(["name"])
    .mutating()
    .local_only()
    .example("koi proxy remove grafana");
    let list = Method::new("list", "The stored entries", verbs::list).example("koi proxy list");
    Plugin::new(
        "proxy",
        env!("CARGO_PKG_VERSION"),
        "HTTPS in front of plain-HTTP services, with certmesh certificates swapped live",
    )
    .description("Serves https://NAME.<zone> for services on this machine under `koi daemon`, with the certificate certmesh issued; renewals are picked up without dropping a connection.")
    .state(state::Proxy::load)
    .publishes::<backend::BackendEvent>(backend::DOWN, "A backend stopped answering")
    .publishes::<backend::BackendEvent>(backend::UP, "A backend answers again")
    .on("certmesh.cert.renewed", on_renewed)
    .service("serve", service::run)
    .shutdown_grace(Duration::from_secs(3))
    .worker_threads(2)
    .method(add)
    .method(remove)
    .method(list)
    .status(status::report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declaration_is_valid() {
        assert_eq!(super::plugin().check(), Ok(()));
    }
}
