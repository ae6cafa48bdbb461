//! The proxy and certmesh through the host, with a stand-in certmesh (fixture
//! `koi-certmesh-fake`): `add` takes the zone from `certmesh/members` and asks
//! `certmesh/request-names` for `NAME.<zone>`; `status` names the host until the certificate has
//! it; `certmesh.cert.renewed` alone (the file watch switched off) makes new handshakes get the
//! renewed certificate.

use super::{Site, presented_serial};
use crate::support::{poll_until, root_or_skip};
use std::time::Duration;

#[test]
fn add_asks_certmesh_for_the_name_and_a_renewal_event_swaps_the_certificate() {
    if !root_or_skip("proxy certmesh link") {
        return;
    }
    let mut site = Site::new("pxc", 2);
    site.a()
        .env
        .install(&crate::support::fixture("koi-certmesh-fake"), "certmesh");
    let first = site.write_cert(&["stone.lab"]);
    let gate = site.work().join("gate");
    let _b = site.backend(3000, "grafana", &gate);
    site.daemon = Some(site.a().env.start_daemon(&[("KOI_PROXY_NO_WATCH", "1")]));
    let added = site.add(&["grafana", "--backend", "http://127.0.0.1:3000"]);
    assert_eq!(added["entry"]["host"], "grafana.lab", "{added:#}");
    assert!(
        added["names_request"]
            .as_str()
            .is_some_and(|t| t.contains("requested from certmesh")),
        "{added:#}"
    );
    let calls = std::fs::read_to_string(site.a().env.pids.join("certmesh-fake.calls"))
        .expect("certmesh-fake.calls");
    let first_call: serde_json::Value =
        serde_json::from_str(calls.lines().next().expect("a call")).expect("JSON");
    assert_eq!(first_call["names"], serde_json::json!(["grafana.lab"]));
    assert_eq!(first_call["requester"], "proxy");
    site.wait_listening("grafana");
    assert_eq!(site.entry("grafana")["missing_name"], "grafana.lab");
    // The renewal writes the files; without the event (and no file watch) nothing changes.
    let second = site.write_cert(&["stone.lab", "grafana.lab"]);
    let client = site.lab.host(1);
    assert_eq!(
        presented_serial(client, &site.a().ip, "grafana.lab"),
        Some(first)
    );
    site.koi(&["certmesh", "renewed", "--json"]).expect_code(0);
    poll_until(
        "the renewed certificate after certmesh.cert.renewed",
        Duration::from_millis(100),
        || presented_serial(client, &site.a().ip, "grafana.lab").unwrap_or_default(),
        |s| *s == second,
    );
    let entry = site.entry("grafana");
    assert!(entry.get("missing_name").is_none(), "{entry:#}");
}
