//! SAN feedback (issue 12 part 4): a service announced over mDNS on a certmesh member becomes the
//! alias `grafana.lan` at the CA's koi-dns, which asks certmesh (`certmesh/request-names`) to put
//! it in the member's next certificate; after a forced renewal the certificate holds it, and
//! `curl https://grafana.lan` — the address from koi-dns, the mesh CA as the only trust — works.

use super::{SOON, addresses, dig};
use crate::support::certmesh::{
    ca_under_daemon, cert_dir, fresh_code, join_from_b, mdns_bin, openssl,
};
use crate::support::netlab::NetLab;
use crate::support::{dns_bin, root_or_skip, wait_until};
use std::time::Duration;

#[test]
fn an_alias_on_a_member_reaches_its_certificate_and_https_validates() {
    if !root_or_skip("an_alias_on_a_member_reaches_its_certificate_and_https_validates") {
        return;
    }
    let lab = NetLab::new("dnss");
    lab.a.env.install(&dns_bin(), "dns");
    lab.a.env.install(&mdns_bin(), "mdns");
    lab.b.env.install(&mdns_bin(), "mdns");
    let (_a, ca) = ca_under_daemon(&lab, &["--no-trust", "--json"]);
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
    let _b = lab.b.env.start_daemon(&[]);
    lab.b
        .env
        .run(&["mdns", "announce", "Grafana", "_grafana._tcp", "443"])
        .expect_code(0);

    let at = format!("@{}", lab.a.ip);
    wait_until("grafana.lan gives B's address", SOON, || {
        addresses(&dig(&lab.a, &[&at, "grafana.lan"])) == vec![lab.b.ip.clone()]
    });
    let b = lab.b.hostname.clone();
    wait_until(
        "certmesh holds grafana.lan as pending for B",
        Duration::from_secs(20),
        || {
            let st = lab.a.env.run(&["certmesh", "status", "--json"]);
            st.stdout.contains("grafana.lan")
                && st.json()["details"]["pending_names"][b.as_str()]
                    .to_string()
                    .contains("grafana.lan")
        },
    );

    let renewed = lab.b.env.run(&["certmesh", "renew", "--now", "--json"]);
    renewed.expect_code(0);
    let dir = cert_dir(&lab.b);
    let sans = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &dir.join("cert.pem").display().to_string(),
    ]);
    assert!(sans.contains("DNS:grafana.lan"), "{sans}");

    let mut server = lab
        .b
        .command(
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-accept",
                "443",
                "-www",
                "-cert",
                &dir.join("cert.pem").display().to_string(),
                "-key",
                &dir.join("key.pem").display().to_string(),
                "-cert_chain",
                &dir.join("fullchain.pem").display().to_string(),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let ip = addresses(&dig(&lab.a, &[&at, "grafana.lan"]))
        .first()
        .cloned()
        .expect("an address");
    let resolve = format!("grafana.lan:443:{ip}");
    let ca_pem = ca.ca_pem.display().to_string();
    let mut ok = false;
    let deadline = std::time::Instant::now() + SOON;
    while !ok && std::time::Instant::now() < deadline {
        let out = lab
            .a
            .command(
                "curl",
                &[
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--cacert",
                    &ca_pem,
                    "--resolve",
                    &resolve,
                    "https://grafana.lan/",
                ],
            )
            .output()
            .expect("curl");
        ok = out.status.success();
        if !ok {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok, "curl https://grafana.lan with the mesh CA failed");
}
