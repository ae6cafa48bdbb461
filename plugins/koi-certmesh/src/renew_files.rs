//! Installing a renewed certificate so that a member always ends with a certificate and key that
//! match, even when killed (`kill -9`, power loss) in the middle. A renewal with a fresh key
//! changes two files that no single rename can swap together, so it is journalled:
//!
//! 1. the four files and the new `membership.json` are written (each atomically and durably)
//!    into `certs/<host>/.renewing/`, then the marker `.renewing/ready`;
//! 2. each staged file is renamed over the live one (key first, certificate last), then
//!    `membership.json`; the directory is synced and `.renewing/` removed.
//!
//! [`finish`] runs before every renewal and when the renewal service starts: a staging directory
//! with its marker is rolled forward (the renames are repeated for what is left), one without it
//! is discarded (the old pair was never touched). So after any crash, the pair on disk once
//! [`finish`] has run is either the old one or the new one, never a mix. The reload hook runs
//! only after step 2, so a server it restarts never sees a half-installed pair.

use std::path::{Path, PathBuf};

use koi_certmesh_core::atomic::{ensure_private_dir, write_atomic};
use koi_sdk::MethodError;
use zeroize::Zeroizing;

use crate::error;
use crate::files::{FILE_NAMES, Membership, write_in_order};
use crate::layout::Layout;

/// The staging directory's name inside `certs/<host>/`.
pub const STAGING: &str = ".renewing";
const READY: &str = "ready";
const MEMBERSHIP: &str = "membership.json";

fn staging(layout: &Layout, hostname: &str) -> PathBuf {
    layout.certs(hostname).join(STAGING)
}

fn io_fail(what: &str, path: &Path, e: std::io::Error) -> MethodError {
    error::fail(
        format!("Failed to {what} {}: {e}.", path.display()),
        "Check the disk and the permissions of KOI_HOME, then run `koi certmesh renew --now`; \
         the certificate and key in place still match.",
    )
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Installs a renewed certificate and its key, and the membership record describing them.
pub fn install(
    layout: &Layout,
    membership: &Membership,
    cert_pem: &str,
    key_pem: &Zeroizing<String>,
    ca_pem: &str,
) -> Result<(), MethodError> {
    let stage = staging(layout, &membership.hostname);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| io_fail("remove", &stage, e))?;
    }
    ensure_private_dir(&stage).map_err(error::core)?;
    write_in_order(cert_pem, key_pem, ca_pem, |name, bytes| {
        write_atomic(&stage.join(name), bytes).map_err(error::core)
    })?;
    let mut json = serde_json::to_vec_pretty(membership)
        .map_err(|e| MethodError::new(format!("Failed to encode the membership: {e}")))?;
    json.push(b'\n');
    write_atomic(&stage.join(MEMBERSHIP), &json).map_err(error::core)?;
    ensure_private_dir(&layout.dir()).map_err(error::core)?;
    write_atomic(&stage.join(READY), b"ready\n").map_err(error::core)?;
    finish(layout, &membership.hostname).map(|_| ())
}

/// Completes or discards a renewal a crash interrupted (see the module docs). Returns whether a
/// staged renewal was rolled forward.
pub fn finish(layout: &Layout, hostname: &str) -> Result<bool, MethodError> {
    let stage = staging(layout, hostname);
    if !stage.exists() {
        return Ok(false);
    }
    if !stage.join(READY).exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| io_fail("remove", &stage, e))?;
        return Ok(false);
    }
    let live = layout.certs(hostname);
    for name in FILE_NAMES {
        let from = stage.join(name);
        if from.exists() {
            std::fs::rename(&from, live.join(name)).map_err(|e| io_fail("install", &from, e))?;
        }
    }
    sync_dir(&live);
    let from = stage.join(MEMBERSHIP);
    if from.exists() {
        std::fs::rename(&from, layout.membership()).map_err(|e| io_fail("install", &from, e))?;
        sync_dir(&layout.dir());
    }
    std::fs::remove_dir_all(&stage).map_err(|e| io_fail("remove", &stage, e))?;
    sync_dir(&live);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(host: &str) -> Membership {
        Membership {
            version: crate::files::MEMBERSHIP_VERSION,
            hostname: host.into(),
            role: "member".into(),
            ca_fingerprint: "ab".repeat(32),
            ca_endpoint: Some("10.0.0.1:5641".into()),
            profile: "personal".into(),
            zone: "lan".into(),
            joined_at: "2026-01-01T00:00:00Z".into(),
            serial: "02".into(),
            expires_at: "2026-02-01T00:00:00Z".into(),
            dns_names: vec![host.into()],
            ip_addresses: vec![],
            operator: None,
            ca_name: None,
        }
    }

    fn live(layout: &Layout, name: &str) -> String {
        std::fs::read_to_string(layout.certs("m").join(name)).unwrap()
    }

    #[test]
    fn a_staged_renewal_with_its_marker_rolls_forward_and_one_without_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let files = crate::files::CertFiles::at(&layout, "m");
        files
            .write("OLD CERT\n", &Zeroizing::new("OLD KEY\n".into()), "CA\n")
            .unwrap();
        // A crash after the marker and the key's rename, before the certificate's.
        install(
            &layout,
            &membership("m"),
            "NEW CERT\n",
            &Zeroizing::new("NEW KEY\n".into()),
            "CA\n",
        )
        .unwrap();
        assert_eq!(live(&layout, "cert.pem"), "NEW CERT\n");
        assert_eq!(live(&layout, "key.pem"), "NEW KEY\n");
        assert!(!layout.certs("m").join(STAGING).exists());

        let stage = layout.certs("m").join(STAGING);
        ensure_private_dir(&stage).unwrap();
        std::fs::write(stage.join("key.pem"), "NEWER KEY\n").unwrap();
        std::fs::write(stage.join("cert.pem"), "NEWER CERT\n").unwrap();
        std::fs::write(stage.join(READY), "ready\n").unwrap();
        std::fs::rename(stage.join("key.pem"), layout.certs("m").join("key.pem")).unwrap();
        assert!(finish(&layout, "m").unwrap());
        assert_eq!(live(&layout, "cert.pem"), "NEWER CERT\n");
        assert_eq!(live(&layout, "key.pem"), "NEWER KEY\n");

        ensure_private_dir(&stage).unwrap();
        std::fs::write(stage.join("key.pem"), "TORN KEY\n").unwrap();
        assert!(!finish(&layout, "m").unwrap());
        assert_eq!(live(&layout, "key.pem"), "NEWER KEY\n");
        assert!(!stage.exists());
    }
}
