//! NSS databases (Firefox, Chromium and other NSS users): finding every database under the
//! configured home (Chromium's `~/.pki/nssdb`, snap Chromium, every Firefox profile — classic,
//! snap, Flatpak, `~/.config/mozilla`) and the system-wide `<root>/etc/pki/nssdb`, then adding,
//! checking and deleting the anchor with `certutil` under the anchor's name as nickname. One row
//! per database; exactly one `not_present` row when there is none.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::exec::{self, Cmd, Output};
use super::found::{Found, names_in_listing};
use super::{Family, Lookup, StoreReport, StoreState, Target, TrustConfig, pem};

const STORE: &str = "nss";

/// One NSS database directory and its format (`sql` for cert9.db, `dbm` for legacy cert8.db).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Db {
    pub dir: PathBuf,
    pub kind: &'static str,
}

impl Db {
    /// The `-d` argument: `sql:/path` or `dbm:/path`.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.kind, self.dir.display())
    }

    fn at(dir: &Path) -> Option<Db> {
        let kind = if dir.join("cert9.db").is_file() {
            "sql"
        } else if dir.join("cert8.db").is_file() {
            "dbm"
        } else {
            return None;
        };
        Some(Db {
            dir: dir.to_path_buf(),
            kind,
        })
    }
}

/// Directories that are NSS databases themselves.
fn fixed_dirs(cfg: &TrustConfig) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = &cfg.home {
        dirs.push(home.join(".pki/nssdb")); // Chromium, and NSS's per-user default
        dirs.push(home.join("snap/chromium/current/.pki/nssdb"));
    }
    dirs.push(cfg.system_root.join("etc/pki/nssdb")); // system-wide (Fedora, CentOS)
    dirs
}

/// Directories whose sub-directories are Firefox profiles.
pub(crate) fn profile_roots(home: &Path) -> Vec<PathBuf> {
    #[allow(unused_mut)]
    let mut roots = vec![
        home.join(".mozilla/firefox"),
        home.join("snap/firefox/common/.mozilla/firefox"),
        home.join(".var/app/org.mozilla.firefox/.mozilla/firefox"), // Flatpak
        home.join(".config/mozilla/firefox"),                       // Firefox ≥ 147 follows XDG
    ];
    #[cfg(target_os = "macos")]
    roots.push(home.join("Library/Application Support/Firefox/Profiles"));
    roots
}

/// Every NSS database under `cfg`, each once (snap's `current` is a symlink to a revision).
pub(crate) fn databases(cfg: &TrustConfig) -> Vec<Db> {
    let mut candidates = fixed_dirs(cfg);
    if let Some(home) = &cfg.home {
        for root in profile_roots(home) {
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            let mut profiles: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            profiles.sort();
            candidates.extend(profiles);
        }
    }
    let mut seen = HashSet::new();
    candidates
        .iter()
        .filter_map(|d| Db::at(d))
        .filter(|db| seen.insert(std::fs::canonicalize(&db.dir).unwrap_or_else(|_| db.dir.clone())))
        .collect()
}

/// Advice for installing certutil on this family.
fn certutil_package(cfg: &TrustConfig) -> &'static str {
    if cfg!(target_os = "macos") {
        return "run `brew install nss`";
    }
    match cfg.resolved_family() {
        Some(Family::Debian) => "install libnss3-tools (`apt install libnss3-tools`)",
        Some(Family::Fedora) => "install nss-tools (`dnf install nss-tools`)",
        Some(Family::Arch) => "install nss (`pacman -S nss`)",
        Some(Family::OpenSuse) => "install mozilla-nss-tools (`zypper install mozilla-nss-tools`)",
        None => "install your distribution's NSS tools (libnss3-tools or nss-tools)",
    }
}

fn not_present(cfg: &TrustConfig, installing: bool) -> Vec<StoreReport> {
    let location = cfg
        .home
        .as_ref()
        .map(|h| h.display().to_string())
        .unwrap_or_else(|| "(no home directory)".to_string());
    let mut detail = format!(
        "no NSS database under {location} (Chromium's .pki/nssdb or a Firefox profile with cert9.db)"
    );
    if installing {
        detail.push_str(&format!(
            "; start Firefox or Chromium once to create one, then run `{}` again",
            cfg.install_command
        ));
    }
    vec![StoreReport::new(STORE, location, StoreState::NotPresent).detail(detail)]
}

/// The databases and certutil, or the rows that say why nothing can be done (the advice to
/// create a database only when `installing`: removal and status have nothing to do there).
fn prepare(cfg: &TrustConfig, installing: bool) -> Result<(Vec<Db>, PathBuf), Vec<StoreReport>> {
    let dbs = databases(cfg);
    if dbs.is_empty() {
        return Err(not_present(cfg, installing));
    }
    match exec::which("certutil") {
        Some(certutil) => Ok((dbs, certutil)),
        None => Err(dbs
            .iter()
            .map(|db| {
                StoreReport::failed(
                    STORE,
                    db.spec(),
                    format!(
                        "this NSS database exists but `certutil` was not found; {} and try again",
                        certutil_package(cfg)
                    ),
                )
            })
            .collect()),
    }
}

fn run(cfg: &TrustConfig, cmd: &Cmd) -> Result<Output, String> {
    exec::run(cmd, cfg.timeout).map_err(|e| e.to_string())
}

/// Certificates stored under `name` in `db`.
fn lookup(cfg: &TrustConfig, certutil: &Path, db: &Db, name: &str) -> Result<Lookup, String> {
    let cmd = Cmd::new(certutil).args(["-L", "-d", &db.spec(), "-n", name, "-a"]);
    let out = run(cfg, &cmd)?;
    if out.success() {
        Ok(Lookup::Found(pem::fingerprints(&out.stdout)))
    } else if out
        .combined()
        .to_ascii_lowercase()
        .contains("could not find cert")
    {
        Ok(Lookup::NotFound)
    } else {
        Err(out.failure())
    }
}

/// A failed row for a certutil run that failed; permission problems get `command_to_run`.
fn tool_failed(cfg: &TrustConfig, db: &Db, out: &Output, retry: &str) -> StoreReport {
    if out.permission_denied() {
        StoreReport::failed(
            STORE,
            db.spec(),
            format!(
                "{}; the database is not writable by this user",
                out.failure()
            ),
        )
        .command(cfg.privileged_command(retry))
    } else {
        StoreReport::failed(
            STORE,
            db.spec(),
            format!(
                "{}; close the browser using this profile and try again",
                out.failure()
            ),
        )
    }
}

/// Deletes every certificate under `name`; `Ok` once a lookup confirms none is left.
fn delete_all(
    cfg: &TrustConfig,
    certutil: &Path,
    db: &Db,
    name: &str,
    retry: &str,
) -> Result<(), Box<StoreReport>> {
    // A nickname can hold several certificates; certutil -D removes one per call.
    for _ in 0..8 {
        match lookup(cfg, certutil, db, name) {
            Ok(Lookup::NotFound) => return Ok(()),
            Ok(Lookup::Found(_)) => {}
            Err(detail) => return Err(Box::new(StoreReport::failed(STORE, db.spec(), detail))),
        }
        let cmd = Cmd::new(certutil).args(["-D", "-d", &db.spec(), "-n", name]);
        match run(cfg, &cmd) {
            Ok(out) if out.success() => {}
            Ok(out) => return Err(Box::new(tool_failed(cfg, db, &out, retry))),
            Err(detail) => return Err(Box::new(StoreReport::failed(STORE, db.spec(), detail))),
        }
    }
    Err(Box::new(StoreReport::failed(
        STORE,
        db.spec(),
        format!(
            "`certutil -D` ran 8 times and {name} is still listed; delete it with `certutil -D -d {} -n {name}`",
            exec::shell_quote(&db.spec())
        ),
    )))
}

fn install_one(
    cfg: &TrustConfig,
    certutil: &Path,
    db: &Db,
    name: &str,
    fp: &str,
    pem_text: &str,
) -> StoreReport {
    let retry = cfg.install_command.as_str();
    match lookup(cfg, certutil, db, name) {
        Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
            return StoreReport::new(STORE, db.spec(), StoreState::Installed)
                .verified()
                .detail("already installed");
        }
        Ok(Lookup::Found(_)) => {
            // An older certificate under the same name (the mesh's CA was re-created).
            if let Err(row) = delete_all(cfg, certutil, db, name, retry) {
                return *row;
            }
        }
        Ok(Lookup::NotFound) => {}
        Err(detail) => return StoreReport::failed(STORE, db.spec(), detail),
    }
    let cmd = Cmd::new(certutil)
        .args(["-A", "-d", &db.spec(), "-t", "C,,", "-n", name, "-a"])
        .stdin(pem_text);
    match run(cfg, &cmd) {
        Ok(out) if out.success() => {}
        Ok(out) => return tool_failed(cfg, db, &out, retry),
        Err(detail) => return StoreReport::failed(STORE, db.spec(), detail),
    }
    match lookup(cfg, certutil, db, name) {
        Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
            StoreReport::new(STORE, db.spec(), StoreState::Installed).verified()
        }
        Ok(_) => StoreReport::failed(
            STORE,
            db.spec(),
            format!(
                "`certutil -A` succeeded but `certutil -L -n {name}` does not show certificate {fp}"
            ),
        ),
        Err(detail) => StoreReport::failed(STORE, db.spec(), detail),
    }
}

pub(crate) fn install(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let (dbs, certutil) = match prepare(cfg, true) {
        Ok(p) => p,
        Err(rows) => return rows,
    };
    let (Some(fp), Some(pem_text)) = (target.fingerprint.as_deref(), target.pem.as_deref()) else {
        return vec![StoreReport::failed(STORE, "", "no certificate to install")];
    };
    dbs.iter()
        .map(|db| install_one(cfg, &certutil, db, target.name, fp, pem_text))
        .collect()
}

pub(crate) fn remove(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let (dbs, certutil) = match prepare(cfg, false) {
        Ok(p) => p,
        Err(rows) => return rows,
    };
    let retry = cfg.remove_command.as_str();
    dbs.iter()
        .map(|db| match lookup(cfg, &certutil, db, target.name) {
            Ok(Lookup::NotFound) => {
                StoreReport::new(STORE, db.spec(), StoreState::Absent).verified()
            }
            Ok(Lookup::Found(_)) => match delete_all(cfg, &certutil, db, target.name, retry) {
                Ok(()) => StoreReport::new(STORE, db.spec(), StoreState::Removed).verified(),
                Err(row) => *row,
            },
            Err(detail) => StoreReport::failed(STORE, db.spec(), detail),
        })
        .collect()
}

pub(crate) fn status(cfg: &TrustConfig, target: &Target) -> Vec<StoreReport> {
    let (dbs, certutil) = match prepare(cfg, false) {
        Ok(p) => p,
        Err(rows) => return rows,
    };
    let fp = target.fingerprint.as_deref().unwrap_or_default();
    dbs.iter()
        .map(|db| match lookup(cfg, &certutil, db, target.name) {
            Ok(Lookup::Found(fps)) if fps.iter().any(|f| f == fp) => {
                StoreReport::new(STORE, db.spec(), StoreState::Installed).verified()
            }
            Ok(Lookup::Found(_)) => StoreReport::new(STORE, db.spec(), StoreState::Absent)
                .verified()
                .detail(format!(
                    "a different certificate is stored under {}; run `{}` to replace it",
                    target.name, cfg.install_command
                )),
            Ok(Lookup::NotFound) => {
                StoreReport::new(STORE, db.spec(), StoreState::Absent).verified()
            }
            Err(detail) => StoreReport::failed(STORE, db.spec(), detail),
        })
        .collect()
}

/// Every nickname starting with `prefix` in every database, with its certificates' fingerprints.
pub(crate) fn find(cfg: &TrustConfig, prefix: &str, found: &mut Found) {
    let (dbs, certutil) = match prepare(cfg, false) {
        Ok(p) => p,
        Err(rows) => return found.unprepared(rows),
    };
    for db in &dbs {
        let list = Cmd::new(&certutil).args(["-L", "-d", &db.spec()]);
        let out = match run(cfg, &list) {
            Ok(out) if out.success() => out,
            Ok(out) => {
                found
                    .unreadable
                    .push(StoreReport::failed(STORE, db.spec(), out.failure()));
                continue;
            }
            Err(detail) => {
                found
                    .unreadable
                    .push(StoreReport::failed(STORE, db.spec(), detail));
                continue;
            }
        };
        for name in names_in_listing(&out.stdout, prefix) {
            match lookup(cfg, &certutil, db, &name) {
                Ok(Lookup::Found(fps)) => found.add(STORE, &db.spec(), &name, fps),
                Ok(Lookup::NotFound) => {}
                Err(detail) => found
                    .unreadable
                    .push(StoreReport::failed(STORE, db.spec(), detail)),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn databases_are_found_by_their_files_and_listed_once() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let mk = |rel: &str, file: &str| {
            let d = h.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), b"").unwrap();
        };
        mk(".pki/nssdb", "cert9.db");
        mk(".mozilla/firefox/abcd.default-release", "cert9.db");
        mk(".mozilla/firefox/old.default", "cert8.db");
        mk(".mozilla/firefox/empty.profile", "prefs.js");
        mk(
            ".var/app/org.mozilla.firefox/.mozilla/firefox/f.default",
            "cert9.db",
        );
        mk("snap/firefox/common/.mozilla/firefox/s.default", "cert9.db");
        mk(".config/mozilla/firefox/x.default", "cert9.db");
        mk("snap/chromium/2000/.pki/nssdb", "cert9.db");
        std::os::unix::fs::symlink("2000", h.join("snap/chromium/current")).unwrap();
        // A second name for a profile already listed is skipped.
        std::os::unix::fs::symlink(
            h.join(".mozilla/firefox/abcd.default-release"),
            h.join(".config/mozilla/firefox/y.link"),
        )
        .unwrap();
        let cfg = TrustConfig {
            system_root: h.join("no-root"),
            home: Some(h.to_path_buf()),
            ..TrustConfig::default()
        };
        let specs: Vec<String> = databases(&cfg)
            .iter()
            .map(|d| d.spec().replace(&h.display().to_string(), "~"))
            .collect();
        assert_eq!(
            specs,
            [
                "sql:~/.pki/nssdb",
                "sql:~/snap/chromium/current/.pki/nssdb",
                "sql:~/.mozilla/firefox/abcd.default-release",
                "dbm:~/.mozilla/firefox/old.default",
                "sql:~/snap/firefox/common/.mozilla/firefox/s.default",
                "sql:~/.var/app/org.mozilla.firefox/.mozilla/firefox/f.default",
                "sql:~/.config/mozilla/firefox/x.default",
            ]
        );
        let none = TrustConfig {
            system_root: h.join("no-root"),
            home: Some(h.join("nobody")),
            ..TrustConfig::default()
        };
        let rows = install(
            &none,
            &Target {
                name: "n",
                fingerprint: None,
                pem: None,
            },
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, StoreState::NotPresent);
    }
}
