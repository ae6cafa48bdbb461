//! koi-dns: names for everything on the LAN. A small authoritative server for one zone (`lan` by
//! default) whose names come from three sources in priority order — static entries, certmesh
//! members, mDNS hosts and service aliases — with names outside the zone forwarded upstream
//! without caching. It refuses clients outside the local subnets, answers local names only with
//! private addresses, and rate-limits each client. The blueprint is `docs/dns.md`.
//!
//! # Methods
//! | Method | CLI | What it does |
//! |---|---|---|
//! | `serve` | `koi dns serve [--listen ADDR:PORT]... [--zone lan] [--upstream ADDR[:PORT]]...` | serve (foreground until Ctrl-C; under the daemon in the background, kept across restarts) |
//! | `stop` | `koi dns stop` | stop the daemon's server and forget its configuration |
//! | (protocol `status`) | `koi dns status` | listeners, zone, upstreams, counters, p50/p99 |
//! | `lookup` | `koi dns lookup NAME [--type A\|AAAA\|SRV\|TXT\|PTR\|ANY]` | a real query to the running server, or in-process; says which source answered |
//! | `add` | `koi dns add NAME IP...` | a static entry, saved atomically, live at once |
//! | `remove` | `koi dns remove NAME` | remove a static entry |
//! | `list` | `koi dns list` | every resolvable name with source, addresses and TTL |
//!
//! Events published: `dns.alias.created`, `dns.alias.removed`. Subscribed: `mdns.service.*`,
//! `certmesh.members.changed`. Calls: `mdns/query`, `certmesh/members`, `certmesh/request-names`.
//!
//! # Modules
//! - [`verbs`] (`serve`, `stop`, the `server` service), [`entries`] (`add`, `remove`, `list`),
//!   [`lookup`], [`status`]: one per verb family.
//! - [`state`] — the sources, the table, the running server.
//! - [`sources`] — mDNS events, certmesh members, alias events and SAN requests.
//! - [`records`] — building the table from the sources (priority, aliases, private-only).
//! - [`snapshot`] — the table and how one question is answered.
//! - [`wire`] — one packet in, one verdict out (ACL, rate limit, EDNS0, truncation, FORMERR).
//! - [`fast`] — prebuilt answers for the common A/AAAA query (the hot path).
//! - [`server`] — UDP workers on one socket per address, TCP, bind errors with their fix.
//! - [`forward`] — relaying to upstreams with a deadline.
//! - [`ratelimit`], [`stats`], [`config`], [`addrs`].

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod addrs;
pub mod config;
pub mod entries;
pub mod fast;
pub mod forward;
pub mod lookup;
pub mod ratelimit;
pub mod records;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod state;
pub mod stats;
pub mod status;
pub mod verbs;
pub mod wire;

#[cfg(test)]
mod records_tests;
#[cfg(test)]
mod wire_tests;

use koi_mdns_api::ALL_SERVICE_EVENTS;
use koi_sdk::{Method, Plugin};
use std::time::Duration;

/// The koi-dns plugin: every method, event and service.
pub fn plugin() -> Plugin {
    let serve = Method::new(
        "serve",
        "Serve the zone over UDP and TCP (foreground until Ctrl-C; under `koi daemon` in the \
         background, kept across restarts)",
        verbs::serve,
    )
    .description(
        "Default listeners: port 53 on this machine's private LAN addresses (never a public one, \
         never 0.0.0.0 unless written out). Names outside the zone are forwarded to --upstream \
         (default: /etc/resolv.conf minus loopback stubs and this machine). Clients outside the \
         local subnets and --allow get REFUSED.",
    )
    .long_running()
    .handles_cancellation()
    .mutating()
    .local_only()
    .example("koi dns serve")
    .example("koi dns serve --listen 192.168.1.10:53 --zone home.arpa --upstream 192.168.1.1")
    .example("koi dns serve --listen 127.0.0.1:5300 --rate-limit 0");
    let stop = Method::new(
        "stop",
        "Stop the daemon's DNS server and forget its configuration",
        verbs::stop,
    )
    .mutating()
    .local_only()
    .example("koi dns stop");
    let lookup = Method::new(
        "lookup",
        "Resolve a name as the server would, saying which source answered",
        lookup::lookup,
    )
    .positional(["name"])
    .short("type", 't')
    .example("koi dns lookup grafana.lan")
    .example("koi dns lookup _grafana._tcp.lan --type SRV");
    let add = Method::new(
        "add",
        "Add a static name (saved, live at once)",
        entries::add,
    )
    .positional(["name", "ip"])
    .mutating()
    .local_only()
    .example("koi dns add nas 192.168.1.20");
    let remove = Method::new("remove", "Remove a static name", entries::remove)
        .positional(["name"])
        .mutating()
        .local_only()
        .example("koi dns remove nas");
    let list = Method::new(
        "list",
        "Every resolvable name with its source, addresses and TTL",
        entries::list,
    )
    .example("koi dns list --json");
    Plugin::new(
        "dns",
        env!("CARGO_PKG_VERSION"),
        "Names for everything on the LAN (static, certmesh, mDNS)",
    )
    .description(
        "An authoritative DNS server for the `lan` zone fed by static entries, certmesh members \
         and mDNS services, forwarding other names without caching.",
    )
    .method(serve)
    .method(stop)
    .method(lookup)
    .method(add)
    .method(remove)
    .method(list)
    .publishes::<sources::AliasEvent>(
        sources::ALIAS_CREATED,
        "A service alias (grafana.lan) was created from mDNS",
    )
    .publishes::<sources::AliasEvent>(
        sources::ALIAS_REMOVED,
        "A service alias is gone (its last instance left)",
    )
    .state(state::Dns::load)
    .on(ALL_SERVICE_EVENTS, sources::on_mdns)
    .on(sources::MEMBERS_CHANGED, sources::on_members_changed)
    .status(status::report)
    .service("server", verbs::service)
    .shutdown_grace(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declaration_is_valid() {
        assert_eq!(super::plugin().check(), Ok(()));
    }
}
