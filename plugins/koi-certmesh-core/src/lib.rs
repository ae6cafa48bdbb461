//! koi-certmesh-core: the cryptographic core of `koi-certmesh`, Koi's private certificate
//! authority for the LAN. It is a plain library — no plugin protocol, CLI or network — so the
//! plugin can be wired on top of it and every security property can be tested here.
//!
//! # Modules
//! - [`ca`] — root CA: P-256 key, self-signed root (random 16-byte serial, SKI/AKI, pathlen 0,
//!   name constraints from the scope); the key never leaves [`CertAuthority`].
//! - [`scope`] — `--domain`/`--subnet` scope: X.509 name constraints and issuance-time checks.
//! - [`names`] — canonical DNS names (lower case, no trailing dot, IDNA A-labels).
//! - [`issue`] — leaves from CSRs (signature verified, `CA:FALSE` forced, serverAuth+clientAuth,
//!   30 days) and for devices (library-generated key).
//! - [`keystore`] — Argon2id → AES-256-GCM sealing; the CA store (`ca.pem` + `vault.sealed`).
//! - [`totp`] — enrollment codes: ±1 step, constant-time, replay refusal, 3 failures → 5 min lock.
//! - [`audit`] — append-only, hash-chained, CA-signed JSON-lines log; verification; torn-tail repair.
//! - [`audit_log`] — the open log: verified open, signed appends, checkpoints.
//! - [`checkpoint`] — signed checkpoints, so an unlock verifies only the entries after one.
//! - [`audit_tail`] — the newest entries, read backwards from the end.
//! - [`roster`] — versioned mesh/member data model.
//! - [`profiles`] — personal / team / organization defaults.
//! - [`atomic`] — atomic durable writes, 0600 files, 0700 directories.
//! - [`error`] — the error type.
//!
//! # Example
//! ```
//! use koi_certmesh_core::*;
//! let now = time::OffsetDateTime::now_utc();
//! let scope = Scope::new(&["lab.example"], &["10.77.0.0/24"])?;
//! let ca = CertAuthority::create(&CaOptions::new("Koi certmesh CA (stone-01)", scope), now)?;
//! let mut req = LeafRequest::new("printer.lab.example");
//! req.ip_addresses.push("10.77.0.9".parse().unwrap());
//! let device = ca.issue_for_device(&req, now)?;
//! assert!(device.cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! # Ok::<(), koi_certmesh_core::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod atomic;
pub mod audit;
pub mod audit_log;
pub mod audit_tail;
pub mod ca;
pub mod checkpoint;
pub mod error;
pub mod issue;
pub mod keystore;
pub mod names;
pub mod profiles;
pub mod roster;
pub mod scope;
pub mod standby;
pub mod totp;

pub use audit::{AuditEntry, AuditHead, AuditLog, AuditVerdict, Tamper};
pub use ca::{CaOptions, CertAuthority, fingerprint_sha256, normalize_fingerprint};
pub use error::{Error, Result};
pub use issue::{DeviceBundle, IssuedCert, LeafRequest};
pub use keystore::{CaStore, KdfParams, Passphrase, SealedEnvelope, SealingKey, UnlockedCa};
pub use profiles::{ProfileDefaults, TrustProfile};
pub use roster::{DeviceIssue, EnrollmentState, Member, MemberStatus, Role, Roster};
pub use scope::Scope;
pub use totp::{RejectReason, TotpGuard, TotpOutcome, TotpSecret, TotpState};
