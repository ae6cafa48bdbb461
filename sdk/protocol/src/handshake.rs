//! The `initialize` handshake: protocol versions, features and the launch cookie.
//!
//! The protocol version is independent of the host's and the plugins' release versions. Two sides
//! are compatible when their major versions are equal; the minor version only adds optional fields
//! and features, which are negotiated by name.

use crate::manifest::Manifest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variable the host sets when it launches a plugin. A plugin started without it (by
/// hand, from a shell) explains itself on stderr and exits with status 2 instead of waiting on stdin.
pub const COOKIE_ENV: &str = "KOI_PLUGIN_COOKIE";
/// The value of [`COOKIE_ENV`].
pub const COOKIE_VALUE: &str = "koi-stdio-jsonrpc";
/// The default hard limit on one frame, in bytes, in both directions (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;
/// The version of the protocol this crate describes.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

/// A protocol version. Compatible iff the majors are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProtocolVersion {
    /// Incremented on incompatible changes.
    pub major: u32,
    /// Incremented on compatible additions.
    pub minor: u32,
}

impl ProtocolVersion {
    /// Whether a peer speaking `other` can talk to us.
    pub fn is_compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Optional protocol features, negotiated by name: the host offers its list in `initialize`, the
/// plugin answers with the subset it uses. Unknown names are ignored by both sides.
pub mod features {
    /// `$/cancel` notifications from the host.
    pub const CANCEL: &str = "cancel";
    /// `$/progress` notifications from the plugin.
    pub const PROGRESS: &str = "progress";
    /// `host/prompt`, `host/secret`, `host/confirm`, `host/choose`, `host/show`.
    pub const USER_INTERACTION: &str = "user_interaction";
    /// `host/call`: calling another plugin's method through the host.
    pub const PLUGIN_CALLS: &str = "plugin_calls";
    /// `host/publish` and `event` delivery.
    pub const EVENTS: &str = "events";
    /// `host/keystrokes`: raw keystrokes and their timings from the user's terminal.
    pub const KEYSTROKES: &str = "keystrokes";
    /// `$/item` notifications for methods that stream results.
    pub const STREAMS: &str = "streams";
    /// The per-call context (who called) as the request member `context` (protocol 1.1). Unlike
    /// the others, this one is enforced: the host sends `context` only to plugins that answer it.
    pub const CALL_CONTEXT: &str = "call_context";
    /// Ordered events with gap reports: the host delivers one publisher's events in the order it
    /// sent them, and tells the subscriber when its queue overflowed ([`crate::calls::EventDelivery`]'s
    /// `missed` and `gap`). Enforced: only plugins that answer it get `missed` or gap markers.
    pub const EVENT_GAPS: &str = "event_gaps";

    /// Every feature this version of the protocol defines.
    pub const ALL: &[&str] = &[
        CANCEL,
        PROGRESS,
        USER_INTERACTION,
        PLUGIN_CALLS,
        EVENTS,
        STREAMS,
        KEYSTROKES,
        CALL_CONTEXT,
        EVENT_GAPS,
    ];
}

/// How the host runs the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Started for one command and shut down after it.
    OneShot,
    /// Kept running by `koi daemon`.
    Daemon,
}

/// Who the host is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HostInfo {
    /// Always `koi` for the reference host.
    pub name: String,
    /// The host's release version.
    pub version: String,
}

/// Params of the `initialize` request, the first frame the host sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InitializeParams {
    /// The protocol version the host speaks.
    pub protocol: ProtocolVersion,
    /// The host's name and version.
    pub host: HostInfo,
    /// One-shot or daemon.
    pub mode: RunMode,
    /// The optional features the host supports (see [`features`]).
    pub features: Vec<String>,
    /// The hard frame limit, in bytes, that applies to both directions.
    pub max_frame_bytes: u64,
    /// The Koi state directory the plugin should keep its files under (`$KOI_HOME`).
    pub koi_home: String,
    /// Whether a person is at a terminal to answer prompts, for the whole process: the host's
    /// own terminal in a one-shot run, always false under `koi daemon`. The per-call context's
    /// `interactive` overrides it for each call that carries one.
    pub interactive: bool,
}

/// Result of `initialize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InitializeResult {
    /// The protocol version the plugin speaks.
    pub protocol: ProtocolVersion,
    /// The features the plugin uses, a subset of the host's offer.
    pub features: Vec<String>,
    /// What the plugin provides.
    pub manifest: Manifest,
}
