//! The crate's one error type. Every variant names the thing that failed, the cause, and what the
//! operator can do next, so that the plugin can show the message as-is. No variant ever carries
//! secret material (passphrases, keys, TOTP codes or secrets).

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the certmesh core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("Failed to {action} {}: {source}. Check that the path exists, is on a writable disk and belongs to this user.", path.display())]
    Io {
        /// What we were doing ("write", "rename", "read", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// A file exists where we refuse to overwrite one (e.g. creating a CA twice).
    #[error("Refusing to overwrite {}: it already exists. {next}", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
        /// What to do instead.
        next: &'static str,
    },

    /// Decryption failed: wrong passphrase, or the sealed file was altered.
    #[error(
        "Cannot unlock {what}: the passphrase is wrong or the sealed file was altered (AES-256-GCM authentication failed). Nothing was changed. Run the command again and type the passphrase exactly (it is case-sensitive). If it is surely right, the file was altered: put back a copy of it you saved (koi keeps none), or start a new mesh with `koi certmesh leave` and then `koi certmesh create` (members join the new mesh)."
    )]
    WrongPassphrase {
        /// The sealed thing ("the CA vault at /path").
        what: String,
    },

    /// A sealed file is malformed or uses parameters this build refuses.
    #[error(
        "The sealed file {what} is unreadable: {reason}. It was damaged, or written by another version of koi-certmesh (`koi version` shows this one). Put back a copy of it you saved (koi keeps none), or start a new mesh with `koi certmesh leave` and then `koi certmesh create` (members join the new mesh)."
    )]
    SealedFormat {
        /// The sealed thing.
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// The passphrase given cannot be used.
    #[error("The passphrase was refused: {reason}. Choose a longer passphrase and try again.")]
    WeakPassphrase {
        /// Why.
        reason: &'static str,
    },

    /// A cryptographic primitive failed where it should not (RNG, key generation, signing).
    #[error(
        "The cryptographic operation '{operation}' failed: {reason}. This is not caused by your input; retry, and report a bug if it persists."
    )]
    Crypto {
        /// What we were doing.
        operation: &'static str,
        /// The library's message.
        reason: String,
    },

    /// The mesh scope given at creation is invalid.
    #[error(
        "The scope '{input}' is invalid: {reason}. Use `--domain lab.example` (a DNS suffix) and/or `--subnet 10.0.0.0/24` (a CIDR block)."
    )]
    InvalidScope {
        /// What the user gave.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// A requested certificate name is not a valid DNS name or IP address.
    #[error(
        "The certificate name '{name}' is invalid: {reason}. Ask for plain host names (letters, digits, hyphens) or IP addresses."
    )]
    InvalidName {
        /// The name asked for.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A requested certificate name is valid but outside what this CA may issue for.
    #[error(
        "Refusing to issue a certificate for '{name}': it is outside the mesh scope ({scope}). Ask only for names and addresses inside the scope; the scope is fixed when the CA is created."
    )]
    OutOfScope {
        /// The name or address asked for.
        name: String,
        /// Human description of the scope.
        scope: String,
    },

    /// A certificate signing request was rejected.
    #[error(
        "The certificate signing request was rejected: {reason}. Regenerate it on the member (its certmesh plugin does this during `koi certmesh join`)."
    )]
    InvalidCsr {
        /// Why.
        reason: String,
    },

    /// A certificate (ours, read back from disk) could not be parsed or is unusable.
    #[error(
        "The certificate {what} is unusable: {reason}. It was damaged: put back a copy of it you saved (koi keeps none), or start over with `koi certmesh leave` and then `koi certmesh create` or `koi certmesh join`."
    )]
    InvalidCertificate {
        /// Which certificate.
        what: String,
        /// Why.
        reason: String,
    },

    /// A request to issue a certificate is inconsistent (e.g. empty, or outlives the CA).
    #[error("Cannot issue the certificate: {reason}. {next}")]
    Issuance {
        /// Why.
        reason: String,
        /// What to do.
        next: &'static str,
    },

    /// rcgen refused to build a certificate.
    #[error(
        "Building the {what} certificate failed: {source}. Check the names requested; report a bug if they look right."
    )]
    Rcgen {
        /// Which certificate.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },

    /// TOTP setup failed (secret length, issuer or account name with ':' ...).
    #[error(
        "Setting up the enrollment code (TOTP) failed: {reason}. Use an issuer and account name without ':' and let the library generate the secret."
    )]
    Totp {
        /// Why.
        reason: String,
    },

    /// A JSON document (roster, audit line, sealed envelope) could not be read.
    #[error("The file {} is not valid: {reason}. {next}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
        /// What to do.
        next: &'static str,
    },

    /// The roster was written by a newer version.
    #[error("The roster {} has format version {found}, but this koi-certmesh understands only version {supported}. Upgrade koi-certmesh on this machine.", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },

    /// The audit log ends in a partly written line (a crash during an append).
    #[error("The audit log {} ends with a partly written line (line {line}, from a crash during an append). `koi certmesh unlock` removes the torn line and records the repair in the log itself; `koi certmesh log --verify` shows the log first.", path.display())]
    AuditTornTail {
        /// The log.
        path: PathBuf,
        /// 1-based line number of the torn line.
        line: usize,
    },

    /// The audit log is not intact; appending to it would hide the damage.
    #[error("The audit log {} failed verification at line {line}: {reason}. Appends are refused, because an entry written after the damage would hide it, so this CA cannot sign any more; existing certificates stay valid. `koi certmesh log --verify` shows the first bad line. koi keeps no copy of the log: put back one you saved, or start a new mesh with `koi certmesh leave` (it keeps this log as evidence) and then `koi certmesh create` (members join the new mesh).", path.display())]
    AuditTampered {
        /// The log.
        path: PathBuf,
        /// 1-based line number of the first bad line.
        line: usize,
        /// What is wrong there.
        reason: String,
    },

    /// A trust-profile rule was not met (e.g. organization without a scope).
    #[error("The {profile} trust profile requires {requirement}. {next}")]
    ProfileRequirement {
        /// The profile.
        profile: &'static str,
        /// What it requires (every unmet requirement).
        requirement: String,
        /// What to pass.
        next: String,
    },
}

impl Error {
    /// Shorthand for an [`Error::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for an [`Error::Crypto`].
    pub(crate) fn crypto(operation: &'static str, reason: impl ToString) -> Self {
        Error::Crypto {
            operation,
            reason: reason.to_string(),
        }
    }
}
