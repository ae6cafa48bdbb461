//! koi-mdns: find and advertise services on the local network with mDNS/DNS-SD (RFC 6762/6763),
//! as a Koi plugin. The host starts `koi-mdns` and calls its methods over stdio JSON-RPC; the
//! network work is done by the `mdns-sd` crate, restricted to the interfaces our rule allows.
//!
//! # Methods
//! | Method | CLI | What it does |
//! |---|---|---|
//! | `discover` | `koi mdns discover [TYPE] [--timeout S] [--watch] [--interface IF]` | browse; table, or `+ = -` stream |
//! | `announce` | `koi mdns announce NAME TYPE PORT [--txt K=V]... [--host H] [--ip A]...` | announce until Ctrl-C (daemon: persist) |
//! | `unannounce` | `koi mdns unannounce NAME TYPE` | withdraw, with goodbye packets |
//! | `resolve` | `koi mdns resolve HOST.local` | a host name's addresses |
//! | `state` (+ protocol `status`) | `koi mdns state`, `koi status` | interfaces, announcements, cache |
//! | `advertise`, `withdraw`, `query` | — (other plugins) | persistent announcements, cache lookups |
//!
//! `announce`, `unannounce`, `advertise` and `withdraw` are `local_only` (never served over the
//! daemon's unauthenticated REST API), and an announcement can be withdrawn only by its owner,
//! the caller the host names in the per-call context (docs/mdns.md, "Ownership").
//!
//! Deprecated root aliases: `koi discover`, `koi announce`. Events: `mdns.service.appeared`,
//! `mdns.service.changed`, `mdns.service.removed`, `mdns.host.seen`. The blueprint is `docs/mdns.md`.
//!
//! # Modules
//! - [`discover`], [`announce`], [`resolve`], [`status`] (`state`, `status`, `query`): one per method family.
//! - [`engine`] — shared state, mdns-sd daemons, registrations.
//! - [`cache`] — the discovered-service cache and change diffing.
//! - [`events`] — event topics and payloads.
//! - [`interfaces`] — the interface selection rule.
//! - [`names`], [`txt`]: validation of service types, instance/host names, TXT entries.
//! - [`port`] — the port-5353 check.
//! - [`background`] — the `browse` service (daemon mode) and goodbyes at shutdown (every mode).
//! - [`liveness`] — the periodic re-check of known services under the daemon (`mdns.host.seen`).
//! - [`error`] — `MdnsError`.

#![forbid(unsafe_code)]

pub mod announce;
pub mod background;
pub mod cache;
pub mod discover;
pub mod engine;
pub mod error;
pub mod events;
pub mod interfaces;
pub mod liveness;
pub mod names;
pub mod port;
pub mod resolve;
pub mod status;
pub mod txt;

use engine::Engine;
use koi_sdk::{Method, Plugin};

/// The deprecation warning of `koi discover` (seed 000, phase 0).
pub const DISCOVER_ALIAS_WARNING: &str = "Warning: `koi discover` is deprecated. Use `koi mdns discover`.\nThis alias will be removed in the next release.";
/// The deprecation warning of `koi announce`.
pub const ANNOUNCE_ALIAS_WARNING: &str = "Warning: `koi announce` is deprecated. Use `koi mdns announce`.\nThis alias will be removed in the next release.";

/// The koi-mdns plugin: every method, event and alias.
pub fn plugin() -> Plugin {
    let discover = Method::new(
        "discover",
        "Find services (or, without TYPE, service types) on the local network",
        discover::run,
    )
    .description(
        "Browses for --timeout seconds (default 3) and prints what answered. With --watch, streams \
         one line per change until Ctrl-C: `+` appeared, `=` changed, `-` removed (NDJSON with --json).",
    )
    .positional(["service_type"])
    .short("watch", 'w')
    .short("timeout", 't')
    .long_running()
    .handles_cancellation()
    .streams::<discover::WatchItem>()
    .example("koi mdns discover _http._tcp")
    .example("koi mdns discover _http._tcp --watch --json")
    .example("koi mdns discover");

    let announce = Method::new(
        "announce",
        "Advertise a service until Ctrl-C (under `koi daemon`: until unannounced)",
        announce::announce,
    )
    .positional(["name", "service_type", "port"])
    .long_running()
    .handles_cancellation()
    .mutating()
    .local_only()
    .example("koi mdns announce \"Grafana\" _http._tcp 3000 --txt path=/")
    .example("koi mdns announce printer _ipp._tcp 631 --host printer --ip 10.0.0.7");

    let unannounce = Method::new(
        "unannounce",
        "Withdraw an announcement this koi holds, sending goodbye packets",
        announce::withdraw,
    )
    .positional(["name", "service_type"])
    .mutating()
    .local_only()
    .example("koi mdns unannounce Grafana _http._tcp");

    let resolve = Method::new(
        "resolve",
        "Look up a .local host name's addresses",
        resolve::run,
    )
    .positional(["host"])
    .short("timeout", 't')
    .example("koi mdns resolve nas.local");

    // `status` is reserved by the protocol (it answers `koi status` and the host's own
    // `koi mdns status`), so the typed verb is `state` (see docs/mdns.md, "Deviations").
    let state = Method::new(
        "state",
        "Interfaces in use, announcements, and discovered services with last-seen times",
        status::run,
    )
    .example("koi mdns state --json");

    let advertise = Method::new(
        "advertise",
        "Announce a service for another plugin until withdrawn (e.g. _certmesh._tcp with CA details in TXT)",
        announce::advertise,
    )
    .not_on_cli()
    .mutating()
    .local_only();

    let withdraw = Method::new(
        "withdraw",
        "Withdraw an announcement made with `advertise`, sending goodbye packets",
        announce::withdraw,
    )
    .not_on_cli()
    .mutating()
    .local_only();

    let query = Method::new(
        "query",
        "Look up discovered services in the cache (with last-seen times)",
        status::query,
    )
    .not_on_cli();

    Plugin::new(
        "mdns",
        env!("CARGO_PKG_VERSION"),
        "Find and advertise services on the local network (mDNS/DNS-SD)",
    )
    .description(
        "Interoperates with Avahi and Apple's mDNSResponder. Runs on every multicast-capable \
         interface except loopback, VPN/tunnel links and container/VM bridges; --interface overrides.",
    )
    .method(discover)
    .method(announce)
    .method(unannounce)
    .method(resolve)
    .method(state)
    .method(advertise)
    .method(withdraw)
    .method(query)
    .publishes::<events::ServiceEventPayload>(events::APPEARED, "A service was seen for the first time")
    .publishes::<events::ServiceChangedPayload>(events::CHANGED, "A service's host, addresses, port or TXT changed")
    .publishes::<events::ServiceRemovedPayload>(events::REMOVED, "A service left (goodbye packet, TTL expiry, or no answer to the re-check)")
    .publishes::<events::HostSeenPayload>(events::HOST_SEEN, "A known host answered the periodic re-check of its services")
    .deprecated_alias("discover", "discover", DISCOVER_ALIAS_WARNING)
    .deprecated_alias("announce", "announce", ANNOUNCE_ALIAS_WARNING)
    // Koi's REST API before namespacing (seed 000, phase 0): the daemon answers these with 301.
    .legacy_route("/discover", "discover")
    .legacy_route("/status", "status")
    .state(|_| Engine::default())
    .status(status::report)
    .service("browse", background::browse)
    .background(background::goodbyes)
}
