//! Certmesh as a source: a member that joins the mesh on A resolves at A's koi-dns, by the
//! `certmesh.members.changed` event and `certmesh/members` (the contract of the certmesh names
//! issue), and `koi dns lookup` names certmesh as the source.

use super::{SOON, addresses, dig};
use crate::support::certmesh::{ca_under_daemon, fresh_code, join_from_b};
use crate::support::netlab::NetLab;
use crate::support::{dns_bin, root_or_skip, wait_until};

#[test]
fn a_joined_members_name_resolves() {
    if !root_or_skip("a_joined_members_name_resolves") {
        return;
    }
    let lab = NetLab::new("dnsm");
    lab.a.env.install(&dns_bin(), "dns");
    let (_daemon, ca) = ca_under_daemon(&lab, &["--no-trust", "--json"]);
    lab.a
        .env
        .run(&[
            "dns",
            "serve",
            "--listen",
            &format!("{}:53", lab.a.ip),
            "--upstream",
            "10.255.255.1",
        ])
        .expect_code(0);
    let mut last = i64::MIN;
    let code = fresh_code(&ca.uri, &mut last);
    join_from_b(&lab, &ca.fingerprint, &code, &["--no-trust", "--json"]).expect_code(0);
    let at = format!("@{}", lab.a.ip);
    let name = format!("{}.lan", lab.b.hostname);
    wait_until("the member's name resolves at A", SOON, || {
        addresses(&dig(&lab.b, &[&at, &name])) == vec![lab.b.ip.clone()]
    });
    let looked = lab.a.env.run(&["dns", "lookup", &name, "--json"]);
    looked.expect_code(0);
    assert_eq!(looked.json()["source"], "certmesh", "{}", looked.stdout);
}
