//! The Java keystore, handled only when `java_home` is set (as mkcert does with `JAVA_HOME`):
//! `$JAVA_HOME/lib/security/cacerts` (or the older `jre/lib/security/cacerts`) with the default
//! store password `changeit`, changed with `keytool` (from `$JAVA_HOME/bin`, else PATH) under the
//! anchor's name as alias, and read back with `keytool -list -rfc` to verify by fingerprint.

use std::path::{Path, PathBuf};

use super::exec::{self, Cmd, Output};
use super::found::{Found, names_in_listing};
use super::{Lookup, StoreReport, StoreState, Target, TrustConfig, pem};

const STORE: &str = "java";
/// The password every JDK ships its cacerts with.
const STOREPASS: &str = "changeit";

/// The cacerts file under `java_home`, if there is one.
pub(crate) fn keystore(java_home: &Path) -> Option<PathBuf> {
    ["lib/security/cacerts", "jre/lib/security/cacerts"]
        .iter()
        .map(|rel| java_home.join(rel))
        .find(|p| p.is_file())
}

/// `$JAVA_HOME/bin/keytool`, else the first on PATH.
fn keytool(java_home: &Path) -> Option<PathBuf> {
    exec::executable_in(&java_home.join("bin"), "keytool").or_else(|| exec::which("keytool"))
}

struct Ready {
    keystore: PathBuf,
    keytool: PathBuf,
    location: String,
}

impl Ready {
    fn cmd(&self, op: &str, name: &str) -> Cmd {
        Cmd::new(&self.keytool)
            .arg(op)
            .arg("-keystore")
            .arg(&self.keystore)
            .args(["-storepass", STOREPASS, "-alias", name])
    }
}

/// The keystore and keytool, or the rows that say why nothing can be done (none when Java is
/// not configured).
fn prepare(cfg: &TrustConfig) -> Result<Ready, Vec<StoreReport>> {
    let Some(java_home) = &cfg.java_home else {
        return Err(Vec::new());
    };
    let Some(keystore) = keystore(java_home) else {
        return Err(vec![
            StoreReport::new(
                STORE,
                java_home.display().to_string(),
                StoreState::NotPresent,
            )
            .detail(format!(
                "JAVA_HOME is {} but it holds no lib/security/cacerts or jre/lib/security/cacerts",
                java_home.display()
            )),
        ]);
    };
    let location = keystore.display().to_string();
    match keytool(java_home) {
        Some(keytool) => Ok(Ready {
            keystore,
            keytool,
            location,
        }),
        None => Err(vec![StoreReport::failed(
            STORE,
            location,
            format!(
                "`keytool` is neither in {} nor on PATH; install a Java runtime (e.g. the default-jre-headless package) or fix JAVA_HOME",
                java_home.join("bin").display()
            ),
        )]),
    }
}

fn run(cfg: &TrustConfig, cmd: &Cmd) -> Result<Output, String> {
    exec::run(cmd, cfg.timeout).map_err(|e| e.to_string())
}

fn lookup(cfg: &TrustConfig, r: &Ready, name: &str) -> Result<Lookup, String> {
    let out = run(cfg, &r.cmd("-list", name).arg("-rfc"))?;
    if out.success() {
        Ok(Lookup::Found(pem::fingerprints(&out.stdout)))
    } else if out.combined().contains("does not exist") {
        Ok(Lookup::NotFound)
    } else {
        Err(out.failure())
    }
}

fn tool_failed(cfg: &TrustConfig, r: &Ready, out: &Output, retry: &str) -> StoreReport {
    let row = StoreReport::failed(STORE, &r.location, out.failure());
    if out.permission_denied() {
        StoreReport::failed(
            STORE,
            &r.location,
            format!(
                "{}; the keystore is not writable by this user",
                out.failure()
            ),
        )
        .command(cfg.privileged_command(retry))
    } else {
        row
    }
}

fn delete(cfg: &TrustConfig, r: &Ready, name: &str, retry: &str) -> Result<(), Box<StoreReport>> {
    match run(cfg, &r.cmd("-delete", name)) {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(Box::new(tool_failed(cfg, r, &out, retry))),
        Err(detail) => Err(Box::new(StoreReport::failed(STORE, &r.location, detail))),
    }
}

pub(crate) fn install(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let r = match prepare(cfg) {
        Ok(r) => r,
        Err(rows) => return rows,
    };
    let (Some(fp), Some(pem_text)) = (target.fingerprint.as_deref(), target.pem.as_deref()) else {
        return vec![StoreReport::failed(
            STORE,
            &r.location,
            "no certificate to install",
        )];
    };
    let retry = cfg.install_command.as_str();
    let name = target.name;
    let row = (|| {
        match lookup(cfg, &r, name) {
            Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
                return StoreReport::new(STORE, &r.location, StoreState::Installed)
                    .verified()
                    .detail("already installed");
            }
            // keytool refuses to import over an existing alias: drop the older certificate.
            Ok(Lookup::Found(_)) => {
                if let Err(row) = delete(cfg, &r, name, retry) {
                    return *row;
                }
            }
            Ok(Lookup::NotFound) => {}
            Err(detail) => return StoreReport::failed(STORE, &r.location, detail),
        }
        let import = r.cmd("-importcert", name).arg("-noprompt").stdin(pem_text);
        match run(cfg, &import) {
            Ok(out) if out.success() => {}
            Ok(out) => return tool_failed(cfg, &r, &out, retry),
            Err(detail) => return StoreReport::failed(STORE, &r.location, detail),
        }
        match lookup(cfg, &r, name) {
            Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
                StoreReport::new(STORE, &r.location, StoreState::Installed).verified()
            }
            Ok(_) => StoreReport::failed(
                STORE,
                &r.location,
                format!(
                    "`keytool -importcert` succeeded but `keytool -list -alias {name}` does not show certificate {fp}"
                ),
            ),
            Err(detail) => StoreReport::failed(STORE, &r.location, detail),
        }
    })();
    vec![row]
}

pub(crate) fn remove(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let r = match prepare(cfg) {
        Ok(r) => r,
        Err(rows) => return rows,
    };
    let retry = cfg.remove_command.as_str();
    let row = match lookup(cfg, &r, target.name) {
        Ok(Lookup::NotFound) => StoreReport::new(STORE, &r.location, StoreState::Absent).verified(),
        Ok(Lookup::Found(_)) => match delete(cfg, &r, target.name, retry) {
            Err(row) => *row,
            Ok(()) => match lookup(cfg, &r, target.name) {
                Ok(Lookup::NotFound) => {
                    StoreReport::new(STORE, &r.location, StoreState::Removed).verified()
                }
                Ok(Lookup::Found(_)) => StoreReport::failed(
                    STORE,
                    &r.location,
                    format!(
                        "`keytool -delete` succeeded but alias {} is still listed",
                        target.name
                    ),
                ),
                Err(detail) => StoreReport::failed(STORE, &r.location, detail),
            },
        },
        Err(detail) => StoreReport::failed(STORE, &r.location, detail),
    };
    vec![row]
}

pub(crate) fn status(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let r = match prepare(cfg) {
        Ok(r) => r,
        Err(rows) => return rows,
    };
    let fp = target.fingerprint.as_deref().unwrap_or_default();
    let row = match lookup(cfg, &r, target.name) {
        Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
            StoreReport::new(STORE, &r.location, StoreState::Installed).verified()
        }
        Ok(Lookup::Found(_)) => StoreReport::new(STORE, &r.location, StoreState::Absent)
            .verified()
            .detail(format!(
                "a different certificate is stored under alias {}; run `{}` to replace it",
                target.name, cfg.install_command
            )),
        Ok(Lookup::NotFound) => StoreReport::new(STORE, &r.location, StoreState::Absent).verified(),
        Err(detail) => StoreReport::failed(STORE, &r.location, detail),
    };
    vec![row]
}

/// Every alias starting with `prefix` in the keystore (keytool lower-cases aliases), with its
/// certificate's fingerprint.
pub(crate) fn find(cfg: &TrustConfig, prefix: &str, found: &mut Found) {
    let r = match prepare(cfg) {
        Ok(r) => r,
        Err(rows) => return found.unprepared(rows),
    };
    let list = Cmd::new(&r.keytool)
        .arg("-list")
        .arg("-keystore")
        .arg(&r.keystore)
        .args(["-storepass", STOREPASS]);
    let out = match run(cfg, &list) {
        Ok(out) if out.success() => out,
        Ok(out) => {
            found
                .unreadable
                .push(StoreReport::failed(STORE, &r.location, out.failure()));
            return;
        }
        Err(detail) => {
            found
                .unreadable
                .push(StoreReport::failed(STORE, &r.location, detail));
            return;
        }
    };
    for name in names_in_listing(&out.stdout, &prefix.to_ascii_lowercase()) {
        match lookup(cfg, &r, &name) {
            Ok(Lookup::Found(fps)) => found.add(STORE, &r.location, &name, fps),
            Ok(Lookup::NotFound) => {}
            Err(detail) => found
                .unreadable
                .push(StoreReport::failed(STORE, &r.location, detail)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keystore_locations() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        assert_eq!(keystore(h), None);
        let cfg = TrustConfig {
            java_home: Some(h.to_path_buf()),
            ..TrustConfig::default()
        };
        let t = Target {
            name: "n",
            fingerprint: None,
            pem: None,
        };
        let rows = status(&cfg, &t);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, StoreState::NotPresent);
        std::fs::create_dir_all(h.join("jre/lib/security")).unwrap();
        std::fs::write(h.join("jre/lib/security/cacerts"), b"").unwrap();
        assert_eq!(keystore(h), Some(h.join("jre/lib/security/cacerts")));
        std::fs::create_dir_all(h.join("lib/security")).unwrap();
        std::fs::write(h.join("lib/security/cacerts"), b"").unwrap();
        assert_eq!(keystore(h), Some(h.join("lib/security/cacerts")));
        // No Java configured: no row at all.
        assert!(status(&TrustConfig::default(), &t).is_empty());
    }
}
