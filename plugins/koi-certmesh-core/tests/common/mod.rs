//! Builders shared by the audit-log tests (`audit.rs`, `audit_checkpoint.rs`): a fresh
//! unconstrained CA, the log's lines as strings, writing them back, and verification with the CA's
//! key.

use std::path::Path;

use koi_certmesh_core::audit::{self, AuditVerdict};
use koi_certmesh_core::*;
use time::OffsetDateTime;

/// A new CA with no name constraints.
pub fn ca() -> CertAuthority {
    CertAuthority::create(
        &CaOptions::new("Koi certmesh CA (test)", Scope::unrestricted()),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

/// The file's lines, without their newlines.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes `l` as the file's lines, each ending in a newline.
pub fn write_lines(path: &Path, l: &[String]) {
    std::fs::write(path, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
}

/// `audit::verify` of the log at `path` with `ca`'s key and no roster anchor.
pub fn verify(path: &Path, ca: &CertAuthority) -> AuditVerdict {
    audit::verify(path, &ca.public_key_sec1(), None).unwrap()
}
