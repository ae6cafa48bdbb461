//! Measures, in whatever profile it is built with (run it with `--release`), how long the
//! expensive operations take: unlocking the CA store (one Argon2id derivation + AES-GCM open +
//! key parse), the bare Argon2id derivation at a few cost settings, and issuing one leaf from a
//! CSR and for a device. Not a test: it prints figures and asserts nothing about time.
//!
//! `cargo run --release --example measure`

use std::time::{Duration, Instant};

use koi_certmesh_core::*;
use time::OffsetDateTime;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("koi-certmesh-measure-{}", std::process::id()));
    let now = OffsetDateTime::now_utc();
    let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"])?;

    println!("Argon2id derivation (median of 5):");
    for (label, p) in [
        (
            "m=19 MiB t=2 p=1 (OWASP minimum)",
            KdfParams {
                m_cost_kib: 19 * 1024,
                t_cost: 2,
                p_cost: 1,
            },
        ),
        ("m=64 MiB t=3 p=1 (RECOMMENDED)  ", KdfParams::RECOMMENDED),
        (
            "m=256 MiB t=3 p=1               ",
            KdfParams {
                m_cost_kib: 256 * 1024,
                t_cost: 3,
                p_cost: 1,
            },
        ),
    ] {
        let mut v = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let _k = SealingKey::derive_new(&Passphrase::new("measure passphrase"), p)?;
            v.push(t.elapsed());
        }
        println!("  {label}  {}", ms(median(v)));
    }

    let store = CaStore::new(dir.join("ca"));
    let pass = Passphrase::new("measure passphrase");
    let ca = CertAuthority::create(&CaOptions::new("Koi certmesh CA (measure)", scope), now)?;
    store.create(ca, TotpSecret::generate(), &pass, KdfParams::RECOMMENDED)?;
    let mut v = Vec::new();
    let mut unlocked = None;
    for _ in 0..5 {
        let t = Instant::now();
        let u = store.unlock(&pass)?;
        v.push(t.elapsed());
        unlocked = Some(u);
    }
    println!(
        "Unlock CA store, RECOMMENDED (median of 5): {}",
        ms(median(v))
    );
    let Some(u) = unlocked else { return Ok(()) };
    let ca = u.ca();

    let mut req = LeafRequest::new("stone-01.lab.example");
    req.ip_addresses.push("10.77.0.5".parse().expect("literal"));
    // A member's CSR, made once (its cost is the member's, not the CA's).
    let member = rcgen::KeyPair::generate().map_err(|e| Error::Crypto {
        operation: "keygen",
        reason: e.to_string(),
    })?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&member)
        .and_then(|c| c.pem())
        .map_err(|e| Error::Crypto {
            operation: "csr",
            reason: e.to_string(),
        })?;

    let n = 200;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = ca.issue_from_csr(&csr, &req, now)?;
        v.push(t.elapsed());
        std::hint::black_box(c);
    }
    println!(
        "Issue one leaf from a CSR (verify CSR + sign), median of {n}: {}",
        ms(median(v))
    );
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = ca.issue_for_device(&req, now)?;
        v.push(t.elapsed());
        std::hint::black_box(c);
    }
    println!(
        "Issue one leaf for a device (keygen + sign), median of {n}: {}",
        ms(median(v))
    );

    let log_path = dir.join("audit.log");
    let mut log = AuditLog::open(&log_path, ca)?;
    let mut v = Vec::with_capacity(50);
    for i in 0..50 {
        let t = Instant::now();
        log.append(
            ca,
            audit::events::CERT_ISSUED,
            "measure",
            serde_json::json!({"i": i}),
            now,
        )?;
        v.push(t.elapsed());
    }
    println!(
        "Append one audit entry (sign + write + fsync), median of 50: {}",
        ms(median(v))
    );
    let t = Instant::now();
    let verdict = audit::verify(&log_path, &ca.public_key_sec1(), None)?;
    println!(
        "Verify a 50-entry audit log: {} ({verdict:?})",
        ms(t.elapsed())
    );

    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
