//! The JSON-RPC error object and the error codes Koi reserves.
//!
//! Codes from -32768 to -32000 are JSON-RPC's and Koi's; a plugin reporting a domain failure uses
//! [`codes::METHOD_FAILED`] (or any positive code of its own) and should put the next step for the
//! user in `data.hint`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Reserved error codes.
pub mod codes {
    /// The frame was not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The frame was JSON but not a valid JSON-RPC 2.0 message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params did not fit the method (the SDK's own deserialisation failed).
    pub const INVALID_PARAMS: i64 = -32602;
    /// An unexpected failure inside the plugin.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The request was cancelled (`$/cancel`), as in LSP.
    pub const REQUEST_CANCELLED: i64 = -32800;
    /// The two sides speak incompatible protocol versions.
    pub const PROTOCOL_MISMATCH: i64 = -32001;
    /// A params, result, item or event payload broke its declared JSON Schema (host-generated).
    pub const SCHEMA_VIOLATION: i64 = -32002;
    /// The plugin process is gone or broke the protocol (host-generated).
    pub const PLUGIN_UNAVAILABLE: i64 = -32003;
    /// The request timed out (host-generated).
    pub const TIMEOUT: i64 = -32004;
    /// A frame exceeded the negotiated maximum size.
    pub const FRAME_TOO_LARGE: i64 = -32005;
    /// The user could not or would not answer a prompt (no terminal, declined, end of input).
    pub const USER_INPUT_UNAVAILABLE: i64 = -32010;
    /// A domain failure reported by a plugin method; `data.hint` carries the next step.
    pub const METHOD_FAILED: i64 = 1;
}

/// A JSON-RPC 2.0 error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorObject {
    /// One of [`codes`], or a plugin-defined positive code.
    pub code: i64,
    /// One sentence naming the thing and the cause.
    pub message: String,
    /// Optional structured detail. Koi reads `data.hint` (the next step for the user) and
    /// `data.path` (the failing field of a schema violation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    /// An error with a code and message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds (or replaces) `data.hint`, the next step to show the user.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.set_data_field("hint", Value::String(hint.into()));
        self
    }

    /// Adds (or replaces) one field of `data`, turning `data` into an object if needed.
    pub fn set_data_field(&mut self, key: &str, value: Value) {
        match &mut self.data {
            Some(Value::Object(map)) => {
                map.insert(key.to_owned(), value);
            }
            other => {
                let mut map = serde_json::Map::new();
                map.insert(key.to_owned(), value);
                *other = Some(Value::Object(map));
            }
        }
    }

    /// The `data.hint` string, if any.
    pub fn hint(&self) -> Option<&str> {
        self.data.as_ref()?.get("hint")?.as_str()
    }
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = self.hint() {
            write!(f, " {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorObject {}
