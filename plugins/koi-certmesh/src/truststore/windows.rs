//! The Windows system trust store: the machine's `ROOT` store, changed with Windows' own
//! `certutil.exe` (`-addstore -f ROOT`, `-delstore ROOT <serial>`) and read back with
//! `-store ROOT <serial> <file>`, whose exported certificate is compared by SHA-256 fingerprint.
//! `system_root` does not apply. The store does not keep Koi's name, so removal needs the
//! certificate ([`super::remove_anchor`]); certificates are addressed by serial number, which the
//! mesh CA makes random (16 bytes).
//!
//! UNTESTED here: this module is compiled only on Windows, and Koi's CI runs on Linux.

use super::exec::{self, Cmd, TempFile};
use super::{StoreReport, StoreState, Target, TrustConfig, pem};

const STORE: &str = "system (windows)";
const LOCATION: &str = "LocalMachine\\ROOT";

fn certutil() -> Cmd {
    Cmd::new(exec::which("certutil").unwrap_or_else(|| "certutil.exe".into()))
}

/// Whether the ROOT store holds the certificate with `serial` and SHA-256 `fp`.
fn holds(cfg: &TrustConfig, serial: &str, fp: &str) -> Result<bool, String> {
    let out_file = TempFile::with(&format!("export-{serial}"), b"").map_err(|e| e.to_string())?;
    // certutil refuses to overwrite the export file.
    let _ = std::fs::remove_file(&out_file.0);
    let cmd = certutil().args(["-store", "ROOT", serial]).arg(&out_file.0);
    let out = exec::run(&cmd, cfg.timeout).map_err(|e| e.to_string())?;
    if !out.success() {
        // "Not found" and any failure to read look alike here: report absence, with the reason
        // available when the caller asks for status.
        return Ok(false);
    }
    let bytes = std::fs::read(&out_file.0).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    Ok(pem::text_contains(&text, fp) || pem::sha256_hex(&bytes) == fp)
}

fn target_serial(target: &Target) -> Option<String> {
    let der = pem::certificates(target.pem.as_deref()?)
        .into_iter()
        .next()?;
    pem::serial_hex(&der)
}

fn denied(cfg: &TrustConfig, failure: String, command: &str) -> StoreReport {
    StoreReport::failed(
        STORE,
        LOCATION,
        format!("{failure}; the machine's ROOT store needs an elevated (Administrator) prompt"),
    )
    .command(cfg.privileged_command(command))
}

pub(crate) fn install(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let (Some(fp), Some(pem_text), Some(serial)) = (
        target.fingerprint.as_deref(),
        target.pem.as_deref(),
        target_serial(target),
    ) else {
        return StoreReport::failed(STORE, LOCATION, "no certificate to install");
    };
    if holds(cfg, &serial, fp) == Ok(true) {
        return StoreReport::new(STORE, LOCATION, StoreState::Installed)
            .verified()
            .detail("already installed");
    }
    let file = match TempFile::with(target.name, pem_text.as_bytes()) {
        Ok(f) => f,
        Err(e) => {
            return StoreReport::failed(
                STORE,
                LOCATION,
                format!("cannot write a temporary file: {e}"),
            );
        }
    };
    let cmd = certutil().args(["-addstore", "-f", "ROOT"]).arg(&file.0);
    match exec::run(&cmd, cfg.timeout) {
        Ok(out) if out.success() => {}
        Ok(out) if out.permission_denied() => {
            return denied(cfg, out.failure(), &cfg.install_command);
        }
        Ok(out) => return StoreReport::failed(STORE, LOCATION, out.failure()),
        Err(e) => return StoreReport::failed(STORE, LOCATION, e.to_string()),
    }
    match holds(cfg, &serial, fp) {
        Ok(true) => StoreReport::new(STORE, LOCATION, StoreState::Installed).verified(),
        Ok(false) => StoreReport::failed(
            STORE,
            LOCATION,
            format!(
                "`certutil -addstore` succeeded but `certutil -store ROOT {serial}` does not show certificate {fp}"
            ),
        ),
        Err(detail) => StoreReport::failed(STORE, LOCATION, detail),
    }
}

pub(crate) fn remove(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let (Some(fp), Some(serial)) = (target.fingerprint.as_deref(), target_serial(target)) else {
        return StoreReport::failed(
            STORE,
            LOCATION,
            "the ROOT store does not keep Koi's name; remove by certificate (remove_anchor with the CA's PEM)",
        );
    };
    match holds(cfg, &serial, fp) {
        Ok(false) => return StoreReport::new(STORE, LOCATION, StoreState::Absent).verified(),
        Ok(true) => {}
        Err(detail) => return StoreReport::failed(STORE, LOCATION, detail),
    }
    let cmd = certutil().args(["-delstore", "ROOT", &serial]);
    match exec::run(&cmd, cfg.timeout) {
        Ok(out) if out.success() => {}
        Ok(out) if out.permission_denied() => {
            return denied(cfg, out.failure(), &cfg.remove_command);
        }
        Ok(out) => return StoreReport::failed(STORE, LOCATION, out.failure()),
        Err(e) => return StoreReport::failed(STORE, LOCATION, e.to_string()),
    }
    match holds(cfg, &serial, fp) {
        Ok(false) => StoreReport::new(STORE, LOCATION, StoreState::Removed).verified(),
        Ok(true) => StoreReport::failed(
            STORE,
            LOCATION,
            "`certutil -delstore` succeeded but the certificate is still there",
        ),
        Err(detail) => StoreReport::failed(STORE, LOCATION, detail),
    }
}

pub(crate) fn status(cfg: &TrustConfig, target: &Target) -> StoreReport {
    let (Some(fp), Some(serial)) = (target.fingerprint.as_deref(), target_serial(target)) else {
        return StoreReport::failed(
            STORE,
            LOCATION,
            "status on Windows needs the CA's PEM, not only its fingerprint",
        );
    };
    match holds(cfg, &serial, fp) {
        Ok(true) => StoreReport::new(STORE, LOCATION, StoreState::Installed).verified(),
        Ok(false) => StoreReport::new(STORE, LOCATION, StoreState::Absent).verified(),
        Err(detail) => StoreReport::failed(STORE, LOCATION, detail),
    }
}
