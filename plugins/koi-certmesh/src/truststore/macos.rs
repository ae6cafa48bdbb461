//! The macOS system trust store: the System keychain, changed with the `security` tool as mkcert
//! does (`add-trusted-cert -d -r trustRoot`, `delete-certificate -Z <sha1> -t`) and read back with
//! `find-certificate -a -Z -p` to verify by SHA-256 fingerprint. `system_root` does not apply. The
//! keychain does not keep Koi's name, so removal needs the certificate's fingerprint
//! ([`super::remove_anchor`]).
//!
//! UNTESTED here: this module is compiled only on macOS, and Koi's CI runs on Linux.

use super::exec::{self, Cmd, TempFile};
use super::{StoreReport, StoreState, Target, TrustConfig, pem};

const STORE: &str = "system (macos)";
const KEYCHAIN: &str = "/Library/Keychains/System.keychain";

fn security() -> Cmd {
    Cmd::new(exec::which("security").unwrap_or_else(|| "/usr/bin/security".into()))
}

/// The SHA-1 hash `security find-certificate -Z -p` printed for the certificate with SHA-256
/// fingerprint `fp` (the hash lines come before each PEM block).
fn sha1_of(listing: &str, fp: &str) -> Option<String> {
    let mut sha1: Option<String> = None;
    let mut block: Option<String> = None;
    for line in listing.lines() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix("SHA-1 hash:") {
            sha1 = Some(h.trim().to_string());
        } else if line.starts_with("-----BEGIN CERTIFICATE-----") {
            block = Some(format!("{line}\n"));
        } else if let Some(b) = block.as_mut() {
            b.push_str(line);
            b.push('\n');
            if line.starts_with("-----END CERTIFICATE-----") {
                if pem::text_contains(b, fp) {
                    return sha1;
                }
                block = None;
            }
        }
    }
    None
}

/// The keychain listing, or a failed row.
fn listing(cfg: &TrustConfig) -> Result<String, Box<StoreReport>> {
    let cmd = security().args(["find-certificate", "-a", "-Z", "-p", KEYCHAIN]);
    match exec::run(&cmd, cfg.timeout) {
        Ok(out) if out.success() => Ok(out.stdout),
        Ok(out) => Err(Box::new(StoreReport::failed(
            STORE,
            KEYCHAIN,
            out.failure(),
        ))),
        Err(e) => Err(Box::new(StoreReport::failed(
            STORE,
            KEYCHAIN,
            e.to_string(),
        ))),
    }
}

pub(crate) fn install(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let (Some(fp), Some(pem_text)) = (target.fingerprint.as_deref(), target.pem.as_deref()) else {
        return StoreReport::failed(STORE, KEYCHAIN, "no certificate to install");
    };
    if let Ok(list) = listing(cfg) {
        if pem::text_contains(&list, fp) {
            return StoreReport::new(STORE, KEYCHAIN, StoreState::Installed)
                .verified()
                .detail("already installed");
        }
    }
    let file = match TempFile::with(target.name, pem_text.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            return StoreReport::failed(
                STORE,
                KEYCHAIN,
                format!("cannot write a temporary file: {e}"),
            );
        }
    };
    let cmd = security()
        .args(["add-trusted-cert", "-d", "-r", "trustRoot", "-k", KEYCHAIN])
        .arg(&file.0);
    match exec::run(&cmd, cfg.timeout) {
        Ok(out) if out.success() => {}
        Ok(out) if out.permission_denied() => {
            return StoreReport::failed(
                STORE,
                KEYCHAIN,
                format!(
                    "{}; the System keychain needs an administrator",
                    out.failure()
                ),
            )
            .command(cfg.privileged_command(&cfg.install_command));
        }
        Ok(out) => return StoreReport::failed(STORE, KEYCHAIN, out.failure()),
        Err(e) => return StoreReport::failed(STORE, KEYCHAIN, e.to_string()),
    }
    match listing(cfg) {
        Ok(list) if pem::text_contains(&list, fp) => {
            StoreReport::new(STORE, KEYCHAIN, StoreState::Installed).verified()
        }
        Ok(_) => StoreReport::failed(
            STORE,
            KEYCHAIN,
            format!(
                "`security add-trusted-cert` succeeded but the System keychain does not list certificate {fp}"
            ),
        ),
        Err(row) => *row,
    }
}

pub(crate) fn remove(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let Some(fp) = target.fingerprint.as_deref() else {
        return StoreReport::failed(
            STORE,
            KEYCHAIN,
            "the System keychain does not keep Koi's name; remove by certificate (remove_anchor with the CA's fingerprint)",
        );
    };
    let list = match listing(cfg) {
        Ok(l) => l,
        Err(row) => return *row,
    };
    let Some(sha1) = sha1_of(&list, fp) else {
        return StoreReport::new(STORE, KEYCHAIN, StoreState::Absent).verified();
    };
    let cmd = security().args(["delete-certificate", "-Z", &sha1, "-t", KEYCHAIN]);
    match exec::run(&cmd, cfg.timeout) {
        Ok(out) if out.success() => {}
        Ok(out) if out.permission_denied() => {
            return StoreReport::failed(
                STORE,
                KEYCHAIN,
                format!(
                    "{}; the System keychain needs an administrator",
                    out.failure()
                ),
            )
            .command(cfg.privileged_command(&cfg.remove_command));
        }
        Ok(out) => return StoreReport::failed(STORE, KEYCHAIN, out.failure()),
        Err(e) => return StoreReport::failed(STORE, KEYCHAIN, e.to_string()),
    }
    match listing(cfg) {
        Ok(list) if !pem::text_contains(&list, fp) => {
            StoreReport::new(STORE, KEYCHAIN, StoreState::Removed).verified()
        }
        Ok(_) => StoreReport::failed(
            STORE,
            KEYCHAIN,
            "`security delete-certificate` succeeded but the certificate is still listed",
        ),
        Err(row) => *row,
    }
}

pub(crate) fn status(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let fp = target.fingerprint.as_deref().unwrap_or_default();
    match listing(cfg) {
        Ok(list) if pem::text_contains(&list, fp) => {
            StoreReport::new(STORE, KEYCHAIN, StoreState::Installed).verified()
        }
        Ok(_) => StoreReport::new(STORE, KEYCHAIN, StoreState::Absent).verified(),
        Err(row) => *row,
    }
}
