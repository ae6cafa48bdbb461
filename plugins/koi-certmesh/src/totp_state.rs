//! The enrollment-code guard's state on disk (`certmesh/totp-state.json`): the replay and lockout
//! state of [`koi_certmesh_core::TotpGuard`], saved after every code the CA checks so a restart
//! neither forgets a lockout nor accepts a code twice. [`lockout_until`] reads it for `status` and
//! the API without the CA key.

use koi_certmesh_core::TotpState;

use crate::error::Refusal;
use crate::layout::Layout;

/// When an enrollment lockout (too many wrong codes) ends, as Unix time, if one is in force.
pub fn lockout_until(layout: &Layout, now_unix: u64) -> Option<u64> {
    load(layout).locked_until.filter(|u| *u > now_unix)
}

/// The saved state, or the fresh state when there is none (or it cannot be read).
pub(crate) fn load(layout: &Layout) -> TotpState {
    std::fs::read(layout.totp_state())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Saves the state (atomically) after every code checked or secret rotated.
pub(crate) fn save(layout: &Layout, state: &TotpState) -> Result<(), Refusal> {
    let json = serde_json::to_vec(state).map_err(|e| Refusal::Internal(e.to_string()))?;
    koi_certmesh_core::atomic::write_atomic(&layout.totp_state(), &json)
        .map_err(|e| Refusal::Internal(e.to_string()))
}
