//! Interoperability with OpenSSL: the root and the leaves are inspected with `openssl x509 -text`
//! and verified with `openssl verify`, and a CSR made by `openssl req` (asking for CA:TRUE) is
//! accepted but comes out as a CA:FALSE leaf.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use koi_certmesh_core::*;
use time::OffsetDateTime;

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn text_of(pem: &str, dir: &Path, name: &str) -> String {
    std::fs::write(dir.join(name), pem).unwrap();
    let (ok, text) = openssl(&["x509", "-in", name, "-noout", "-text"], dir);
    assert!(ok, "{text}");
    text
}

fn serial_bytes(text: &str) -> usize {
    // "Serial Number:\n            4a:1b:...": count the hex pairs on the line after the label.
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains("Serial Number:") {
            let rest = l.split("Serial Number:").nth(1).unwrap().trim();
            let s = if rest.is_empty() {
                lines.next().unwrap().trim()
            } else {
                rest
            };
            return s.split(':').filter(|p| p.len() == 2).count();
        }
    }
    panic!("no serial in {text}");
}

#[test]
fn root_certificate_as_openssl_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let scope = Scope::new(&["lab.example"], &[] as &[&str]).unwrap();
    let ca = CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", scope),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let t = text_of(ca.cert_pem(), dir.path(), "ca.pem");
    assert!(
        t.contains("ecdsa-with-SHA256") && t.contains("prime256v1"),
        "{t}"
    );
    assert!(t.contains("CA:TRUE, pathlen:0"), "{t}");
    assert!(t.contains("Certificate Sign, CRL Sign"), "{t}");
    assert!(t.contains("X509v3 Subject Key Identifier"), "{t}");
    assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
    assert!(t.contains("X509v3 Name Constraints: critical"), "{t}");
    assert!(t.contains("DNS:lab.example"), "{t}");
    // DNS constrained ⇒ IPs constrained too (to the private ranges).
    assert!(
        t.contains("IP:10.0.0.0/255.0.0.0") && t.contains("IP:192.168.0.0/255.255.0.0"),
        "{t}"
    );
    assert_eq!(serial_bytes(&t), 16, "{t}");
    let ca2 = CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", Scope::unrestricted()),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let t2 = text_of(ca2.cert_pem(), dir.path(), "ca2.pem");
    assert!(!t2.contains("Name Constraints"));
    assert_ne!(
        t.lines()
            .skip_while(|l| !l.contains("Serial Number"))
            .nth(1),
        t2.lines()
            .skip_while(|l| !l.contains("Serial Number"))
            .nth(1)
    );
}

#[test]
fn openssl_csr_asking_for_ca_becomes_a_verified_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap();
    let ca = CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", scope),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();

    let (ok, out) = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "member.key",
            "-out",
            "member.csr",
            "-subj",
            "/CN=evil.example.com",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example.com,DNS:*.lab.example",
        ],
        d,
    );
    assert!(ok, "{out}");
    let csr = std::fs::read_to_string(d.join("member.csr")).unwrap();
    let mut req = LeafRequest::new("stone-01.lab.example");
    req.ip_addresses.push("10.77.0.5".parse().unwrap());
    let issued = ca
        .issue_from_csr(&csr, &req, OffsetDateTime::now_utc())
        .unwrap();

    let t = text_of(&issued.cert_pem, d, "leaf.pem");
    assert!(t.contains("CA:FALSE"), "{t}");
    assert!(
        t.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{t}"
    );
    assert!(
        t.contains("DNS:stone-01.lab.example") && t.contains("IP Address:10.77.0.5"),
        "{t}"
    );
    assert!(!t.contains("evil") && !t.contains("*."), "{t}");
    assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
    assert_eq!(serial_bytes(&t), 16);

    let (ok, out) = openssl(&["verify", "-CAfile", "ca.pem", "leaf.pem"], d);
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");
    // The leaf is usable for TLS server and client purposes.
    for purpose in ["sslserver", "sslclient"] {
        let (ok, out) = openssl(
            &[
                "verify", "-purpose", purpose, "-CAfile", "ca.pem", "leaf.pem",
            ],
            d,
        );
        assert!(ok, "{purpose}: {out}");
    }
    // The member's own key matches the certificate.
    let (_, a) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-pubkey"], d);
    let (_, b) = openssl(&["pkey", "-in", "member.key", "-pubout"], d);
    assert_eq!(a, b);
    // The leaf cannot act as a CA: a certificate "signed" by it does not verify.
    std::fs::write(d.join("chain.pem"), &issued.fullchain_pem).unwrap();
    let (ok, out) = openssl(
        &[
            "req",
            "-x509",
            "-key",
            "member.key",
            "-subj",
            "/CN=sub",
            "-out",
            "self.pem",
            "-days",
            "1",
        ],
        d,
    );
    assert!(ok, "{out}");
    let (ok, _) = openssl(
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "leaf.pem",
            "self.pem",
        ],
        d,
    );
    assert!(!ok);
}

#[test]
fn device_certificate_verifies_and_key_matches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", Scope::unrestricted()),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    let mut req = LeafRequest::new("printer");
    req.dns_names = vec!["printer.local".into(), "printer.lan".into()];
    req.ip_addresses = vec!["192.168.1.50".parse().unwrap()];
    let b = ca
        .issue_for_device(&req, OffsetDateTime::now_utc())
        .unwrap();
    std::fs::write(d.join("leaf.pem"), &b.cert.cert_pem).unwrap();
    std::fs::write(d.join("leaf.key"), b.key_pem.as_str()).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", "ca.pem", "leaf.pem"], d);
    assert!(ok, "{out}");
    let (_, a) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-pubkey"], d);
    let (_, k) = openssl(&["pkey", "-in", "leaf.key", "-pubout"], d);
    assert_eq!(a, k);
}

#[test]
fn out_of_scope_requests_are_refused_before_signing() {
    let ca = CertAuthority::create(
        &CaOptions::new(
            "Koi certmesh CA (test)",
            Scope::new(&["lab.example"], &["10.77.0.0/24"]).unwrap(),
        ),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    for (dns, ip) in [
        ("stone.other.example", None),
        ("stone.local", None),
        ("stone.lab.example", Some("10.77.1.5")),
        ("stone.lab.example", Some("203.0.113.8")),
        ("stone.lab.example", Some("fd00::1")),
    ] {
        let mut req = LeafRequest::new(dns);
        req.ip_addresses
            .extend(ip.map(|i| i.parse::<std::net::IpAddr>().unwrap()));
        let e = ca.issue_for_device(&req, now).unwrap_err();
        assert!(matches!(e, Error::OutOfScope { .. }), "{dns} {ip:?}: {e}");
        assert!(e.to_string().contains("outside the mesh scope"));
    }
}
