//! The Koi plugin protocol, as plain data: JSON-RPC 2.0 messages, the `initialize` handshake, the
//! plugin manifest, the host-call and notification payloads, error codes and secret redaction.
//!
//! This crate performs no I/O (apart from the optional `tokio` feature's bounded frame reader), so the
//! host, the SDK and tests all agree on one definition of the wire format. The normative description
//! for authors in other languages is `docs/protocol.md`; the JSON Schemas in `schemas/protocol/` are
//! generated from these types.
//!
//! Modules:
//! - [`message`]: JSON-RPC 2.0 envelopes (request, notification, response) and their parsing.
//! - [`handshake`]: protocol versions, features, the `initialize` exchange, the launch cookie.
//! - [`manifest`]: what a plugin declares: methods, CLI shape, events, deprecated root aliases.
//! - [`calls`]: method names and payloads for plugin→host calls and notifications both ways.
//! - [`context`]: the per-call context the host attaches (who called), and the host's own events.
//! - [`error`]: the error object and the reserved error codes.
//! - [`redact`]: which fields are secret and how traces hide them.
//! - [`schema_read`]: reading params schemas (local `$ref`s, accepted types) for CLI and REST.
//! - [`frame`] (feature `tokio`): newline-delimited frames with a hard size limit.

pub mod calls;
pub mod context;
pub mod error;
#[cfg(feature = "tokio")]
pub mod frame;
pub mod handshake;
pub mod manifest;
pub mod message;
pub mod redact;
pub mod schema_read;
pub mod terminal;

pub use context::{CallContext, Caller};
pub use error::{ErrorObject, codes};
pub use handshake::{
    COOKIE_ENV, COOKIE_VALUE, DEFAULT_MAX_FRAME_BYTES, InitializeParams, InitializeResult,
    PROTOCOL_VERSION, ProtocolVersion,
};
pub use manifest::{
    CliSpec, EventSpec, LegacyRoute, MAX_SHUTDOWN_GRACE_MS, Manifest, MethodSpec, RootAlias,
};
pub use message::{Id, Message, MessageError};
