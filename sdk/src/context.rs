//! `Context`: what a running method can ask of the host — questions for the user, progress, output,
//! streamed items, calls to other plugins, events — and whether it has been cancelled.

use crate::MethodError;
use crate::runtime::{Lane, Shared};
use koi_protocol::calls::{self, *};
use koi_protocol::handshake::RunMode;
use koi_protocol::{CallContext, Caller, Id, codes};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Handed to every method, status and event handler.
#[derive(Clone)]
pub struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) request: Option<Id>,
    pub(crate) cancel: CancellationToken,
    /// What the host said about this call (who called), when it said anything.
    pub(crate) call: Option<Arc<CallContext>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// One-shot (started for one command) or daemon (kept running).
    pub fn mode(&self) -> RunMode {
        self.shared.session().mode
    }

    /// `$KOI_HOME`, where the plugin keeps its state.
    pub fn koi_home(&self) -> &Path {
        &self.shared.session().koi_home
    }

    /// Whether a person can answer questions (`prompt`, `secret`, `confirm`, `choose`,
    /// `keystrokes`) for this call. It is a property of each call: true for a call from a `koi`
    /// command line whose terminal can answer — one-shot or forwarded by `koi daemon` — and false
    /// for REST, plugin-to-plugin and host calls. Without a per-call value (a host that sends
    /// none, background tasks, event handlers) it is the handshake's process-wide flag, which is
    /// false under the daemon. When it is false, don't ask: fail with
    /// [`Self::no_terminal`] naming the flag that supplies the answer.
    pub fn interactive(&self) -> bool {
        self.call
            .as_deref()
            .and_then(|c| c.interactive)
            .unwrap_or(self.shared.session().interactive)
    }

    /// The documented refusal for a question this call cannot ask (see [`Self::interactive`]):
    /// code `-32010`, a message saying what was needed and why nobody can be asked (naming the
    /// caller), and `next` — the flag or command that supplies the answer instead.
    pub fn no_terminal(&self, needed: &str, next: impl Into<String>) -> MethodError {
        let why = match self.caller() {
            Some(Caller::Cli { .. }) | None => {
                "no terminal is attached to this call (standard input or standard error is not a terminal)".to_owned()
            }
            Some(caller) => format!("this call came from {caller}, which has no terminal to ask at"),
        };
        MethodError::with_code(
            codes::USER_INPUT_UNAVAILABLE,
            format!("{needed}, but {why}"),
        )
        .hint(next)
    }

    /// The id of the host request this context serves (none for event handlers).
    pub fn request_id(&self) -> Option<&Id> {
        self.request.as_ref()
    }

    /// The per-call context the host attached to this request (protocol 1.1, feature
    /// `call_context`). `None` for background tasks and event handlers, and under a host that
    /// does not send one.
    pub fn call_context(&self) -> Option<&CallContext> {
        self.call.as_deref()
    }

    /// Who made this call, as the host saw it: the CLI (with its uid), a REST client, another
    /// plugin (by moniker) or the host itself. Only the host states it; a caller cannot forge it.
    /// `None` when the host sent no context (see [`Self::call_context`]).
    pub fn caller(&self) -> Option<&Caller> {
        self.call.as_deref().map(|c| &c.caller)
    }

    /// Resolves when the host cancels this request (Ctrl-C) or the plugin is shutting down.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Asks the user a question; returns the answer (or `default` on an empty answer).
    pub async fn prompt(
        &self,
        message: &str,
        default: Option<&str>,
    ) -> Result<String, MethodError> {
        let params = PromptParams {
            request: self.request.clone(),
            message: message.to_owned(),
            default: default.map(str::to_owned),
        };
        let r: PromptResult = self.host_request(calls::PROMPT, &params).await?;
        Ok(r.value)
    }

    /// Asks for a secret without echo; `confirm` asks twice. The answer is zeroized on drop.
    pub async fn secret(
        &self,
        message: &str,
        confirm: bool,
    ) -> Result<Zeroizing<String>, MethodError> {
        let params = SecretParams {
            request: self.request.clone(),
            message: message.to_owned(),
            confirm,
        };
        let r: SecretResult = self.host_request(calls::SECRET, &params).await?;
        Ok(Zeroizing::new(r.value))
    }

    /// Asks a yes/no question.
    pub async fn confirm(&self, message: &str, default: bool) -> Result<bool, MethodError> {
        let params = ConfirmParams {
            request: self.request.clone(),
            message: message.to_owned(),
            default,
        };
        let r: ConfirmResult = self.host_request(calls::CONFIRM, &params).await?;
        Ok(r.confirmed)
    }

    /// Asks the user to pick one option; returns its index and text.
    pub async fn choose(
        &self,
        message: &str,
        options: &[&str],
        default: Option<usize>,
    ) -> Result<(usize, String), MethodError> {
        let params = ChooseParams {
            request: self.request.clone(),
            message: message.to_owned(),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
            default,
        };
        let r: ChooseResult = self.host_request(calls::CHOOSE, &params).await?;
        Ok((r.index, r.value))
    }

    /// Collects `count` raw keystrokes (1 to [`MAX_KEYSTROKES`]) from the user's terminal, without
    /// echo, while the host shows `message` and a progress bar; each comes with its arrival time
    /// in nanoseconds since the prompt appeared. Meant as extra entropy: the bytes and timings are
    /// secret, traced as `[redacted]` and zeroized on drop here (the JSON they arrived in is not).
    ///
    /// Fails with `-32010` when no terminal is attached (piped stdin, REST, a daemon call without a
    /// CLI client): offer a flag that avoids the question. Ctrl-C during collection fails with
    /// `-32800` and the host treats it as the user's Ctrl-C.
    pub async fn keystrokes(
        &self,
        message: &str,
        count: u32,
    ) -> Result<Zeroizing<Vec<Keystroke>>, MethodError> {
        if !(1..=MAX_KEYSTROKES).contains(&count) {
            return Err(MethodError::invalid_params(format!(
                "cannot ask for {count} keystrokes: the count must be 1 to {MAX_KEYSTROKES}"
            )));
        }
        let params = KeystrokesParams {
            request: self.request.clone(),
            message: message.to_owned(),
            count,
        };
        let r: KeystrokesResult = self.host_request(calls::KEYSTROKES, &params).await?;
        Ok(Zeroizing::new(r.keystrokes))
    }

    /// Reports progress; `total` makes it a bar, otherwise a spinner with the message. Progress
    /// never waits: while the host reads slowly and the outbound budget is spent, updates are
    /// dropped (the next one shows the current state anyway).
    pub fn progress(&self, message: &str, current: Option<u64>, total: Option<u64>) {
        if let Some(request) = &self.request {
            let params = ProgressParams {
                request: request.clone(),
                message: Some(message.to_owned()),
                current,
                total,
            };
            self.shared.notify_or_drop(calls::PROGRESS, &params);
        }
    }

    /// Shows text to the user (on stderr when the host prints `--json` results on stdout).
    pub fn show_text(&self, text: &str) {
        self.show(ShowContent::Text {
            text: text.to_owned(),
        });
    }

    /// Shows a table.
    pub fn show_table(&self, columns: &[&str], rows: Vec<Vec<String>>) {
        let columns = columns.iter().map(|s| (*s).to_owned()).collect();
        self.show(ShowContent::Table { columns, rows });
    }

    /// Shows `data` as a QR code in the terminal, with an optional caption.
    pub fn show_qr(&self, data: &str, caption: Option<&str>) {
        self.show(ShowContent::Qr {
            data: data.to_owned(),
            caption: caption.map(str::to_owned),
        });
    }

    /// Replaces this request's live view with `text`: the host redraws it in place at a terminal
    /// (and on resize) and stops printing the streamed items, which still go out as NDJSON under
    /// `--json` (docs/protocol.md, `$/view`). Send the whole screen each time.
    pub fn view_text(&self, text: &str) {
        if let Some(request) = &self.request {
            let params = koi_protocol::calls::ViewParams {
                request: request.clone(),
                content: ShowContent::Text {
                    text: text.to_owned(),
                },
            };
            self.shared.notify_or_drop(calls::VIEW, &params);
        }
    }

    fn show(&self, content: ShowContent) {
        let params = ShowParams {
            request: self.request.clone(),
            content,
        };
        self.shared.notify(calls::SHOW, &params);
    }

    /// Streams one result item (for methods declared with [`crate::Method::streams`]). It waits
    /// while the plugin's outbound budget is spent (the host reads slowly), so a fast stream cannot
    /// grow memory without bound, and it yields to the runtime, so a handler streaming many items
    /// never starves the writer or the plugin's answers to other requests (such as pings).
    pub async fn emit<T: Serialize>(&self, item: &T) {
        if let (Some(request), Ok(item)) = (&self.request, serde_json::to_value(item)) {
            self.shared
                .notify_budgeted(
                    calls::ITEM,
                    &ItemParams {
                        request: request.clone(),
                        item,
                    },
                )
                .await;
        }
        tokio::task::yield_now().await;
    }

    /// Runs `work` on tokio's blocking thread pool and awaits it. Use it for anything that can take
    /// more than a millisecond or two — key derivation, signing many things, reading or verifying a
    /// large file — so the plugin keeps answering the host's pings and `status` calls while it runs
    /// (docs/protocol.md, "Never block the protocol loop"). A panic in `work` becomes an internal
    /// method error naming `what`. Cancelling the call does not stop `work` (a thread cannot be
    /// interrupted); check a flag inside long loops if that matters.
    pub async fn blocking<T, F>(&self, what: &str, work: F) -> Result<T, MethodError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, MethodError> + Send + 'static,
    {
        run_blocking(what, work).await
    }

    /// Runs `task` as a task the plugin's shutdown waits for: like a handler, it gets the shutdown
    /// grace (`Plugin::shutdown_grace`) to finish after the plugin's contexts are cancelled, and is
    /// dropped after it. Watch a context's [`Self::cancelled`] inside `task` to finish in time.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        static NAME: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let name = NAME.get_or_init(|| Arc::from("ctx.spawn task"));
        self.shared.spawn_tracked(name, task)
    }

    /// The value of type `T` registered with [`crate::Plugin::state`], built once when the host
    /// opened the session. Fails with an internal error naming `T` if the plugin never registered
    /// one.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, MethodError> {
        crate::state::get::<T>(self.shared.states.get(), &self.shared.moniker)
    }

    /// The plugin's own directory, `$KOI_HOME/<moniker>/`: created with mode 0700 when missing
    /// (an existing one with group or other permissions is tightened to 0700, with a warning in the
    /// log); a symbolic link there is refused with an error naming the path.
    pub fn data_dir(&self) -> Result<PathBuf, MethodError> {
        crate::state::data_dir(self.koi_home(), &self.shared.moniker)
    }

    /// Calls `method` of plugin `plugin` through the host, which checks both payloads.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        plugin: &str,
        method: &str,
        params: &P,
    ) -> Result<R, MethodError> {
        let params = serde_json::to_value(params).map_err(|e| {
            MethodError::new(format!(
                "params for {plugin}.{method} not serialisable: {e}"
            ))
        })?;
        let call = CallParams {
            request: self.request.clone(),
            plugin: plugin.to_owned(),
            method: method.to_owned(),
            params,
        };
        self.host_request(calls::CALL, &call).await
    }

    /// Publishes an event declared in the manifest; returns how many subscribers got it.
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<usize, MethodError> {
        let payload = serde_json::to_value(payload)
            .map_err(|e| MethodError::new(format!("payload for {topic} not serialisable: {e}")))?;
        let params = PublishParams {
            topic: topic.to_owned(),
            payload,
        };
        let r: PublishResult = self
            .host_request_on(calls::PUBLISH, &params, Lane::Budgeted)
            .await?;
        Ok(r.delivered)
    }

    /// Publishes an event declared in the manifest without waiting for the host's answer: the
    /// pipelined form of [`Self::publish`], for a stream of events. It returns once the event is
    /// queued for the host, waiting only while the outbound budget is spent (the host reads
    /// slowly; docs/plugins.md, "Backpressure"). Events keep their order — among themselves and
    /// with [`Self::publish`] and everything else the plugin sends — because the plugin has one
    /// ordered outbound queue and the host handles a plugin's publishes in the order it reads
    /// them.
    ///
    /// It fails at once only when the event cannot be sent: the payload is not serialisable, the
    /// frame is over the host's limit, or the host is gone. The host still checks the event
    /// against its declared schema; a refusal (undeclared topic, schema violation) arrives later
    /// and is logged at warn, with a running count, instead of being returned. Use
    /// [`Self::publish`] where each event's outcome or subscriber count matters.
    pub async fn post<T: Serialize>(&self, topic: &str, payload: &T) -> Result<(), MethodError> {
        self.shared
            .post(topic, payload)
            .await
            .map_err(MethodError::from)
    }

    async fn host_request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, MethodError> {
        self.host_request_on(method, params, Lane::Priority).await
    }

    async fn host_request_on<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        lane: Lane,
    ) -> Result<R, MethodError> {
        let params = serde_json::to_value(params).unwrap_or(Value::Null);
        let value = self
            .shared
            .request(method, params, lane)
            .await
            .map_err(MethodError::from)?;
        serde_json::from_value(value).map_err(|e| {
            MethodError::with_code(
                codes::INTERNAL_ERROR,
                format!("unexpected answer to {method}: {e}"),
            )
        })
    }
}

/// Runs `work` on tokio's blocking pool; a panic (or an aborted runtime) becomes an internal method
/// error naming `what`. Shared by [`Context::blocking`] and [`crate::Method::blocking`].
pub(crate) async fn run_blocking<T, F>(what: &str, work: F) -> Result<T, MethodError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, MethodError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(outcome) => outcome,
        Err(e) => Err(MethodError::with_code(
            codes::INTERNAL_ERROR,
            format!(
                "The plugin's {what} task failed ({e}). Run the command again; if it fails again, the daemon's log has the cause."
            ),
        )),
    }
}
