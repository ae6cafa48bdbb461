//! What a machine keeps on disk as a member: the certificate files at the standard path
//! (`$KOI_HOME/certs/<hostname>/{cert,key,ca,fullchain}.pem`, each written atomically, key 0600,
//! directory 0700) and `membership.json`, the record of what the CA told it when it joined.

use std::path::Path;

use koi_certmesh_core::atomic::{ensure_private_dir, write_atomic};
use koi_sdk::MethodError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error;
use crate::layout::Layout;

/// The format version of `membership.json`.
pub const MEMBERSHIP_VERSION: u32 = 1;

/// The four certificate files, in the order they are written: the key first and the certificate
/// last, so a certificate on disk always has its key beside it.
pub const FILE_NAMES: [&str; 4] = ["key.pem", "ca.pem", "fullchain.pem", "cert.pem"];

/// Writes a leaf's four files with `write_one(name, contents)`, in [`FILE_NAMES`] order; the full
/// chain is the leaf followed by the root. Shared by [`CertFiles::write`] and
/// [`crate::out_dir::OutDir::write`], which differ only in how one file is written.
pub fn write_in_order(
    cert_pem: &str,
    key_pem: &Zeroizing<String>,
    ca_pem: &str,
    mut write_one: impl FnMut(&str, &[u8]) -> Result<(), MethodError>,
) -> Result<(), MethodError> {
    let fullchain = format!("{cert_pem}{ca_pem}");
    let contents: [&[u8]; 4] = [
        key_pem.as_bytes(),
        ca_pem.as_bytes(),
        fullchain.as_bytes(),
        cert_pem.as_bytes(),
    ];
    for (name, bytes) in FILE_NAMES.iter().zip(contents) {
        write_one(name, bytes)?;
    }
    Ok(())
}

/// Where one machine's certificate files are.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CertFiles {
    /// The directory.
    #[schemars(title = "Directory")]
    pub dir: String,
    /// Leaf certificate.
    pub cert: String,
    /// Private key (0600; never leaves this machine).
    pub key: String,
    /// The mesh's root certificate.
    pub ca: String,
    /// Leaf + root, for servers that want one file.
    #[schemars(title = "Full chain")]
    pub fullchain: String,
}

impl CertFiles {
    /// The paths for `hostname` under `layout`.
    pub fn at(layout: &Layout, hostname: &str) -> Self {
        Self::in_dir(&layout.certs(hostname))
    }

    /// The four files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let p = |name: &str| dir.join(name).display().to_string();
        CertFiles {
            cert: p("cert.pem"),
            key: p("key.pem"),
            ca: p("ca.pem"),
            fullchain: p("fullchain.pem"),
            dir: dir.display().to_string(),
        }
    }

    /// Writes all four files atomically, in [`FILE_NAMES`] order.
    pub fn write(
        &self,
        cert_pem: &str,
        key_pem: &Zeroizing<String>,
        ca_pem: &str,
    ) -> Result<(), MethodError> {
        let dir = Path::new(&self.dir);
        ensure_private_dir(dir).map_err(error::core)?;
        write_in_order(cert_pem, key_pem, ca_pem, |name, bytes| {
            write_atomic(&dir.join(name), bytes).map_err(error::core)
        })
    }

    /// This machine's chain (`fullchain.pem`) and key, to present as a TLS client (heartbeat,
    /// renewal, names, standby sync, partition entries, the CA's pushes).
    pub fn tls_identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let chain = CertificateDer::pem_file_iter(&self.fullchain)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                format!(
                    "cannot read this machine's certificate {}: {e}",
                    self.fullchain
                )
            })?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("cannot read this machine's key {}: {e}", self.key))?;
        Ok((chain, key))
    }

    /// The leaf certificate's expiry, read from `cert.pem` (None if absent or unreadable).
    pub fn expiry(&self) -> Option<String> {
        let pem = std::fs::read_to_string(&self.cert).ok()?;
        crate::x509::not_after(&pem)
    }
}

/// What a machine was told when it joined (or, on the CA, what it made itself).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// Format version ([`MEMBERSHIP_VERSION`]).
    pub version: u32,
    /// This machine's host name as certified.
    pub hostname: String,
    /// `primary` (the CA) or `member`.
    pub role: String,
    /// SHA-256 of the mesh's root certificate (the pin).
    pub ca_fingerprint: String,
    /// Where the CA's API answered (`HOST:PORT`), for members.
    #[serde(default)]
    pub ca_endpoint: Option<String>,
    /// The mesh's trust profile.
    pub profile: String,
    /// The unicast zone of the mesh's names (`lan`, or the first scope domain).
    pub zone: String,
    /// When this machine joined (RFC 3339).
    pub joined_at: String,
    /// Serial of the current certificate (hex).
    pub serial: String,
    /// Expiry of the current certificate (RFC 3339).
    pub expires_at: String,
    /// DNS names of the current certificate.
    pub dns_names: Vec<String>,
    /// IP addresses of the current certificate.
    pub ip_addresses: Vec<String>,
    /// Operator who enrolled this machine.
    #[serde(default)]
    pub operator: Option<String>,
    /// Host name of the mesh's CA, for members (named when the member must ask its operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_name: Option<String>,
}

impl Membership {
    /// The pin of the mesh this machine belongs to (its root's SHA-256), if it belongs to one
    /// and `membership.json` reads; what the presence watch compares advertisements against.
    pub fn mesh_fingerprint(layout: &Layout) -> Option<String> {
        Self::load(layout).ok().flatten().map(|m| m.ca_fingerprint)
    }

    /// Reads `membership.json`, if this machine belongs to a mesh.
    pub fn load(layout: &Layout) -> Result<Option<Self>, MethodError> {
        let path = layout.membership();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(error::fail(
                    format!("Failed to read {}: {e}.", path.display()),
                    "Check the file's owner and permissions.",
                ));
            }
        };
        let m: Membership = serde_json::from_slice(&bytes).map_err(|e| {
            // `join` refuses on a CA; `leave` identifies a CA by its root without this file.
            let next = if layout.is_ca() {
                "koi keeps no copy of it: put back one you saved, or start a new mesh with \
                 `koi certmesh leave` and then `koi certmesh create` (members join the new mesh)."
            } else {
                "Move it away, then join the mesh again (`koi certmesh join`)."
            };
            error::fail(
                format!("{} is not a valid membership record: {e}.", path.display()),
                next,
            )
        })?;
        if m.version != MEMBERSHIP_VERSION {
            return Err(error::fail(
                format!(
                    "{} has format version {}, this koi-certmesh reads version {MEMBERSHIP_VERSION}.",
                    path.display(),
                    m.version
                ),
                "Upgrade koi-certmesh.",
            ));
        }
        Ok(Some(m))
    }

    /// Writes it atomically into `dir` (the live or the staging certmesh directory).
    pub fn save_in(&self, dir: &Path) -> Result<(), MethodError> {
        ensure_private_dir(dir).map_err(error::core)?;
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| MethodError::new(format!("Failed to encode the membership: {e}")))?;
        json.push(b'\n');
        write_atomic(&dir.join("membership.json"), &json).map_err(error::core)
    }
}

/// The unique name under which a mesh's root goes into trust stores.
pub fn anchor_name(ca_fingerprint: &str) -> String {
    let short: String = ca_fingerprint.chars().take(16).collect();
    format!("koi-certmesh-{short}")
}
