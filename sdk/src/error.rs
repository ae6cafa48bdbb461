//! `MethodError`: how a plugin method reports failure to the user.
//!
//! Every error carries a message naming the thing and the cause, and should carry a hint with the
//! next step; the host prints both.

use koi_protocol::{ErrorObject, codes};

/// A method's failure, sent to the host as a JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodError(pub(crate) ErrorObject);

impl MethodError {
    /// A domain failure (`code` 1): `message` names the thing and the cause.
    pub fn new(message: impl Into<String>) -> Self {
        Self(ErrorObject::new(codes::METHOD_FAILED, message))
    }

    /// A failure with a specific code.
    pub fn with_code(code: i64, message: impl Into<String>) -> Self {
        Self(ErrorObject::new(code, message))
    }

    /// Params that parsed but make no sense (`-32602`).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::with_code(codes::INVALID_PARAMS, message)
    }

    /// Adds the next step for the user.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.0 = self.0.with_hint(hint);
        self
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        self.0.code
    }

    /// The message (without the hint).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The error object sent on the wire.
    pub fn into_error_object(self) -> ErrorObject {
        self.0
    }
}

impl From<ErrorObject> for MethodError {
    fn from(value: ErrorObject) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for MethodError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for MethodError {}
