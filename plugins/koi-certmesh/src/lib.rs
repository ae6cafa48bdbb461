//! koi-certmesh: a private certificate authority for the LAN, as a Koi plugin. Machine A runs
//! `koi certmesh create`; machine B runs `koi certmesh join` with a six-digit code; both then hold
//! certificates every TLS client on A and B trusts, at `$KOI_HOME/certs/<host>/`.
//!
//! Key isolation: the CA key and the TOTP secret are decrypted only in this process (in zeroizing
//! types), and leaf keys are generated where they are used. Nothing secret crosses the pipe
//! except what the user types (passphrase, code), in fields marked `x-koi-secret`. The blueprint
//! is `docs/certmesh.md`; the threat model is `docs/security.md`.
//!
//! # Methods
//! | Method | CLI | What it does |
//! |---|---|---|
//! | `create` | `koi certmesh create [--profile P] [--operator N] [--domain D]... [--subnet C]... [--entropy E] [--passphrase-file F] [--unconstrained]` | new mesh, this machine its CA |
//! | `unlock` | `koi certmesh unlock [--passphrase-file F]` | open the CA key in the daemon |
//! | `join` | `koi certmesh join [--ca HOST:PORT] [--fingerprint FP] [--code C]` | enroll this machine |
//! | `issue` | `koi certmesh issue NAME... [--ip A]... [--out DIR] [--force] [--days N]`, `koi certmesh issue --renew NAME [--days N]` | certificate + key for a device; re-issue it with the same key |
//! | `trust` | `koi certmesh trust install\|remove\|status [--fingerprint FP] [--name N]` | the root in the trust stores; every koi root found |
//! | `leave` | `koi certmesh leave [--yes]` | leave the mesh (destroys it on the CA): trust, state, certificates |
//! | `log` | `koi certmesh log [--verify] [--last N]` | the audit log |
//! | `rotate-secret` | `koi certmesh rotate-secret [--passphrase-file F]` | new enrollment secret and QR code; old codes refused |
//! | `open-enrollment`, `close-enrollment` | `koi certmesh open-enrollment [--minutes N]` | the enrollment window |
//! | `renew` | `koi certmesh renew [--now] [--keep-key]` | on a member: renew its certificate (a fresh key unless --keep-key) |
//! | `set-hook` | `koi certmesh set-hook --reload CMD \| --clear \| --test [--timeout-secs N]` | the command run after each renewal |
//! | `status` | `koi certmesh status` | mesh, role, lock, expiry, members, next renewal, hook |
//! | `members` | `koi certmesh members` | the mesh's machines: host, names, addresses, expiry, role (any caller) |
//! | `request-names` | `koi certmesh request-names NAME... [--host H] [--requester R]` | names for a machine's next certificate (plugins and CLI) |
//! | `set-proxy-entries` | (koi-proxy) | this machine's proxy entries, mirrored into its roster entry (plugins and CLI) |
//! | `promote` | `koi certmesh promote [--code C] [--passphrase-file F]` | on a member: become a standby CA (CLI only) |
//!
//! # Modules
//! - [`create`], [`unlock`], [`join`], [`issue`], [`trust`], [`log`], [`enrollment`],
//!   [`rotate`], [`leave`], [`status`]: one per verb.
//! - [`authority`] — the CA at run time: sessions, enrollment, audit; [`signing`] — the signing
//!   session of one command; [`totp_state`] — the enrollment-code guard's saved state.
//! - [`refusals`] — refused joins recorded in bounded, coalesced entries (signed or pending);
//!   [`pending`] — those recorded while locked, until the next unlock signs them in.
//! - [`api`] (server) and [`client`], over [`tls`] with bodies from [`wire`].
//! - [`background`] — the daemon-mode `api` service: serve the API, advertise over mDNS.
//! - [`truststore`] — system, NSS and Java trust stores.
//! - [`leaf`] — the names and addresses a member's certificate gets; [`ownership`] — no name or
//!   address in two entries; [`out_dir`] — where `issue` may write; [`devices`] — device
//!   lifetimes (`--days`), devices expiring soon, `issue --renew`.
//! - [`layout`], [`files`], [`names`], [`x509`], [`secrets`], [`entropy`], [`app`], [`error`].
//! - Renewal: [`renew`] (the verb and one renewal), [`schedule`] (the daemon's renewal service and
//!   the record `status` shows), [`renew_files`] (journalled install), [`hooks`] (reload hooks),
//!   [`renew_api`] (the CA's `POST /v1/certmesh/renew`), [`renew_batch`] (the CA's renewal
//!   worker: concurrent renewals committed together), [`certify`] (checks shared with join),
//!   [`client_auth`] (client certificates on the API), [`clock`] (wall clock and the debug-only
//!   test clock).
//! - [`heartbeat`] — the member's heartbeat to the CA (daemon service, `status` record,
//!   `certmesh.heartbeat` events).
//! - Renewal pushed by the CA: [`push`] (the CA's `push` service: when, retries, audit, status),
//!   [`push_send`] (one push: re-sign the member's key, deliver), [`push_listen`] (the member's
//!   push endpoint, `push-receiver` service) and [`push_accept`] (what a member accepts).
//! - The CA's own API certificate: [`ca_renew`] (renewed at 2/3 of its lifetime, signed locally)
//!   and [`hot_cert`] (the API's swappable certificate: no restart, no dropped connection).
//! - For other plugins: [`members`] (`members`, the `certmesh.members.changed` service),
//!   [`request_names`] (`request-names`), [`pending_names`] (applied at renewal), [`proxy_entries`]
//!   (`set-proxy-entries`), [`names_api`] (their member → CA routes over mutual TLS).
//! - The standby CA: [`standby`] (`promote`), [`standby_api`] (the primary's routes),
//!   [`transfer`] (the end-to-end sealed transfer), [`standby_state`] (the standby's files,
//!   record and status), [`standby_sync`] (signed roster manifests, the daemon's sync service),
//!   [`standby_audit`] (the audit log's append-only sync), [`standby_unlock`] (`unlock` on a
//!   standby).
//! - Failover: [`presence`] (role and term in the `_certmesh._tcp` TXT, the standby's own
//!   advertisement, its watch on the primary through mDNS and the heartbeat), [`takeover`]
//!   (the standby becomes the primary after the grace period: tiebreak, term, locked),
//!   [`follow`] (members follow the highest confirmed term; a superseded CA is fenced),
//!   [`demote`] (a primary that sees a higher term stops signing and becomes a standby),
//!   [`partition`] (its partition audit entries, sent to the new primary and kept).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod app;
pub mod authority;
pub mod background;
pub mod ca_renew;
pub mod certify;
pub mod client;
pub mod client_auth;
pub mod clock;
pub mod create;
pub mod demote;
pub mod devices;
pub mod enrollment;
pub mod entropy;
pub mod error;
pub mod files;
pub mod follow;
pub mod heartbeat;
pub mod hooks;
pub mod hot_cert;
pub mod issue;
pub mod join;
pub mod layout;
pub mod leaf;
pub mod leave;
pub mod log;
pub mod members;
pub mod names;
pub mod names_api;
pub mod out_dir;
pub mod ownership;
pub mod partition;
pub mod pending;
pub mod pending_names;
pub mod presence;
pub mod proxy_entries;
pub mod push;
pub mod push_accept;
pub mod push_listen;
pub mod push_send;
pub mod refusals;
pub mod renew;
pub mod renew_api;
pub mod renew_batch;
pub mod renew_files;
pub mod request_names;
pub mod rotate;
pub mod schedule;
pub mod secrets;
pub mod signing;
pub mod standby;
pub mod standby_api;
pub mod standby_audit;
pub mod standby_state;
pub mod standby_sync;
pub mod standby_unlock;
pub mod status;
pub mod takeover;
pub mod tls;
pub mod totp_state;
pub mod transfer;
pub mod trust;
pub mod truststore;
pub mod unlock;
pub mod wire;
pub mod x509;

use koi_sdk::{Method, Plugin};

/// The koi-certmesh plugin: every method.
pub fn plugin() -> Plugin {
    let create = Method::new(
        "create",
        "Create a mesh: this machine becomes its certificate authority",
        create::run,
    )
    .description(
        "Makes an ECDSA P-256 root (sealed with your passphrase: Argon2id → AES-256-GCM), shows \
         the enrollment QR code, certifies this machine and trusts the root here. Under `koi \
         daemon` the CA then answers joins on port 5641.",
    )
    .interactive()
    .long_running()
    .mutating()
    .local_only()
    .example("koi certmesh create")
    .example("koi certmesh create --profile team --operator ana --domain lab.example --subnet 10.77.0.0/24")
    .example("koi certmesh create --entropy system --passphrase-file /root/ca-pass --json");

    let unlock = Method::new(
        "unlock",
        "Open the CA key in koi daemon so it can sign again",
        unlock::run,
    )
    .interactive()
    .long_running()
    .mutating()
    .local_only()
    .example("koi certmesh unlock")
    .example("koi certmesh unlock --passphrase-file /root/ca-pass");

    let join = Method::new(
        "join",
        "Join a mesh with a six-digit code: get a certificate every mesh machine trusts",
        join::run,
    )
    .description(
        "Finds the CA with mDNS (or --ca), pins its fingerprint, sends a certificate request for \
         a key made here (the key never leaves this machine), writes \
         KOI_HOME/certs/<host>/{cert,key,ca,fullchain}.pem and trusts the root. --code is for \
         scripts: each code works once, so it being visible in the process list is acceptable.",
    )
    .interactive()
    .long_running()
    .mutating()
    .local_only()
    .example("koi certmesh join")
    .example("koi certmesh join --ca 10.77.0.1:5641 --fingerprint 3fa2…")
    .example("koi certmesh join --ca stone-01.local --fingerprint 3fa2… --code 123456 --json");

    let issue = Method::new(
        "issue",
        "On the CA: certificate and key for a device that cannot run koi (printer, NAS, router)",
        issue::run,
    )
    .positional(["names"])
    .interactive()
    .mutating()
    .local_only()
    .example("koi certmesh issue printer.lan --ip 10.0.0.7")
    .example("koi certmesh issue nas.lab.example nas --out /srv/nas-certs")
    .example("koi certmesh issue printer.lan --days 90")
    .example("koi certmesh issue --renew printer.lan");

    let trust = Method::new(
        "trust",
        "Install, remove or show this mesh's root in the system, NSS and Java trust stores; list or remove any koi root",
        trust::run,
    )
    .positional(["action"])
    .mutating()
    .local_only()
    .example("koi certmesh trust status")
    .example("sudo koi certmesh trust install")
    .example("sudo koi certmesh trust remove --name koi-certmesh-3fa2c1d09b7e4411");

    // `leave`: member or CA, with confirmation (issue 10 item 8).
    let leave = Method::new(
        "leave",
        "Leave the mesh: remove its root from the trust stores, its state and this machine's certificates",
        leave::run,
    )
    .description(
        "On a member: removes the mesh root from every trust store, membership.json and \
         KOI_HOME/certs/<host>/. On the CA it DESTROYS the mesh (key, roster, enrollment secret): \
         the host name must be typed to confirm, and every member must then join a new mesh. \
         A record (and the CA's audit log) is kept in KOI_HOME/certmesh-left/. Without a \
         terminal, --yes is required.",
    )
    .interactive()
    .mutating()
    .local_only()
    .example("koi certmesh leave")
    .example("koi certmesh leave --yes --json");

    let log = Method::new(
        "log",
        "Show the CA's audit log; --verify checks its hash chain and signatures",
        log::run,
    )
    // --verify reads every line of a log that can hold millions: no inactivity deadline (it
    // reports progress as it goes, and runs off the protocol loop).
    .long_running()
    .example("koi certmesh log --last 20")
    .example("koi certmesh log --verify");

    let rotate_secret = Method::new(
        "rotate-secret",
        "On the CA: a new enrollment secret and QR code; codes from the old one stop working",
        rotate::run,
    )
    .description(
        "Replaces the TOTP secret sealed in the CA vault (rewritten atomically), resets the \
         code guard, audits `secret_rotated` and shows the new QR code and otpauth URI as \
         `create` does. Members keep their certificates. Also the way to get a code after a \
         `create` that was interrupted before it showed one.",
    )
    .interactive()
    .mutating()
    .local_only()
    .example("koi certmesh rotate-secret")
    .example("koi certmesh rotate-secret --passphrase-file /root/ca-pass --json");

    let open_enrollment = Method::new(
        "open-enrollment",
        "On the CA: let machines join (for --minutes, or the profile's default window)",
        enrollment::open,
    )
    .mutating()
    .local_only()
    .example("koi certmesh open-enrollment --minutes 15");

    let close_enrollment = Method::new(
        "close-enrollment",
        "On the CA: refuse joins until enrollment is opened again",
        enrollment::close,
    )
    .mutating()
    .local_only()
    .example("koi certmesh close-enrollment");

    let renew = Method::new(
        "renew",
        "On a member: renew this machine's certificate now (a fresh key unless --keep-key)",
        renew::run,
    )
    .description(
        "Under `koi daemon` certificates renew by themselves at 2/3 of their lifetime; this \
         renews when due, or at once with --now. It authenticates to the CA with the current \
         certificate (mutual TLS), writes the new files atomically, publishes \
         certmesh.cert.renewed and runs the reload hook. Reports the old and new serial, the \
         expiry and whether the key changed.",
    )
    .long_running()
    .mutating()
    .local_only()
    .example("koi certmesh renew --now")
    .example("koi certmesh renew --now --keep-key --json");

    let set_hook = Method::new(
        "set-hook",
        "Set, clear or test the command run after each renewal (e.g. reload a web server)",
        hooks::set_hook,
    )
    .description(
        "The command runs through `sh -c` as the daemon's user after each renewal, with \
         KOI_CERT_DIR and KOI_CERT_HOST set, killed with its process group after the timeout \
         (default 60 s). Its exit status and output tail show in `koi certmesh status`. Local \
         only: the REST API cannot set it.",
    )
    .mutating()
    .local_only()
    .example("koi certmesh set-hook --reload \"systemctl reload nginx\"")
    .example("koi certmesh set-hook --test")
    .example("koi certmesh set-hook --clear");

    let (members, request_names, set_proxy_entries) = for_plugins();

    let promote = Method::new(
        "promote",
        "On a member: become a standby CA (needs a code; the CA key arrives sealed end to end)",
        standby::run,
    )
    .description(
        "Asks the primary (mutual TLS, this member's certificate) for the CA key, the \
         enrollment secret, the signed roster and the audit log, sealed to a one-time X25519 \
         key made here; seals them under a new passphrase typed here (Argon2id) in \
         KOI_HOME/certmesh/standby/, which starts locked (`koi certmesh unlock`). Under \
         `koi daemon` the roster then syncs from the primary. CLI only.",
    )
    .interactive()
    .long_running()
    .mutating()
    .local_only()
    .example("koi certmesh promote")
    .example("koi certmesh promote --code 123456 --passphrase-file /root/standby-pass --json");

    Plugin::new(
        "certmesh",
        env!("CARGO_PKG_VERSION"),
        "A private certificate authority for the LAN: join with a six-digit code, trusted certificates",
    )
    .method(create)
    .method(unlock)
    .method(join)
    .method(issue)
    .method(trust)
    .method(leave)
    .method(log)
    .method(rotate_secret)
    .method(open_enrollment)
    .method(close_enrollment)
    .method(renew)
    .method(set_hook)
    .method(members)
    .method(request_names)
    .method(set_proxy_entries)
    .method(promote)
    .publishes::<members::MembersChanged>(
        members::MEMBERS_CHANGED,
        "The roster changed (join, renewal, leave, names requested, proxy entries): re-call certmesh/members",
    )
    .publishes::<renew::CertRenewed>(
        renew::CERT_RENEWED,
        "A member's certificate was renewed and its new files are in place",
    )
    .publishes::<heartbeat::Heartbeat>(
        heartbeat::HEARTBEAT,
        "A member's heartbeat to its CA (mutual TLS, pinned root, roster version): sent on every beat, ok or failed",
    )
    // One `App` per process, built right after the handshake (it needs KOI_HOME).
    .state(app::App::build)
    .status(status::report)
    .on(
        koi_sdk::protocol::context::host_events::PLUGIN_RESTARTED,
        background::on_plugin_restarted,
    )
    // The CA's API and mDNS advertisement, under `koi daemon` only.
    .service(background::SERVICE, background::service)
    // A member's certificate renewal (crate::schedule), under `koi daemon` only.
    .service(schedule::SERVICE, schedule::service)
    // A member's heartbeat to its CA (crate::heartbeat), under `koi daemon` only.
    .service(heartbeat::SERVICE, heartbeat::service)
    // `certmesh.members.changed` on the CA and on members (crate::members), under `koi daemon`.
    .service(members::SERVICE, members::service)
    // Renewal pushed by the CA (crate::push) and received by members (crate::push_listen).
    .service(push::SERVICE, push::service)
    .service(push_listen::SERVICE, push_listen::service)
    // A standby CA's roster sync (crate::standby_sync), under `koi daemon` only.
    .service(standby_sync::SERVICE, standby_sync::service)
    // CA presence: a standby advertises itself and watches the primary (crate::presence).
    .service(presence::SERVICE, presence::service)
    .on(koi_mdns_api::ALL_SERVICE_EVENTS, presence::on_mdns)
    .on(koi_mdns_api::HOST_SEEN, presence::on_host_seen)
    .shutdown_grace(background::SHUTDOWN_GRACE)
}

/// The methods other plugins call: `members`, `request-names`, `set-proxy-entries`.
fn for_plugins() -> (Method, Method, Method) {
    let members = Method::new(
        "members",
        "The mesh's machines: host, certificate names, addresses, expiry and role",
        members::run,
    )
    .description(
        "On the CA from its roster; on a member from the roster its heartbeat last fetched \
         (empty until the first beat); role \"none\" in no mesh. Devices are not listed. \
         `certmesh.members.changed` announces every new roster version.",
    )
    .example("koi certmesh members")
    .example("koi certmesh members --json");

    let request_names = Method::new(
        "request-names",
        "Ask for DNS names to join a machine's certificate at its next renewal",
        request_names::run,
    )
    .description(
        "For plugins (dns, proxy) and the CLI; refused over REST. Each name is checked now \
         against the mesh's scope and ownership and again at the renewal. On the CA any \
         machine of the mesh may be named with --host; on a member only the member itself, \
         forwarded to the CA over mutual TLS.",
    )
    .positional(["names"])
    .mutating()
    .local_only()
    .example("koi certmesh request-names grafana.lan")
    .example("koi certmesh request-names grafana.lan --host stone-05 --requester dns");

    let set_proxy_entries = Method::new(
        "set-proxy-entries",
        "Mirror this machine's proxy entries into its roster entry (called by koi-proxy)",
        proxy_entries::run,
    )
    .description(
        "The complete list for this machine (at most 64 entries: name, listen_port, backend \
         URL of at most 256 characters). For plugins and the CLI; refused over REST.",
    )
    .mutating()
    .local_only()
    .example("koi certmesh set-proxy-entries --json");
    (members, request_names, set_proxy_entries)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declaration_is_valid_and_announces_the_apis_drain_grace() {
        let plugin = super::plugin();
        assert_eq!(plugin.check(), Ok(()));
        // The host waits this long after `shutdown` before it signals (docs/plugins.md).
        assert_eq!(plugin.manifest().shutdown_grace_ms, Some(2000));
        assert!(
            plugin
                .manifest()
                .subscribes
                .iter()
                .any(|p| p == koi_sdk::protocol::context::host_events::PLUGIN_RESTARTED)
        );
    }
}
