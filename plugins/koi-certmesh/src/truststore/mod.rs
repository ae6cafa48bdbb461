//! Trust stores: putting a mesh's root CA certificate where this machine's software looks for
//! trusted roots, checking it is really there, and taking it out again — what `mkcert -install`
//! does, with every location configurable so tests run the real tools against temporary roots.
//!
//! # Stores
//! - **system** — Linux, by [`Family`] (all paths below `TrustConfig::system_root`):
//!   - Debian/Ubuntu: `usr/local/share/ca-certificates/<name>.crt` + `update-ca-certificates`,
//!     verified in `etc/ssl/certs/ca-certificates.crt`. With a root other than `/` the tool is
//!     pointed at the root with `--certsconf --certsdir --localcertsdir --etccertsdir --hooksdir`.
//!     Removal reruns it with `--fresh` only when the certificate's link in `etc/ssl/certs` is
//!     left dangling; when no certificate at all is left the tool keeps its old bundle, so the
//!     certificate is then cut from the bundle directly.
//!   - Fedora/RHEL: `etc/pki/ca-trust/source/anchors/<name>.pem` + `update-ca-trust extract`,
//!     verified in `etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem`.
//!   - Arch: `etc/ca-certificates/trust-source/anchors/<name>.crt` + `trust extract-compat`,
//!     verified in `etc/ca-certificates/extracted/tls-ca-bundle.pem`.
//!   - openSUSE: `etc/pki/trust/anchors/<name>.pem` + `update-ca-certificates`, verified in
//!     `var/lib/ca-certificates/ca-bundle.pem`.
//!
//!   The Fedora, Arch and openSUSE tools read their sources from fixed paths, so with a root
//!   other than `/` only the anchor file is placed: the tool is *not* run (it would rebuild the
//!   real machine's bundle) and the row is `failed` with `command_to_run` = `chroot <root> <tool>`.
//!   macOS (`security add-trusted-cert` into the System keychain) and Windows (`certutil.exe
//!   -addstore ROOT`) have their own modules, compiled only there and untested here.
//! - **nss** (Unix) — one row per NSS database: `~/.pki/nssdb`, snap Chromium's, `<root>/etc/pki/nssdb`,
//!   and every Firefox profile (classic, snap, Flatpak, `~/.config/mozilla`) holding `cert9.db`
//!   (`sql:`) or `cert8.db` (`dbm:`); `certutil -A/-L/-D` with the anchor's name as nickname. When
//!   no database exists there is exactly one `not_present` row, so callers can say "no browser
//!   profile found".
//! - **java** — only when `java_home` is set: `$JAVA_HOME/lib/security/cacerts` (or
//!   `jre/lib/security/cacerts`), store password `changeit`, `keytool -importcert/-list/-delete`
//!   with the anchor's name as alias; a missing keystore is one `not_present` row.
//!
//! # Finding roots by name
//! [`find`] lists every entry whose name starts with a prefix (`koi-certmesh-` for Koi) in the
//! system anchor directory (Linux), each NSS database and the Java keystore, with fingerprints, so
//! roots can be shown and removed when nothing else remembers them.
//!
//! # Report
//! Every store found gives one [`StoreReport`]. `verified` means the store was read back after the
//! change: for install, the certificate was found *by fingerprint*; for remove, it is confirmed
//! gone. Permission failures (EACCES/EPERM, or a tool saying so) are `failed` with
//! `command_to_run` set to the exact command to retry with privileges. Every tool runs with
//! `TrustConfig::timeout` and `LC_ALL=C`; failures name the command, its exit status and the last
//! lines it printed. Nothing here panics; bad input (an unsafe name, a PEM without a certificate,
//! a fingerprint that does not match) is one `failed` row with store `anchor`.

mod exec;
mod family;
mod found;
mod java;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(unix)]
mod nss;
mod pem;
#[cfg(target_os = "linux")]
mod system;
#[cfg(target_os = "windows")]
mod windows;

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

pub use family::{Family, UnknownFamily};
pub use found::{Found, FoundRoot, find};

/// Where the stores live. Every location is configurable so tests run the real commands against a
/// temporary root.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Prefix for `/etc`, `/usr/...`; default `/`; env `KOI_TRUST_ROOT`.
    pub system_root: PathBuf,
    /// Where to look for NSS databases and Firefox profiles; default `$HOME`; env
    /// `KOI_TRUST_HOME`. `None`: no per-user NSS database is looked for.
    pub home: Option<PathBuf>,
    /// env `JAVA_HOME`; the Java keystore is handled only when set.
    pub java_home: Option<PathBuf>,
    /// Override distribution detection; env `KOI_TRUST_FAMILY=debian|fedora|arch|opensuse`.
    pub family: Option<Family>,
    /// Deadline for each tool run. Default 60 s.
    pub timeout: Duration,
    /// What the user runs to install, used to build `command_to_run` after a permission failure
    /// (prefixed with `sudo` and the non-default settings above). Default
    /// `koi certmesh trust install`.
    pub install_command: String,
    /// Same for removal. Default `koi certmesh trust remove`.
    pub remove_command: String,
    /// The `KOI_HOME` the retry must use (sudo resets HOME, so `~/.koi` would become root's).
    pub koi_home: Option<PathBuf>,
}

impl Default for TrustConfig {
    /// The real machine (`/`), no home, no Java, detected family.
    fn default() -> Self {
        Self {
            system_root: PathBuf::from("/"),
            home: None,
            java_home: None,
            family: None,
            timeout: Duration::from_secs(60),
            install_command: "koi certmesh trust install".to_string(),
            remove_command: "koi certmesh trust remove".to_string(),
            koi_home: None,
        }
    }
}

impl TrustConfig {
    /// From `KOI_TRUST_ROOT`, `KOI_TRUST_HOME` (else `HOME`), `JAVA_HOME` and
    /// `KOI_TRUST_FAMILY`; empty values count as unset, an unknown family is logged and ignored.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let family = std::env::var("KOI_TRUST_FAMILY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| match v.parse::<Family>() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("KOI_TRUST_FAMILY ignored: {e}");
                    None
                }
            });
        Self {
            system_root: var("KOI_TRUST_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
            home: var("KOI_TRUST_HOME")
                .or_else(|| var("HOME"))
                .map(PathBuf::from),
            java_home: var("JAVA_HOME").map(PathBuf::from),
            family,
            install_command: koi_command(var("KOI_EXE").as_deref(), "install"),
            remove_command: koi_command(var("KOI_EXE").as_deref(), "remove"),
            ..Self::default()
        }
    }

    /// Whether `system_root` is the machine's own `/`.
    pub fn is_real_root(&self) -> bool {
        self.system_root
            .components()
            .all(|c| matches!(c, Component::RootDir))
            && self.system_root.has_root()
    }

    /// The family to use: the override, else detection under `system_root`.
    pub fn resolved_family(&self) -> Option<Family> {
        self.family.or_else(|| Family::detect(&self.system_root))
    }

    /// `sudo [env K=V ...] <command>`: the exact command to retry with privileges, carrying the
    /// settings `sudo` would otherwise drop (it resets HOME, which the NSS store depends on).
    pub fn privileged_command(&self, command: &str) -> String {
        let q = |p: &Path| exec::shell_quote(&p.to_string_lossy());
        let mut env = Vec::new();
        if let Some(koi_home) = &self.koi_home {
            env.push(format!("KOI_HOME={}", q(koi_home)));
        }
        if !self.is_real_root() {
            env.push(format!("KOI_TRUST_ROOT={}", q(&self.system_root)));
        }
        if let Some(home) = &self.home {
            env.push(format!("KOI_TRUST_HOME={}", q(home)));
        }
        if let Some(java) = &self.java_home {
            env.push(format!("JAVA_HOME={}", q(java)));
        }
        if let Some(family) = self.family {
            env.push(format!("KOI_TRUST_FAMILY={family}"));
        }
        if cfg!(windows) {
            // No sudo: the caller tells the user to open an Administrator prompt.
            return command.to_string();
        }
        if env.is_empty() {
            format!("sudo {command}")
        } else {
            format!("sudo env {} {command}", env.join(" "))
        }
    }
}

/// `<koi> certmesh trust <action>`, with `koi` the absolute path the host gave in `KOI_EXE`
/// (docs/plugins.md): `sudo` searches its own `secure_path`, where a koi installed in
/// `~/.cargo/bin` or a build directory is not.
fn koi_command(koi_exe: Option<&std::ffi::OsStr>, action: &str) -> String {
    let koi = koi_exe
        .map(|p| p.to_string_lossy())
        .filter(|p| Path::new(p.as_ref()).is_absolute())
        .map_or_else(|| "koi".to_owned(), |p| exec::shell_quote(&p));
    format!("{koi} certmesh trust {action}")
}

/// The certificate to trust. `name` is unique per mesh (e.g. `koi-certmesh-3fa2c1d09b7e4411`,
/// built by the caller) and becomes the file name, NSS nickname and Java alias, so it must be
/// 1–100 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`. `fingerprint` is the
/// lowercase hex SHA-256 of the certificate's DER (colons and case are tolerated).
#[derive(Debug, Clone, Copy)]
pub struct Anchor<'a> {
    pub name: &'a str,
    pub cert_pem: &'a str,
    pub fingerprint: &'a str,
}

/// Lowercase hex SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn fingerprint(cert_pem: &str) -> Result<String, AnchorError> {
    pem::certificates(cert_pem)
        .first()
        .map(|der| pem::sha256_hex(der))
        .ok_or(AnchorError::NoCertificate)
}

/// Why an [`Anchor`] or name was refused before any store was touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error(
        "the trust-store name {0:?} is not usable as a file name, NSS nickname and Java alias: use 1-100 characters from A-Z a-z 0-9 . _ - not starting with . or -"
    )]
    InvalidName(String),
    #[error(
        "the anchor holds no PEM `CERTIFICATE` block; pass the CA certificate (ca.pem), not a key or CSR"
    )]
    NoCertificate,
    #[error(
        "the anchor's fingerprint {given} does not match its certificate ({actual}); pass the fingerprint of this certificate"
    )]
    FingerprintMismatch { given: String, actual: String },
}

/// Checks a store name (see [`Anchor`]).
pub fn validate_name(name: &str) -> Result<(), AnchorError> {
    let ok = (1..=100).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AnchorError::InvalidName(name.to_string()))
    }
}

/// A checked anchor, as the store modules get it.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    pub name: &'a str,
    /// Normalized fingerprint; `None` for removal by name only.
    pub fingerprint: Option<String>,
    /// The certificate alone, canonical PEM; `None` for removal and status.
    pub pem: Option<String>,
}

impl<'a> Target<'a> {
    fn checked(anchor: &Anchor<'a>, need_pem: bool) -> Result<Self, AnchorError> {
        validate_name(anchor.name)?;
        let given = pem::normalize_fingerprint(anchor.fingerprint);
        let der = pem::certificates(anchor.cert_pem).into_iter().next();
        let (fingerprint, pem) = match der {
            Some(der) => {
                let actual = pem::sha256_hex(&der);
                if actual != given {
                    return Err(AnchorError::FingerprintMismatch { given, actual });
                }
                (actual, Some(pem::der_to_pem(&der)))
            }
            // Status and removal can work from the fingerprint alone.
            None if !need_pem && given.len() == 64 => (given, None),
            None => return Err(AnchorError::NoCertificate),
        };
        Ok(Self {
            name: anchor.name,
            fingerprint: Some(fingerprint),
            pem,
        })
    }
}

/// What a store holds under a name: the fingerprints found, or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Vec<String>),
    NotFound,
}

/// Where the store stands, from the last operation's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// The certificate is in the store.
    Installed,
    /// The store exists and does not hold the certificate (status), or held nothing under the
    /// name (remove).
    Absent,
    /// It was there and has been taken out.
    Removed,
    /// The operation did not complete; `detail` says why and what to do.
    Failed,
    /// This kind of store is not on this machine (no NSS database, no Java keystore).
    NotPresent,
}

impl fmt::Display for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreState::Installed => "installed",
            StoreState::Absent => "absent",
            StoreState::Removed => "removed",
            StoreState::Failed => "failed",
            StoreState::NotPresent => "not present",
        })
    }
}

/// One store's outcome.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StoreReport {
    /// `system (debian)`, `system (macos)`, `nss`, `java`, or `anchor` for refused input.
    pub store: String,
    /// The anchor file, database (`sql:/home/ada/.pki/nssdb`) or keystore path.
    pub location: String,
    pub state: StoreState,
    /// The store was read back after the change and agrees with `state` (by fingerprint).
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// After a permission failure: the exact command the user should run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_to_run: Option<String>,
    /// The system store's CA bundle file (what `openssl verify -CAfile` and most TLS clients read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

impl StoreReport {
    pub(crate) fn new(
        store: impl Into<String>,
        location: impl Into<String>,
        state: StoreState,
    ) -> Self {
        Self {
            store: store.into(),
            location: location.into(),
            state,
            verified: false,
            detail: None,
            command_to_run: None,
            bundle: None,
        }
    }

    pub(crate) fn failed(
        store: impl Into<String>,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(store, location, StoreState::Failed).detail(detail)
    }

    pub(crate) fn verified(mut self) -> Self {
        self.verified = true;
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn command(mut self, command: impl Into<String>) -> Self {
        self.command_to_run = Some(command.into());
        self
    }

    pub(crate) fn bundle(mut self, bundle: &Path) -> Self {
        self.bundle = Some(bundle.display().to_string());
        self
    }
}

/// The outcome of [`install`], [`remove`] or [`status`]: one row per store found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TrustReport {
    pub stores: Vec<StoreReport>,
}

impl TrustReport {
    /// No store failed.
    pub fn ok(&self) -> bool {
        self.stores.iter().all(|s| s.state != StoreState::Failed)
    }

    /// The CA bundle the system store produced, when the certificate is installed there (e.g.
    /// `<root>/etc/ssl/certs/ca-certificates.crt` on Debian).
    pub fn system_bundle(&self) -> Option<PathBuf> {
        self.stores
            .iter()
            .find(|s| s.store.starts_with("system") && s.state == StoreState::Installed)
            .and_then(|s| s.bundle.as_ref())
            .map(PathBuf::from)
    }

    /// The first `command_to_run` of a failed store, if a retry with privileges would help.
    pub fn command_to_run(&self) -> Option<&str> {
        self.stores
            .iter()
            .filter(|s| s.state == StoreState::Failed)
            .find_map(|s| s.command_to_run.as_deref())
    }

    fn refused(name: &str, err: AnchorError) -> Self {
        Self {
            stores: vec![StoreReport::failed("anchor", name, err.to_string())],
        }
    }
}

impl fmt::Display for TrustReport {
    /// One line per store: `nss  sql:/home/ada/.pki/nssdb  installed (verified) — detail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.stores {
            write!(f, "{}  {}  {}", s.store, s.location, s.state)?;
            if s.verified {
                f.write_str(" (verified)")?;
            }
            if let Some(d) = &s.detail {
                write!(f, " — {d}")?;
            }
            if let Some(c) = &s.command_to_run {
                write!(f, " — run: {c}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Installs `anchor` in every store found, verifying each by fingerprint.
pub fn install(cfg: &TrustConfig, anchor: &Anchor) -> TrustReport {
    let target = match Target::checked(anchor, true) {
        Ok(t) => t,
        Err(e) => return TrustReport::refused(anchor.name, e),
    };
    let mut stores = platform_install(cfg, &target);
    #[cfg(unix)]
    stores.extend(nss::install(cfg, &target));
    stores.extend(java::install(cfg, &target));
    TrustReport { stores }
}

/// Removes whatever is stored under `name` from every store found, and checks it is gone. On
/// macOS and Windows the system stores do not keep Koi's name; use [`remove_anchor`] there.
pub fn remove(cfg: &TrustConfig, name: &str) -> TrustReport {
    if let Err(e) = validate_name(name) {
        return TrustReport::refused(name, e);
    }
    remove_target(
        cfg,
        &Target {
            name,
            fingerprint: None,
            pem: None,
        },
    )
}

/// Like [`remove`], and also checks each store no longer holds the certificate with the anchor's
/// fingerprint (whatever its name); stores keyed by certificate (macOS, Windows) need this form.
/// `cert_pem` may be empty when `fingerprint` is given.
pub fn remove_anchor(cfg: &TrustConfig, anchor: &Anchor) -> TrustReport {
    match Target::checked(anchor, false) {
        Ok(t) => remove_target(cfg, &t),
        Err(e) => TrustReport::refused(anchor.name, e),
    }
}

fn remove_target(cfg: &TrustConfig, target: &Target) -> TrustReport {
    let mut stores = platform_remove(cfg, target);
    #[cfg(unix)]
    stores.extend(nss::remove(cfg, target));
    stores.extend(java::remove(cfg, target));
    TrustReport { stores }
}

/// Reports, without changing anything, whether each store holds `anchor` (by fingerprint).
/// `cert_pem` may be empty when `fingerprint` is given.
pub fn status(cfg: &TrustConfig, anchor: &Anchor) -> TrustReport {
    let target = match Target::checked(anchor, false) {
        Ok(t) => t,
        Err(e) => return TrustReport::refused(anchor.name, e),
    };
    let mut stores = platform_status(cfg, &target);
    #[cfg(unix)]
    stores.extend(nss::status(cfg, &target));
    stores.extend(java::status(cfg, &target));
    TrustReport { stores }
}

#[cfg(target_os = "macos")]
use macos as platform;
#[cfg(target_os = "linux")]
use system as platform;
#[cfg(target_os = "windows")]
use windows as platform;

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
fn platform_install(cfg: &TrustConfig, t: &Target) -> Vec<StoreReport> {
    vec![platform::install(cfg, t)]
}
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
fn platform_remove(cfg: &TrustConfig, t: &Target) -> Vec<StoreReport> {
    vec![platform::remove(cfg, t)]
}
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
fn platform_status(cfg: &TrustConfig, t: &Target) -> Vec<StoreReport> {
    vec![platform::status(cfg, t)]
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn unsupported() -> Vec<StoreReport> {
    vec![StoreReport::failed(
        "system",
        std::env::consts::OS,
        "Koi does not know this operating system's trust store; add the CA certificate by hand",
    )]
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_install(_: &TrustConfig, _: &Target) -> Vec<StoreReport> {
    unsupported()
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_remove(_: &TrustConfig, _: &Target) -> Vec<StoreReport> {
    unsupported()
}
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_status(_: &TrustConfig, _: &Target) -> Vec<StoreReport> {
    unsupported()
}

/// Maps a file-system error on `path` to a failed row; permission errors get `command_to_run`.
pub(crate) fn io_failure(
    cfg: &TrustConfig,
    store: &str,
    location: &str,
    what: &str,
    path: &Path,
    err: &std::io::Error,
    retry: &str,
) -> StoreReport {
    let detail = format!("could not {what} {}: {err}", path.display());
    match err.kind() {
        std::io::ErrorKind::PermissionDenied => StoreReport::failed(
            store,
            location,
            format!("{detail}; this store needs administrator rights"),
        )
        .command(cfg.privileged_command(retry)),
        std::io::ErrorKind::ReadOnlyFilesystem => StoreReport::failed(
            store,
            location,
            format!("{detail}; the file system is read-only, so this store cannot be changed here"),
        ),
        _ => StoreReport::failed(store, location, detail),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_commands_name_the_koi_the_host_runs() {
        let exe = std::ffi::OsStr::new("/opt/my koi/bin/koi");
        assert_eq!(
            koi_command(Some(exe), "install"),
            "'/opt/my koi/bin/koi' certmesh trust install"
        );
        assert_eq!(koi_command(None, "remove"), "koi certmesh trust remove");
        let relative = std::ffi::OsStr::new("target/koi");
        assert_eq!(
            koi_command(Some(relative), "remove"),
            "koi certmesh trust remove"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("koi-certmesh-3fa2c1d09b7e4411").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "..", "é", &"x".repeat(101)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn privileged_command_carries_non_default_settings() {
        let cfg = TrustConfig::default();
        assert!(cfg.is_real_root());
        assert_eq!(
            cfg.privileged_command(&cfg.install_command),
            "sudo koi certmesh trust install"
        );
        let cfg = TrustConfig {
            system_root: "/srv/lab root".into(),
            home: Some("/home/ada".into()),
            family: Some(Family::Fedora),
            ..TrustConfig::default()
        };
        assert!(!cfg.is_real_root());
        assert_eq!(
            cfg.privileged_command("koi certmesh trust remove"),
            "sudo env KOI_TRUST_ROOT='/srv/lab root' KOI_TRUST_HOME=/home/ada KOI_TRUST_FAMILY=fedora koi certmesh trust remove"
        );
    }
}
