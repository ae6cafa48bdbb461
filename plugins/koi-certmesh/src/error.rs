//! Turning failures into the errors the user sees: every message names the thing, the cause and
//! the next step. The CA's own refusals (locked, wrong code, out of scope…) are [`Refusal`]s, which
//! the HTTPS API maps to 4xx/5xx statuses and the CLI to method errors.

use koi_sdk::MethodError;

/// The wording (from the issue) for every signing path while the CA is locked.
pub const LOCKED_MESSAGE: &str = "CA is locked. Run koi certmesh unlock to resume signing.";

/// A core-library error as a method error (its text already names the next step).
pub fn core(e: koi_certmesh_core::Error) -> MethodError {
    MethodError::new(e.to_string())
}

/// The CA's roster is here but its vault is not. `create` refuses while the roster is here, and
/// `leave` needs no vault, so the advice is leave, then create.
pub fn missing_vault(vault: &std::path::Path) -> MethodError {
    fail(
        format!(
            "This machine is the CA of a mesh, but its key vault {} is missing (moved or \
             deleted), so nothing can be signed.",
            vault.display()
        ),
        "koi keeps no copy of the vault: put back one you saved, or start a new mesh with \
         `koi certmesh leave` and then `koi certmesh create` (members join the new mesh).",
    )
}

/// A failure with its next step.
pub fn fail(message: impl Into<String>, next: impl Into<String>) -> MethodError {
    MethodError::new(message).hint(next)
}

/// Why the CA refused a request. Each variant maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request was malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// This machine holds no CA (404).
    #[error(
        "This machine is not a certmesh CA. Point `--ca` at the machine that ran `koi certmesh create`."
    )]
    NotCa,
    /// The CA key is sealed (503).
    #[error("{LOCKED_MESSAGE}")]
    Locked,
    /// Enrollment is closed (403).
    #[error("Enrollment is closed on this mesh. Ask the CA's operator to open it.")]
    EnrollmentClosed,
    /// The code was wrong, expired or replayed (401).
    #[error(
        "The enrollment code was refused: {0}. Read a fresh code from the authenticator app and try again."
    )]
    BadCode(String),
    /// Too many wrong codes (429).
    #[error(
        "Enrollment is locked for {seconds} more second(s) after 3 wrong codes. Wait, then try again with a fresh code."
    )]
    LockedOut {
        /// Seconds until codes are evaluated again.
        seconds: u64,
    },
    /// A name or address outside the mesh's scope, or a certificate request the CA will not sign (403).
    #[error("{0}")]
    NotPermitted(String),
    /// A renewal whose client certificate is not a current member certificate of this mesh:
    /// none, another mesh's, or one the roster no longer records (401).
    #[error("{0}")]
    NotMember(String),
    /// A renewal with an expired certificate on a mesh that does not renew those (403).
    #[error("{0}")]
    Expired(String),
    /// Something failed on the CA itself (500).
    #[error(
        "The CA failed to process the request: {0}. Check `koi certmesh status` and the daemon's log on the CA."
    )]
    Internal(String),
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::BadCode(_) | Refusal::NotMember(_) => 401,
            Refusal::EnrollmentClosed | Refusal::NotPermitted(_) | Refusal::Expired(_) => 403,
            Refusal::NotCa => 404,
            Refusal::LockedOut { .. } => 429,
            Refusal::Internal(_) => 500,
            Refusal::Locked => 503,
        }
    }
    /// A short machine-readable reason (audit entries and JSON error bodies).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NotCa => "not_a_ca",
            Refusal::Locked => "ca_locked",
            Refusal::EnrollmentClosed => "enrollment_closed",
            Refusal::BadCode(_) => "bad_code",
            Refusal::LockedOut { .. } => "locked_out",
            Refusal::NotPermitted(_) => "not_permitted",
            Refusal::NotMember(_) => "not_a_member",
            Refusal::Expired(_) => "certificate_expired",
            Refusal::Internal(_) => "internal",
        }
    }
}

impl From<Refusal> for MethodError {
    fn from(r: Refusal) -> Self {
        MethodError::new(r.to_string())
    }
}
