//! `koi certmesh open-enrollment [--minutes N]` and `close-enrollment`, on the CA: the window in
//! which joins are accepted. The state lives in the roster (`mesh.enrollment`) and each change is
//! audited. Without `--minutes` the profile's default window applies (personal: until closed,
//! team: 60 min, organization: 15 min).

use koi_certmesh_core::{EnrollmentState, Roster};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::app::{App, actor};
use crate::error;
use crate::signing::with_signing_session;

/// Audit event: enrollment opened.
pub const ENROLLMENT_OPENED: &str = "enrollment_opened";
/// Audit event: enrollment closed.
pub const ENROLLMENT_CLOSED: &str = "enrollment_closed";

/// Params of `open-enrollment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenParams {
    /// Close again after this many minutes (default: the profile's window).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10080))]
    pub minutes: Option<u32>,
    /// Operator name for the audit log.
    #[serde(default)]
    pub operator: Option<String>,
    /// Without a daemon: read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// Params of `close-enrollment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseParams {
    /// Operator name for the audit log.
    #[serde(default)]
    pub operator: Option<String>,
    /// Without a daemon: read the CA passphrase from this file instead of asking.
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// Result of both verbs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EnrollmentResult {
    /// Whether joins are accepted now.
    pub open: bool,
    /// When the window closes (RFC 3339), if it has an end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

async fn set(
    ctx: Context,
    operator: Option<String>,
    passphrase_file: Option<String>,
    open_minutes: Option<Option<u32>>,
) -> Result<EnrollmentResult, MethodError> {
    let authority = App::of(&ctx)?.authority();
    let roster_path = authority.layout().roster();
    let who = actor(operator.as_deref());
    with_signing_session(
        authority,
        &ctx,
        passphrase_file.as_deref(),
        who.clone(),
        "enrollment",
        move |session| {
            let mut roster = Roster::load(&roster_path).map_err(error::core)?;
            let now = OffsetDateTime::now_utc();
            let (state, event) = match open_minutes {
                None => (EnrollmentState::Closed, ENROLLMENT_CLOSED),
                Some(minutes) => {
                    let window = minutes.map(|m| u64::from(m) * 60).or(roster
                        .mesh
                        .profile
                        .defaults()
                        .default_window_seconds);
                    let state = match window {
                        None => EnrollmentState::Open,
                        Some(s) => EnrollmentState::OpenUntil {
                            until: now
                                + Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 2)),
                        },
                    };
                    (state, ENROLLMENT_OPENED)
                }
            };
            session.audit(event, &who, json!({"enrollment": state}))?;
            roster.mesh.enrollment = state.clone();
            session.save_roster_at(&roster_path, &mut roster)?;
            Ok(EnrollmentResult {
                open: state.is_open(now),
                until: match state {
                    EnrollmentState::OpenUntil { until } => Some(crate::names::rfc3339(until)),
                    _ => None,
                },
            })
        },
    )
    .await
}

/// The `open-enrollment` method.
pub async fn open(ctx: Context, p: OpenParams) -> Result<EnrollmentResult, MethodError> {
    set(ctx, p.operator, p.passphrase_file, Some(p.minutes)).await
}

/// The `close-enrollment` method.
pub async fn close(ctx: Context, p: CloseParams) -> Result<EnrollmentResult, MethodError> {
    set(ctx, p.operator, p.passphrase_file, None).await
}
