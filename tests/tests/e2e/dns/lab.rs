//! The three-host dns lab: A serves (koi-dns + koi-mdns under the daemon), B and C as needed.

use super::install;
use crate::support::DaemonProc;
use crate::support::netlab::SwitchLab;

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

    /// `@A` for dig.
    pub fn at_a(&self) -> String {
        format!("@{}", self.a_ip())
    }
}
