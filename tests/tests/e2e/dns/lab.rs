//! The three-host dns lab: A serves (koi-dns + koi-mdns under the daemon), B and C as needed.

use super::install;
use crate::support::netlab::SwitchLab;
use crate::support::{DaemonProc, fixture};

/// A lab with A's daemon started and `koi dns serve` run on A with `serve_args`.
pub struct DnsLab {
    /// The hosts.
    pub lab: SwitchLab,
    /// A's daemon.
    pub a_daemon: Option<DaemonProc>,
}

impl DnsLab {
    /// Three hosts; A serves with `serve_args` appended to `koi dns serve`.
    pub fn new(serve_args: &[&str]) -> Self {
        let lab = SwitchLab::new("dns", 3);
        install(lab.host(0), true);
        // Records the dns.alias.* events A's koi-dns publishes (aliaswatch.events in its pid dir).
        lab.host(0)
            .env
            .install(&fixture("koi-aliaswatch"), "aliaswatch");
        let a_daemon = Some(lab.host(0).env.start_daemon(&[("KOI_LOG", "info")]));
        let me = Self { lab, a_daemon };
        me.serve(serve_args);
        me
    }

    /// Runs `koi dns serve` on A (under its daemon: returns at once).
    pub fn serve(&self, serve_args: &[&str]) {
        let mut args = vec!["dns", "serve", "--json"];
        args.extend_from_slice(serve_args);
        let run = self.lab.host(0).env.run(&args);
        run.expect_code(0);
        assert_eq!(run.json()["persistent"], true, "{}", run.stdout);
    }

    /// A's address.
    pub fn a_ip(&self) -> String {
        self.lab.host(0).ip.clone()
    }

    /// The `dns.alias.*` events A's koi-dns published, as recorded by the koi-aliaswatch fixture.
    pub fn alias_events(&self) -> String {
        std::fs::read_to_string(self.lab.host(0).env.pids.join("aliaswatch.events"))
            .unwrap_or_default()
    }

    /// `@A` for dig.
    pub fn at_a(&self) -> String {
        format!("@{}", self.a_ip())
    }
}
