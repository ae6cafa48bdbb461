//! Finding roots by name prefix in every store, without knowing their certificates: what `koi
//! certmesh trust status` lists and `trust remove --fingerprint/--name` works from once the mesh
//! folder is gone. The system store is read from its anchor directory (files `<prefix>*.<ext>`),
//! each NSS database with `certutil -L`, the Java keystore with `keytool -list`; every name found
//! is then looked up for its certificates' fingerprints. A store that cannot be read is reported
//! as a failed row, so "nothing found" is never said about a store that was not looked at.

use schemars::JsonSchema;
use serde::Serialize;

use super::{StoreReport, StoreState, TrustConfig};

/// One certificate found under a name with the prefix asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FoundRoot {
    /// `system (debian)`, `nss` or `java`.
    pub store: String,
    /// The anchor file, NSS database (`sql:/home/ada/.pki/nssdb`) or keystore path.
    pub location: String,
    /// The name it is stored under (file stem, NSS nickname, Java alias).
    pub name: String,
    /// SHA-256 of the certificate (lowercase hex); absent when the entry holds none readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// What [`find`] saw: the roots, and a failed row for each store it could not read.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub roots: Vec<FoundRoot>,
    pub unreadable: Vec<StoreReport>,
}

impl Found {
    /// Records a store that could not be prepared for reading: its failed rows are unreadable
    /// stores; the other rows (a store that is simply absent) are not.
    pub(crate) fn unprepared(&mut self, rows: Vec<StoreReport>) {
        self.unreadable
            .extend(rows.into_iter().filter(|r| r.state == StoreState::Failed));
    }

    pub(crate) fn add(&mut self, store: &str, location: &str, name: &str, fps: Vec<String>) {
        if fps.is_empty() {
            self.roots.push(FoundRoot {
                store: store.to_string(),
                location: location.to_string(),
                name: name.to_string(),
                fingerprint: None,
            });
        }
        for fp in fps {
            self.roots.push(FoundRoot {
                store: store.to_string(),
                location: location.to_string(),
                name: name.to_string(),
                fingerprint: Some(fp),
            });
        }
    }
}

/// Every entry whose name starts with `prefix`, in every store found under `cfg`.
pub fn find(cfg: &TrustConfig, prefix: &str) -> Found {
    let mut found = Found::default();
    #[cfg(target_os = "linux")]
    system_find(cfg, prefix, &mut found);
    #[cfg(unix)]
    super::nss::find(cfg, prefix, &mut found);
    super::java::find(cfg, prefix, &mut found);
    found
}

/// The Linux system store: anchor files named `<prefix>*.<ext>` in the family's anchor directory.
#[cfg(target_os = "linux")]
fn system_find(cfg: &TrustConfig, prefix: &str, found: &mut Found) {
    let spec = match super::system::resolve(cfg) {
        Ok(s) => s,
        Err(row) => {
            found.unreadable.push(*row);
            return;
        }
    };
    let store = format!("system ({})", spec.family);
    let dir = cfg.system_root.join(spec.anchor_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            found.unreadable.push(StoreReport::failed(
                store,
                dir.display().to_string(),
                format!("could not list {}: {e}", dir.display()),
            ));
            return;
        }
    };
    let suffix = format!(".{}", spec.extension);
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(&suffix))
        })
        .collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        let fps = std::fs::read_to_string(&path)
            .map(|t| super::pem::fingerprints(&t))
            .unwrap_or_default();
        found.add(&store, &path.display().to_string(), name, fps);
    }
}

/// The names in a listing whose first token on a line starts with `prefix` (certutil's nickname
/// column, keytool's `alias, date, type,` lines), each once, in order.
pub(crate) fn names_in_listing(text: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        let first = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .find(|t| !t.is_empty())
            .unwrap_or_default();
        if first.starts_with(prefix) && !names.iter().any(|n| n == first) {
            names.push(first.to_string());
        }
    }
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listings_yield_prefixed_names_once() {
        let certutil = "\nCertificate Nickname                                         Trust Attributes\n                                                             SSL,S/MIME,JAR/XPI\n\nkoi-certmesh-3fa2c1d09b7e4411                                C,,  \nOther CA                                                     C,,  \nkoi-certmesh-3fa2c1d09b7e4411                                C,,  \n";
        assert_eq!(
            names_in_listing(certutil, "koi-certmesh-"),
            ["koi-certmesh-3fa2c1d09b7e4411"]
        );
        let keytool = "Keystore type: PKCS12\n\nYour keystore contains 2 entries\n\nkoi-certmesh-00aa, Nov 29, 2026, trustedCertEntry,\nCertificate fingerprint (SHA-256): 00:AA\ndigicert, Nov 1, 2020, trustedCertEntry,\n";
        assert_eq!(
            names_in_listing(keytool, "koi-certmesh-"),
            ["koi-certmesh-00aa"]
        );
        assert!(names_in_listing("", "koi-certmesh-").is_empty());
    }
}
