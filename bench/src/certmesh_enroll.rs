//! `certmesh-enroll`: the set-up tool of `bench/certmesh/scale.sh`. With the CA's daemon
//! STOPPED, it opens the CA with its passphrase (the operator's secret, as `koi certmesh unlock`
//! does) and enrolls N simulated members through the same library functions the join path
//! (`koi_certmesh::authority::Authority::enroll`) uses after the enrollment code is accepted:
//! [`koi_certmesh::certify::leaf`] (scope, names, CSR check), [`koi_certmesh::certify::sign`]
//! (ownership, lifetime, signature), a signed `member_enrolled` audit entry
//! ([`koi_certmesh::authority::CaSession::audit`], appended and fsynced) and the roster saved
//! with the log's head ([`koi_certmesh::authority::CaSession::save_roster`]). No enrollment code
//! is involved and nothing in koi-certmesh changes: the tool holds the passphrase, which already
//! allows everything (`koi certmesh issue` signs with it too), and it takes the CA's writer lock,
//! so it refuses to run while a daemon or command holds it. Each audit entry says that this tool
//! enrolled the member, so the log tells bench meshes apart.
//!
//! For each member `sim-NNN` it writes into `OUT/sim-NNN/`: `key.pem` (its P-256 key, 0600),
//! `cert.pem`, `fullchain.pem` (certificate + root), and — for the renewal run — `next-key.pem`
//! and `renew.csr` (a fresh key and its CSR, made here so the client's timer holds no key
//! generation: the renewal rotates the key, as `koi certmesh renew` does by default).
//!
//! Usage: `certmesh-enroll KOI_HOME PASSPHRASE_FILE COUNT OUT_DIR`

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use koi_certmesh::authority::CaSession;
use koi_certmesh::layout::Layout;
use koi_certmesh_core::{Member, Passphrase, Role, Roster};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::json;

/// Most members one run enrolls.
const MAX_COUNT: usize = 5000;

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn key_and_csr(hostname: &str) -> Result<(KeyPair, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generate a P-256 key")?;
    let csr = CertificateParams::new(vec![hostname.to_owned()])
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .context("build a CSR")?;
    Ok((key, csr))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, home, pass_file, count, out] = args.as_slice() else {
        bail!("usage: certmesh-enroll KOI_HOME PASSPHRASE_FILE COUNT OUT_DIR");
    };
    let count: usize = count
        .parse()
        .ok()
        .filter(|n| (1..=MAX_COUNT).contains(n))
        .with_context(|| format!("COUNT must be a number from 1 to {MAX_COUNT}, not {count:?}"))?;
    let layout = Layout::new(Path::new(home));
    if !layout.is_ca() {
        bail!(
            "{} holds no certmesh CA (no roster); create one with `koi certmesh create` first",
            layout.dir().display()
        );
    }
    // Refuses while `koi daemon` (or any certmesh command) holds the CA: stop it first.
    let _writer = layout
        .lock_writer()
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let pass = std::fs::read_to_string(pass_file)
        .with_context(|| format!("cannot read the passphrase file {pass_file}"))?;
    let pass = Passphrase::new(pass.trim_end_matches(['\r', '\n']));
    let (mut session, _) = CaSession::open(
        &layout,
        &pass,
        "certmesh-enroll",
        "bench: enroll simulated members",
    )
    .map_err(|e| anyhow::anyhow!("cannot open the CA: {}", e.message()))?;
    let ca_pem = session.unlocked().ca().cert_pem().to_owned();
    let mut roster = Roster::load(&layout.roster()).context("load the roster")?;
    let out = Path::new(out);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = Instant::now();
    for i in 1..=count {
        let hostname = format!("sim-{i:04}");
        let (key, csr) = key_and_csr(&hostname)?;
        let refused = |e: koi_certmesh::error::Refusal| anyhow::anyhow!("{hostname}: {e}");
        let (leaf, mut dropped) =
            koi_certmesh::certify::leaf(session.unlocked(), &roster, &hostname, &[], &[], &csr)
                .map_err(refused)?;
        let issued = koi_certmesh::certify::sign(
            session.unlocked(),
            &roster,
            leaf,
            &mut dropped,
            &hostname,
            &csr,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(refused)?;
        session
            .audit(
                koi_certmesh_core::audit::events::MEMBER_ENROLLED,
                &hostname,
                json!({
                    "hostname": hostname,
                    "serial": issued.serial_hex,
                    "fingerprint": issued.fingerprint,
                    "dns_names": issued.dns_names,
                    "ip_addresses": issued.ip_addresses,
                    "expires_at": koi_certmesh::names::rfc3339(issued.not_after),
                    "peer": "none (offline)",
                    "enrolled_by": "certmesh-enroll, the benchmark set-up tool (bench/src/certmesh_enroll.rs)",
                }),
            )
            .map_err(|e| anyhow::anyhow!("{hostname}: audit: {}", e.message()))?;
        let dir = out.join(&hostname);
        std::fs::create_dir_all(&dir)?;
        write_file(&dir.join("key.pem"), &key.serialize_pem(), 0o600)?;
        write_file(&dir.join("cert.pem"), &issued.cert_pem, 0o644)?;
        write_file(
            &dir.join("fullchain.pem"),
            &format!("{}{}", issued.cert_pem, ca_pem),
            0o644,
        )?;
        let (next, next_csr) = key_and_csr(&hostname)?;
        write_file(&dir.join("next-key.pem"), &next.serialize_pem(), 0o600)?;
        write_file(&dir.join("renew.csr"), &next_csr, 0o644)?;
        roster.upsert(Member::from_issued(&hostname, &issued, Role::Member, None));
        // The roster records the log's head; saved every 50 entries and at the end (each audit
        // entry is durable before the roster that records it, as in the join path).
        if i % 50 == 0 || i == count {
            session
                .save_roster(&layout, &mut roster)
                .map_err(|e| anyhow::anyhow!("save the roster: {}", e.message()))?;
        }
    }
    println!(
        "{}",
        json!({
            "enrolled": count,
            "seconds": started.elapsed().as_secs_f64(),
            "roster_members": roster.members.len(),
            "roster_bytes": std::fs::metadata(layout.roster()).map(|m| m.len()).unwrap_or(0),
        })
    );
    Ok(())
}
