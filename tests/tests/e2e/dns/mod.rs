//! koi-dns end to end (issue 12), in lab namespaces with `dig` as the client: host A serves with
//! koi-dns and koi-mdns under `koi daemon`, host B announces with koi-mdns (or runs an upstream
//! dnsmasq), host C asks. Static entries, mDNS aliases and SRV, forwarding and SERVFAIL, the
//! refusals (foreign subnet, public addresses, flood), the `local` zone and port 53 without
//! privilege.

mod foreground;
mod lab;
mod mesh;
mod names;
mod safety;
mod san;

use crate::support::certmesh::mdns_bin;
use crate::support::dns_bin;
use crate::support::netlab::LabHost;
use std::time::Duration;

/// Installs koi-dns and koi-mdns on `host`.
pub fn install(host: &LabHost, dns: bool) {
    if dns {
        host.env.install(&dns_bin(), "dns");
    }
    host.env.install(&mdns_bin(), "mdns");
}

/// `dig` on `from` with `args`; the whole output.
pub fn dig(from: &LabHost, args: &[&str]) -> String {
    let mut all = vec!["+tries=1", "+time=3"];
    all.extend_from_slice(args);
    let out = from.command("dig", &all).output().expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status word of a dig answer (`NOERROR`, `NXDOMAIN`, …).
pub fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned()
}

/// The A addresses in a dig answer section, in order.
pub fn addresses(out: &str) -> Vec<String> {
    let mut in_answer = false;
    let mut found = Vec::new();
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if line.starts_with(";;") || line.trim().is_empty() {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 && (f[3] == "A" || f[3] == "AAAA") {
                found.push(f[4].to_owned());
            }
        }
    }
    found
}

/// A generous deadline for things that happen "at once" over the lab link.
pub const SOON: Duration = Duration::from_secs(10);
