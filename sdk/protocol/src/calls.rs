//! Method names and payloads beyond the plugin's own methods: the calls every plugin answers
//! (`initialize`, `status`, `shutdown`), the calls a plugin makes to the host (`host/*`), and the
//! notifications in both directions (`$/cancel`, `$/progress`, `$/item`, `event`, `host/show`).
//!
//! Every plugin→host payload carries `request`, the id of the host request it belongs to, so a
//! daemon can route a prompt to the terminal that issued the command.

use crate::message::Id;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Host → plugin request: the handshake. Params [`crate::InitializeParams`].
pub const INITIALIZE: &str = "initialize";
/// Host → plugin request: a one-screen health summary for `koi status`. Result [`StatusReport`].
pub const STATUS: &str = "status";
/// Host → plugin request: finish in-flight work, answer `null`, then exit.
pub const SHUTDOWN: &str = "shutdown";
/// Host → plugin notification: cancel a request. Params [`CancelParams`].
pub const CANCEL: &str = "$/cancel";
/// Host → plugin notification: an event the plugin subscribed to. Params [`EventDelivery`].
pub const EVENT: &str = "event";

/// Plugin → host notification: progress of a request. Params [`ProgressParams`].
pub const PROGRESS: &str = "$/progress";
/// Plugin → host notification: one streamed result item. Params [`ItemParams`].
pub const ITEM: &str = "$/item";
/// Plugin → host notification: show something to the user. Params [`ShowParams`].
pub const SHOW: &str = "host/show";
/// Plugin → host notification: replace the request's live view, a screen the host redraws in
/// place (and again when the terminal is resized) while the request runs. Params [`ViewParams`].
/// Drawn only for a person at a terminal without `--json`; then the request's streamed items
/// are not printed (the view shows them). Hosts that do not draw views ignore it.
pub const VIEW: &str = "$/view";
/// Plugin → host request: ask a question. Params [`PromptParams`], result [`PromptResult`].
pub const PROMPT: &str = "host/prompt";
/// Plugin → host request: ask for a secret without echo. [`SecretParams`] → [`SecretResult`].
pub const SECRET: &str = "host/secret";
/// Plugin → host request: yes or no. [`ConfirmParams`] → [`ConfirmResult`].
pub const CONFIRM: &str = "host/confirm";
/// Plugin → host request: pick one of several. [`ChooseParams`] → [`ChooseResult`].
pub const CHOOSE: &str = "host/choose";
/// Plugin → host request: collect raw keystrokes and their timings (e.g. as extra entropy), without
/// echo. [`KeystrokesParams`] → [`KeystrokesResult`].
pub const KEYSTROKES: &str = "host/keystrokes";
/// Plugin → host request: call another plugin's method. [`CallParams`] → that method's result.
pub const CALL: &str = "host/call";
/// Plugin → host request: publish an event. [`PublishParams`] → [`PublishResult`].
pub const PUBLISH: &str = "host/publish";

/// Overall state reported by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Working as configured.
    Ok,
    /// Working, with something the user should look at.
    Degraded,
    /// Not working.
    Failed,
    /// Installed but not set up or not running (nothing to do yet).
    Inactive,
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusReport {
    /// Overall state.
    pub state: HealthState,
    /// One line for the dashboard.
    pub summary: String,
    /// Plugin-specific detail, shown with `koi status --verbose` and in `--json`.
    #[serde(default)]
    pub details: serde_json::Map<String, Value>,
}

/// Params of `$/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelParams {
    /// The id of the request to cancel.
    pub request: Id,
}

/// Params of `event` (host → subscriber).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventDelivery {
    /// The topic.
    pub topic: String,
    /// The moniker of the publishing plugin.
    pub source: String,
    /// The payload, already checked against the publisher's schema (`null` in a gap marker).
    pub payload: Value,
    /// How many events of `topic` the host dropped for this subscriber, because its queue was
    /// full, since its previous delivery of `topic` (feature `event_gaps`). The subscriber's view
    /// of that topic may be stale: it should resync (docs/plugins.md, "Ordered events").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
    /// This delivery carries no event, only the report that `missed` events of `topic` were
    /// dropped (sent when the queue drains with drops not yet reported).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

impl EventDelivery {
    /// An event with nothing missed before it.
    pub fn new(topic: impl Into<String>, source: impl Into<String>, payload: Value) -> Self {
        Self {
            topic: topic.into(),
            source: source.into(),
            payload,
            missed: 0,
            gap: false,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Params of `$/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressParams {
    /// The request this progress belongs to.
    pub request: Id,
    /// What is happening now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Units done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// Units in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// Params of `$/item`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemParams {
    /// The streaming request.
    pub request: Id,
    /// One item, checked against the method's `stream_item` schema.
    pub item: Value,
}

/// What `host/show` displays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShowContent {
    /// Plain text.
    Text {
        /// The text, printed as is.
        text: String,
    },
    /// A table.
    Table {
        /// Column titles.
        columns: Vec<String>,
        /// Rows of cells.
        rows: Vec<Vec<String>>,
    },
    /// A QR code rendered in the terminal.
    Qr {
        /// The data to encode.
        data: String,
        /// A line printed under the code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
}

/// Params of `host/show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShowParams {
    /// The request this output belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// What to show.
    pub content: ShowContent,
}

/// Params of `$/view`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ViewParams {
    /// The request the view belongs to.
    pub request: Id,
    /// The whole screen (text or a table; a QR code is not drawn in a view).
    pub content: ShowContent,
}

/// Params of `host/prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromptParams {
    /// The request this question belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// The question.
    pub message: String,
    /// The answer used when the user just presses Enter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Result of `host/prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromptResult {
    /// What the user typed.
    pub value: String,
}

/// Params of `host/secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretParams {
    /// The request this question belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// The question.
    pub message: String,
    /// Ask twice and require both answers to match.
    #[serde(default)]
    pub confirm: bool,
}

/// Result of `host/secret`. The host never logs or traces `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretResult {
    /// The secret the user typed.
    #[schemars(extend("x-koi-secret" = true))]
    pub value: String,
}

/// Params of `host/confirm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmParams {
    /// The request this question belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// The yes/no question.
    pub message: String,
    /// The answer when the user just presses Enter.
    #[serde(default)]
    pub default: bool,
}

/// Result of `host/confirm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmResult {
    /// The answer.
    pub confirmed: bool,
}

/// Params of `host/choose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChooseParams {
    /// The request this question belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// The question.
    pub message: String,
    /// The choices, at least one.
    pub options: Vec<String>,
    /// Index of the choice used when the user just presses Enter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<usize>,
}

/// Result of `host/choose`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChooseResult {
    /// Index into `options`.
    pub index: usize,
    /// The chosen option.
    pub value: String,
}

/// The most keystrokes one `host/keystrokes` request may ask for.
pub const MAX_KEYSTROKES: u32 = 4096;

/// Params of `host/keystrokes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeystrokesParams {
    /// The request this question belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// What to tell the user (e.g. "Type randomly until the bar is full").
    pub message: String,
    /// How many keystrokes to collect, from 1 to [`MAX_KEYSTROKES`].
    #[schemars(range(min = 1, max = 4096))]
    pub count: u32,
}

/// One keystroke collected by `host/keystrokes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Keystroke {
    /// The byte the terminal delivered (a key may send several bytes, e.g. arrows).
    pub byte: u8,
    /// Monotonic nanoseconds from the moment the prompt appeared to the arrival of this byte.
    pub nanos: u64,
}

impl zeroize::Zeroize for Keystroke {
    fn zeroize(&mut self) {
        self.byte.zeroize();
        self.nanos.zeroize();
    }
}

/// Result of `host/keystrokes`. Secret: the host never logs or traces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeystrokesResult {
    /// Exactly `count` keystrokes, in the order typed.
    #[schemars(extend("x-koi-secret" = true))]
    pub keystrokes: Vec<Keystroke>,
}

/// Params of `host/call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallParams {
    /// The request this call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Id>,
    /// The target plugin's moniker.
    pub plugin: String,
    /// The target method.
    pub method: String,
    /// Its params, checked against the target's schema.
    #[serde(default)]
    pub params: Value,
}

/// Params of `host/publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PublishParams {
    /// A topic the plugin declared in its manifest's `publishes`.
    pub topic: String,
    /// The payload, checked against the declared schema.
    pub payload: Value,
}

/// Result of `host/publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PublishResult {
    /// How many subscribers the event was queued for.
    pub delivered: usize,
}
