//! Dev-only benchmark helper: appends N signed entries to a CA's audit log, so the unlock and
//! `log --last` benchmarks (bench/certmesh/audit.sh) have a large log without sending N requests.
//!
//! Usage: `audit_fill CERTMESH_DIR PASSPHRASE_FILE N` (the daemon must not be running on it).
//! The entries are built in a scratch copy on /dev/shm (fsync is free there, so 100,000 entries
//! take seconds instead of minutes), with the same code the CA uses (`AuditLog::append`, a signed
//! checkpoint every 256 entries and none at the end, as a running CA leaves it), then copied
//! back; the roster's audit head is updated.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use koi_certmesh_core::checkpoint::checkpoint_path;
use koi_certmesh_core::{AuditLog, CaStore, Passphrase, Roster};
use serde_json::json;
use time::OffsetDateTime;

fn run(dir: &Path, pass_file: &Path, n: u64) -> Result<(), String> {
    let pass =
        std::fs::read_to_string(pass_file).map_err(|e| format!("{}: {e}", pass_file.display()))?;
    let unlocked = CaStore::new(dir.join("ca"))
        .unlock(&Passphrase::new(pass.trim_end_matches(['\r', '\n'])))
        .map_err(|e| e.to_string())?;
    let ca = unlocked.ca();
    let log_path = dir.join("audit.log");
    let scratch = PathBuf::from(format!("/dev/shm/koi-audit-fill-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let tmp = scratch.join("audit.log");
    std::fs::copy(&log_path, &tmp).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let _ = std::fs::copy(checkpoint_path(&log_path), checkpoint_path(&tmp));
    let mut log = AuditLog::open(&tmp, ca).map_err(|e| e.to_string())?;
    let now = OffsetDateTime::now_utc();
    for i in 0..n {
        log.append(
            ca,
            "enrollment_refused",
            &format!("bench-{}", i % 997),
            json!({
                "reason": "bad_code",
                "detail": "The enrollment code was refused: it does not match the current code; 2 attempt(s) left before enrollment locks for 5 minutes. Read a fresh code from the authenticator app and try again.",
                "peer": format!("10.77.{}.{}", (i / 250) % 250, i % 250 + 1),
                "operator": null,
            }),
            now,
        )
        .map_err(|e| e.to_string())?;
    }
    let head = log.head();
    drop(log);
    std::fs::copy(&tmp, &log_path).map_err(|e| e.to_string())?;
    if checkpoint_path(&tmp).exists() {
        std::fs::copy(checkpoint_path(&tmp), checkpoint_path(&log_path))
            .map_err(|e| e.to_string())?;
    }
    std::fs::remove_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut roster = Roster::load(&dir.join("roster.json")).map_err(|e| e.to_string())?;
    roster.mesh.audit_head = head;
    roster
        .save(&dir.join("roster.json"))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(pass), Some(n)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|n| n.parse().ok()),
    ) else {
        eprintln!("usage: audit_fill CERTMESH_DIR PASSPHRASE_FILE N");
        return ExitCode::from(2);
    };
    match run(Path::new(dir), Path::new(pass), n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit_fill: {e}");
            ExitCode::FAILURE
        }
    }
}
