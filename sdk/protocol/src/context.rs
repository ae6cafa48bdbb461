//! The per-call context: who asked for this call, as the host saw it. The host attaches it to
//! every request it forwards to a plugin that answered the `call_context` feature in the
//! handshake, as the top-level request member `context` (beside `id`, `method` and `params`):
//!
//! ```json
//! {"jsonrpc":"2.0","id":7,"method":"withdraw","params":{...},
//!  "context":{"caller":{"kind":"plugin","plugin":"certmesh"}}}
//! ```
//!
//! Only the host writes it. It is built from what the host knows (the control socket's
//! SO_PEERCRED, the REST listener, the connection a `host/call` came in on); nothing a caller
//! sends is copied into it, so a plugin cannot claim to be another plugin and a REST client
//! cannot claim to be the CLI. Plugins that did not answer the feature never see the member.
//!
//! Beside `caller` it says whether this call can ask a person (`interactive`): true only for a
//! call forwarded from a `koi` command line whose terminal can answer. That is a property of the
//! call, not of the plugin process: under `koi daemon` one plugin serves a CLI at a terminal, a
//! script and a REST client at once. The structure is open for further additions; readers ignore
//! members they do not know. This module also names the events the host itself
//! publishes (topics under `host.`, which plugins may not publish).

use crate::message::{Id, Message, MessageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The top-level request member that carries the [`CallContext`].
pub const MEMBER: &str = "context";

/// Who made a call, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Caller {
    /// The `koi` command line: a one-shot run, or a command forwarded to `koi daemon` over its
    /// control socket.
    Cli {
        /// The user id of the CLI process: the control socket's SO_PEERCRED under the daemon,
        /// the host's own uid in a one-shot run; absent if the system could not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    },
    /// A program using the daemon's REST API, which has no authentication.
    Rest,
    /// Another plugin, through `host/call`.
    Plugin {
        /// The calling plugin's moniker.
        plugin: String,
    },
    /// The host itself (health pings, the `koi status` dashboard).
    Host,
    /// A caller kind this version does not know (sent by a newer host).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Cli { uid: Some(uid) } => write!(f, "the koi CLI (uid {uid})"),
            Caller::Cli { uid: None } => write!(f, "the koi CLI"),
            Caller::Rest => write!(f, "a REST API client"),
            Caller::Plugin { plugin } => write!(f, "plugin koi-{plugin}"),
            Caller::Host => write!(f, "koi itself"),
            Caller::Unknown => write!(f, "an unidentified caller"),
        }
    }
}

/// What the host tells a plugin about one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CallContext {
    /// Who asked for the call.
    pub caller: Caller,
    /// Whether a person can answer questions (`host/prompt`, `host/secret`, `host/confirm`,
    /// `host/choose`, `host/keystrokes`) for this call: true only for a call from a `koi` command
    /// line whose terminal can answer them. Always false for REST, plugin and host calls. Absent
    /// when sent by a host that predates the member: then the handshake's `interactive` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
}

impl CallContext {
    /// A call made by `caller`, which cannot ask a person anything.
    pub fn new(caller: Caller) -> Self {
        Self {
            caller,
            interactive: Some(false),
        }
    }

    /// A call from the CLI run by `uid`; `interactive` when its terminal can answer questions.
    pub fn cli(uid: Option<u32>, interactive: bool) -> Self {
        Self {
            caller: Caller::Cli { uid },
            interactive: Some(interactive),
        }
    }

    /// A call from plugin `moniker` through `host/call`.
    pub fn plugin(moniker: &str) -> Self {
        Self::new(Caller::Plugin {
            plugin: moniker.to_owned(),
        })
    }

    /// A call from the REST API.
    pub fn rest() -> Self {
        Self::new(Caller::Rest)
    }

    /// A call the host makes on its own behalf.
    pub fn host() -> Self {
        Self::new(Caller::Host)
    }
}

/// Encodes a request frame with `context` attached (when given).
pub fn request_bytes(
    id: Id,
    method: &str,
    params: Value,
    context: Option<&CallContext>,
) -> Vec<u8> {
    let mut value = Message::Request {
        id,
        method: method.to_owned(),
        params,
    }
    .to_value();
    if let (Some(context), Value::Object(map)) = (context, &mut value) {
        if let Ok(context) = serde_json::to_value(context) {
            map.insert(MEMBER.to_owned(), context);
        }
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Decodes one frame and, for a request, the context the host attached. A context that cannot be
/// read is dropped (the request itself is still served, as from an unidentified caller).
pub fn parse_frame(frame: &[u8]) -> Result<(Message, Option<CallContext>), MessageError> {
    let mut value: Value =
        serde_json::from_slice(frame).map_err(|e| MessageError::NotJson(e.to_string()))?;
    let context = value
        .as_object_mut()
        .and_then(|map| map.remove(MEMBER))
        .and_then(|c| serde_json::from_value::<CallContext>(c).ok());
    let message = Message::from_value(value)?;
    let context = match message {
        Message::Request { .. } => context,
        _ => None,
    };
    Ok((message, context))
}

/// Events the host publishes itself (source `host`). Plugins may subscribe to them; no plugin may
/// publish a topic under [`host_events::PREFIX`].
pub mod host_events {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// Topics under this prefix belong to the host.
    pub const PREFIX: &str = "host.";
    /// The `source` of every host event.
    pub const SOURCE: &str = "host";
    /// `koi daemon` started a plugin for the first time. Payload [`PluginStarted`].
    pub const PLUGIN_STARTED: &str = "host.plugin.started";
    /// `koi daemon` started a plugin again after it crashed, hung or was killed; whatever the
    /// plugin held in memory (announcements, sessions) is gone. Payload [`PluginStarted`].
    pub const PLUGIN_RESTARTED: &str = "host.plugin.restarted";

    /// Payload of [`PLUGIN_STARTED`] and [`PLUGIN_RESTARTED`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct PluginStarted {
        /// The plugin's moniker.
        pub plugin: String,
        /// Its process id.
        pub pid: u32,
        /// How many times the daemon has restarted it so far.
        pub restarts: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_context_travels_beside_params_and_is_read_back() {
        let ctx = CallContext::plugin("certmesh");
        let bytes = request_bytes(Id::Number(4), "withdraw", json!({"a": 1}), Some(&ctx));
        let value: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            value["context"],
            json!({"caller": {"kind": "plugin", "plugin": "certmesh"}, "interactive": false})
        );
        assert_eq!(value["params"], json!({"a": 1}));
        let (message, read) = parse_frame(&bytes).expect("parse");
        assert_eq!(read, Some(ctx));
        assert!(matches!(message, Message::Request { .. }));
        // Without a context the frame is the plain JSON-RPC request.
        let plain = request_bytes(Id::Number(4), "withdraw", json!({}), None);
        assert!(!String::from_utf8_lossy(&plain).contains("context"));
        assert_eq!(parse_frame(&plain).expect("parse").1, None);
    }

    #[test]
    fn interactive_is_per_call_and_absent_from_older_hosts() {
        let at_terminal = CallContext::cli(Some(1000), true);
        let bytes = request_bytes(Id::Number(1), "unlock", json!({}), Some(&at_terminal));
        let value: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["context"]["interactive"], json!(true));
        assert_eq!(parse_frame(&bytes).expect("parse").1, Some(at_terminal));
        for ctx in [
            CallContext::cli(None, false),
            CallContext::rest(),
            CallContext::plugin("mdns"),
            CallContext::host(),
        ] {
            assert_eq!(ctx.interactive, Some(false), "{ctx:?}");
        }
        // A 1.1 host that predates the member sends none: the reader falls back to the handshake.
        let frame = br#"{"jsonrpc":"2.0","id":1,"method":"m","context":{"caller":{"kind":"cli"}}}"#;
        assert_eq!(
            parse_frame(frame)
                .expect("parse")
                .1
                .and_then(|c| c.interactive),
            None
        );
    }

    #[test]
    fn unknown_caller_kinds_and_extra_members_are_tolerated() {
        let frame = br#"{"jsonrpc":"2.0","id":1,"method":"m","context":{"caller":{"kind":"martian"},"mood":"sunny"}}"#;
        let (_, ctx) = parse_frame(frame).expect("parse");
        assert_eq!(ctx.map(|c| c.caller), Some(Caller::Unknown));
        let cli: Caller = serde_json::from_value(json!({"kind": "cli", "uid": 1000})).expect("cli");
        assert_eq!(cli, Caller::Cli { uid: Some(1000) });
        assert_eq!(cli.to_string(), "the koi CLI (uid 1000)");
    }

    #[test]
    fn a_context_on_a_response_or_notification_is_ignored() {
        let frame = br#"{"jsonrpc":"2.0","method":"event","context":{"caller":{"kind":"host"}}}"#;
        assert_eq!(parse_frame(frame).expect("parse").1, None);
    }
}
