//! The plugin's side of the connection: reads frames from stdin, dispatches requests to handlers
//! (each in its own task, so calls run concurrently), answers the host's requests, sends the
//! plugin's own requests to the host and matches their responses, and shuts down on `shutdown`,
//! stdin EOF, SIGTERM or the host's death. At shutdown every context is cancelled; services,
//! spawned tasks and handlers get the declared grace to finish, then what remains is aborted,
//! every host call still awaiting a reply fails, the writer is flushed (bounded) and the process
//! exits, so a plugin never outlives its host.

use crate::Context;
use crate::method::{BoxFuture, Handler};
use crate::outbound::{self, Outbound};
use crate::post::Posts;
use crate::services::Board;
use crate::state::{StateInit, States};
use crate::tasks::{FLUSH_LIMIT, finish, start_lifecycle};
use crate::watchdog::watched;
use koi_protocol::calls::{self, CancelParams, StatusReport};
use koi_protocol::frame::{FrameError, read_frame};
use koi_protocol::handshake::{InitializeParams, InitializeResult, RunMode};
use koi_protocol::{ErrorObject, Id, Manifest, Message, PROTOCOL_VERSION, codes};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::BufReader;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) type StatusHandler = Arc<dyn Fn(Context) -> BoxFuture<StatusReport> + Send + Sync>;

/// Everything `Plugin` declared, frozen for serving.
pub(crate) struct Definition {
    pub manifest: Manifest,
    pub methods: HashMap<String, (Handler, bool, Arc<str>)>,
    pub status: Option<StatusHandler>,
    /// `Plugin::on` subscriptions, each served in order by its own task (crate::events).
    pub subscriptions: Vec<crate::events::Subscription>,
    pub background: Vec<BackgroundTask>,
    /// Services, shutdown grace and state builders (`Plugin::service`, `shutdown_grace`, `state`).
    pub lifecycle: crate::tasks::Lifecycle,
}

/// A task started once after the handshake (for daemon-mode work such as browsing).
pub(crate) type BackgroundTask = Arc<dyn Fn(Context) -> BoxFuture<()> + Send + Sync>;

/// What the host told us in `initialize`.
pub(crate) struct Session {
    pub mode: RunMode,
    pub koi_home: PathBuf,
    pub interactive: bool,
}

fn default_session() -> &'static Session {
    static DEFAULT: OnceLock<Session> = OnceLock::new();
    DEFAULT.get_or_init(|| Session {
        mode: RunMode::OneShot,
        koi_home: PathBuf::new(),
        interactive: false,
    })
}

type Pending = Mutex<HashMap<Id, oneshot::Sender<Result<Value, ErrorObject>>>>;

/// State shared by the reader loop and every handler's `Context`.
pub(crate) struct Shared {
    out: Outbound,
    session: OnceLock<Session>,
    next_id: AtomicU64,
    pending: Pending,
    max_frame: AtomicUsize,
    /// Set once the connection is over (shutdown, stdin EOF, SIGTERM, host death): no host reply
    /// can come any more.
    closed: AtomicBool,
    /// The plugin's moniker (for messages).
    pub(crate) moniker: Arc<str>,
    /// Handlers, services and `Context::spawn` tasks: shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the shutdown grace has run out: every tracked task is dropped.
    pub(crate) kill: CancellationToken,
    /// Services' states, for `status`.
    pub(crate) board: Arc<Board>,
    /// `Plugin::state` values, built at the first successful `initialize`.
    pub(crate) states: OnceLock<States>,
    /// `Context::post`: ids of pipelined publishes and the host's refusals of them.
    pub(crate) posts: Posts,
}

/// Whether a frame may wait for room in the outbound budget (see [`crate::outbound`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Never waits: responses, cancellations, the handshake, host calls.
    Priority,
    /// Waits for the budget: streamed items, `host/publish`.
    Budgeted,
}

impl Shared {
    pub(crate) fn new(out: Outbound, moniker: &str) -> Self {
        Self {
            out,
            session: OnceLock::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            max_frame: AtomicUsize::new(
                usize::try_from(koi_protocol::DEFAULT_MAX_FRAME_BYTES).unwrap_or(usize::MAX),
            ),
            closed: AtomicBool::new(false),
            moniker: Arc::from(moniker),
            tasks: TaskTracker::new(),
            kill: CancellationToken::new(),
            board: Arc::default(),
            states: OnceLock::new(),
            posts: Posts::default(),
        }
    }

    /// Spawns `fut` as a task shutdown waits for (up to the grace) and then aborts. `name` labels
    /// its stalls in the debug-build watchdog.
    pub(crate) fn spawn_tracked<F>(
        self: &Arc<Self>,
        name: &Arc<str>,
        fut: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shared = self.clone();
        let fut = watched(name, fut);
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = shared.kill.cancelled() => {}
                _ = fut => {}
            }
        })
    }

    pub(crate) fn session(&self) -> &Session {
        self.session.get().unwrap_or_else(|| default_session())
    }

    fn send(&self, message: &Message) {
        if let Some(body) = self.encode(message) {
            self.out.send(body);
        }
    }

    /// Queues a notification on the budgeted lane, waiting for room (streamed items).
    pub(crate) async fn notify_budgeted<P: Serialize>(&self, method: &str, params: &P) {
        if let Some(body) = self.encode(&notification(method, params)) {
            self.out.send_budgeted(body).await;
        }
    }

    /// Queues a notification on the budgeted lane if there is room; drops it otherwise (progress).
    pub(crate) fn notify_or_drop<P: Serialize>(&self, method: &str, params: &P) {
        if let Some(body) = self.encode(&notification(method, params)) {
            self.out.try_send_budgeted(body);
        }
    }

    /// The frame for `message`, or `None` when it is over the frame limit (a response is then
    /// replaced by a frame-too-large error, queued here; anything else is dropped and logged).
    fn encode(&self, message: &Message) -> Option<Vec<u8>> {
        let body = message.to_bytes();
        let limit = self.max_frame.load(Ordering::Relaxed);
        if body.len() > limit {
            match message {
                Message::Response { id, .. } => {
                    let error = ErrorObject::new(
                        codes::FRAME_TOO_LARGE,
                        format!(
                            "the result is {} bytes, over the {limit}-byte frame limit",
                            body.len()
                        ),
                    )
                    .with_hint("Ask for less (narrow the query) or raise KOI_MAX_FRAME_BYTES.");
                    let reply = Message::Response {
                        id: id.clone(),
                        outcome: Err(error),
                    };
                    self.out.send(reply.to_bytes());
                }
                _ => tracing::error!(
                    bytes = body.len(),
                    limit,
                    "dropped an outgoing frame over the limit"
                ),
            }
            return None;
        }
        Some(body)
    }

    /// Sends a `host/publish` of `payload` on `topic` without waiting for the answer (which
    /// [`Posts::answer`] checks when it comes): waits only for room in the outbound budget.
    pub(crate) async fn post<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<(), ErrorObject> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(host_gone());
        }
        let body = self.posts.frame(topic, payload).map_err(|e| {
            ErrorObject::new(
                codes::INTERNAL_ERROR,
                format!("the payload for {topic} is not serialisable: {e}"),
            )
        })?;
        let limit = self.max_frame.load(Ordering::Relaxed);
        if body.len() > limit {
            return Err(crate::post::too_large(topic, body.len(), limit));
        }
        let place = self.posts.reserve().await.ok_or_else(host_gone)?;
        if self.out.send_budgeted(body).await {
            place.sent();
            Ok(())
        } else {
            Err(host_gone())
        }
    }

    /// Hands the host's answer to the plugin's request `id` to whoever waits for it (an awaited
    /// call) or to [`Posts::answer`] (a posted event); an answer nobody waits for any more (the
    /// call was cancelled) is dropped.
    pub(crate) fn answer(&self, id: Id, outcome: Result<Value, ErrorObject>) {
        if let Id::String(s) = &id {
            if self.posts.answer(s, &outcome) {
                return;
            }
        }
        if let Some(tx) = lock(&self.pending).remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    pub(crate) fn notify<P: Serialize>(&self, method: &str, params: &P) {
        self.send(&notification(method, params));
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        params: Value,
        lane: Lane,
    ) -> Result<Value, ErrorObject> {
        let id = Id::Number(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let guard = PendingGuard {
            pending: &self.pending,
            id: id.clone(),
        };
        // Checked after the insert: `close` sets the flag before draining, so a call is either
        // drained (its receiver fails) or sees the flag here. Never both missed.
        if self.closed.load(Ordering::SeqCst) {
            return Err(host_gone());
        }
        let message = Message::Request {
            id,
            method: method.to_owned(),
            params,
        };
        // Over the frame limit the request is not sent, so no answer will come: fail now rather
        // than wait for one forever.
        let Some(body) = self.encode(&message) else {
            return Err(ErrorObject::new(
                codes::FRAME_TOO_LARGE,
                format!(
                    "the {method} request is over the {}-byte frame limit, so it was not sent",
                    self.max_frame.load(Ordering::Relaxed)
                ),
            )
            .with_hint("Send less in one call (split it up) or raise KOI_MAX_FRAME_BYTES."));
        };
        match lane {
            Lane::Priority => self.out.send(body),
            Lane::Budgeted => {
                self.out.send_budgeted(body).await;
            }
        }
        let outcome = rx.await.unwrap_or_else(|_| Err(host_gone()));
        drop(guard);
        outcome
    }

    /// Ends the connection for host calls: every call awaiting a host reply fails now, and later
    /// calls fail at once. Without this a task awaiting a reply from a dead host would wait
    /// forever, holding this `Shared` (and with it the output channel the writer drains), and the
    /// process would never exit.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.posts.close();
        let waiting: Vec<_> = lock(&self.pending).drain().collect();
        // Dropping the senders fails each receiver with "the host closed the connection".
        drop(waiting);
    }

    fn respond(&self, id: Id, outcome: Result<Value, ErrorObject>) {
        self.send(&Message::Response { id, outcome });
    }
}

fn notification<P: Serialize>(method: &str, params: &P) -> Message {
    Message::Notification {
        method: method.to_owned(),
        params: serde_json::to_value(params).unwrap_or(Value::Null),
    }
}

fn host_gone() -> ErrorObject {
    ErrorObject::new(codes::PLUGIN_UNAVAILABLE, "the host closed the connection")
}

/// Removes a pending host call if its handler is dropped (cancelled) before the answer arrives.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: Id,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves the protocol on stdin/stdout until shutdown. Returns the process exit code.
pub(crate) async fn serve(def: Arc<Definition>, stop: CancellationToken) -> ExitCode {
    let (out, inbox) = outbound::channel(outbound::BUDGET);
    let writer = tokio::spawn(koi_protocol::frame::write_frames(
        crate::stdio::output(),
        inbox,
    ));
    let shared = Arc::new(Shared::new(out, &def.manifest.name));
    crate::watchdog::start(&def.manifest.name);
    let status_name: Arc<str> = Arc::from("status");
    let root = CancellationToken::new();
    let running: Arc<Mutex<HashMap<Id, CancellationToken>>> = Arc::default();
    let tracker = shared.tasks.clone();
    let mut reader = BufReader::with_capacity(64 * 1024, crate::stdio::input());
    let mut buf = Vec::with_capacity(4096);
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut exit = ExitCode::SUCCESS;
    let events = crate::events::Router::start(
        &def.subscriptions,
        &Context {
            shared: shared.clone(),
            request: None,
            cancel: root.child_token(),
            call: None,
        },
        &tracker,
    );

    loop {
        let limit = shared.max_frame.load(Ordering::Relaxed);
        let frame = tokio::select! {
            r = read_frame(&mut reader, &mut buf, limit) => r,
            _ = stop.cancelled() => break,
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                tracing::debug!("SIGTERM: shutting down");
                break;
            }
        };
        match frame {
            Ok(true) => {}
            Ok(false) => break, // stdin closed: the host is done with us
            Err(FrameError::TooLarge { size, limit }) => {
                tracing::error!(size, limit, "the host sent a frame over the limit; closing");
                exit = ExitCode::FAILURE;
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::error!(error = %e, "reading stdin failed; closing");
                exit = ExitCode::FAILURE;
                break;
            }
        }
        let (message, call) = match koi_protocol::context::parse_frame(&buf) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignored a malformed frame from the host");
                continue;
            }
        };
        match message {
            Message::Response { id, outcome } => shared.answer(id, outcome),
            Message::Notification { method, params } => match method.as_str() {
                calls::CANCEL => {
                    if let Ok(p) = serde_json::from_value::<CancelParams>(params) {
                        if let Some(token) = lock(&running).get(&p.request) {
                            token.cancel();
                        }
                    }
                }
                // Never waits: each subscription has its own bounded queue and task.
                calls::EVENT => events.route_params(params),
                other => tracing::debug!(method = other, "ignored an unknown notification"),
            },
            Message::Request { id, method, params } => match method.as_str() {
                calls::INITIALIZE => {
                    let first = shared.session.get().is_none();
                    let outcome = initialize(&def, &shared, params);
                    let started = outcome.is_ok();
                    shared.respond(id, outcome);
                    if first && started {
                        start_lifecycle(&def, &shared, &root);
                    }
                }
                _ if shared.session.get().is_none() => shared.respond(
                    id,
                    Err(ErrorObject::new(
                        codes::INVALID_REQUEST,
                        "the first request must be `initialize`",
                    )),
                ),
                calls::SHUTDOWN => {
                    finish(&root, &shared, def.lifecycle.grace).await;
                    shared.respond(id, Ok(Value::Null));
                    break;
                }
                calls::STATUS => {
                    let ctx = Context {
                        shared: shared.clone(),
                        request: Some(id.clone()),
                        cancel: root.child_token(),
                        call: call.map(Arc::new),
                    };
                    let status = def.status.clone();
                    let responder = shared.clone();
                    shared.spawn_tracked(&status_name, async move {
                        let mut report = match status {
                            Some(handler) => handler(ctx).await,
                            None => StatusReport {
                                state: calls::HealthState::Ok,
                                summary: "ready".into(),
                                details: Default::default(),
                            },
                        };
                        responder.board.merge_into(&mut report);
                        responder.respond(
                            id,
                            serde_json::to_value(report).map_err(|e| {
                                ErrorObject::new(
                                    codes::INTERNAL_ERROR,
                                    format!("status not serialisable: {e}"),
                                )
                            }),
                        );
                    });
                }
                name => match def.methods.get(name) {
                    None => {
                        let known: Vec<&str> = def
                            .manifest
                            .methods
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect();
                        shared.respond(
                            id,
                            Err(ErrorObject::new(
                                codes::METHOD_NOT_FOUND,
                                format!(
                                    "koi-{} has no method `{name}` (it has: {})",
                                    def.manifest.name,
                                    known.join(", ")
                                ),
                            )),
                        );
                    }
                    Some((handler, handles_cancellation, name)) => {
                        let token = root.child_token();
                        lock(&running).insert(id.clone(), token.clone());
                        let ctx = Context {
                            shared: shared.clone(),
                            request: Some(id.clone()),
                            cancel: token.clone(),
                            call: call.map(Arc::new),
                        };
                        let fut = handler(ctx, params);
                        let handles_cancellation = *handles_cancellation;
                        let responder = shared.clone();
                        let running = running.clone();
                        shared.spawn_tracked(name, async move {
                            let outcome = if handles_cancellation {
                                fut.await
                            } else {
                                tokio::select! {
                                    r = fut => r,
                                    _ = token.cancelled() => Err(ErrorObject::new(codes::REQUEST_CANCELLED, "cancelled")),
                                }
                            };
                            lock(&running).remove(&id);
                            responder.respond(id, outcome);
                        });
                    }
                },
            },
        }
    }

    // The host is gone or done with us. Tasks get their grace (already spent after a `shutdown`
    // request), then no reply to a host call can arrive any more.
    drop(events);
    finish(&root, &shared, def.lifecycle.grace).await;
    shared.close();
    // The writer writes what is queued and stops. A task stuck in blocking code must not keep the
    // process alive (holding locks and an unlocked CA): `Plugin::run` calls `process::exit`.
    shared.out.close();
    drop(shared);
    if tokio::time::timeout(FLUSH_LIMIT, writer).await.is_err() {
        tracing::warn!("the host did not read the last frames; exiting without them");
    }
    exit
}

fn initialize(def: &Definition, shared: &Shared, params: Value) -> Result<Value, ErrorObject> {
    let params: InitializeParams = serde_json::from_value(params).map_err(|e| {
        ErrorObject::new(
            codes::INVALID_PARAMS,
            format!("invalid initialize params: {e}"),
        )
    })?;
    if !PROTOCOL_VERSION.is_compatible_with(params.protocol) {
        let mut error = ErrorObject::new(
            codes::PROTOCOL_MISMATCH,
            format!(
                "koi-{} speaks Koi plugin protocol {PROTOCOL_VERSION}, but the host speaks {}",
                def.manifest.name, params.protocol
            ),
        );
        error.set_data_field("plugin_protocol", serde_json::json!(PROTOCOL_VERSION));
        error.set_data_field("host_protocol", serde_json::json!(params.protocol));
        return Err(error);
    }
    let limit = usize::try_from(params.max_frame_bytes).unwrap_or(usize::MAX);
    shared.max_frame.store(limit, Ordering::Relaxed);
    let features = params
        .features
        .iter()
        .filter(|f| koi_protocol::handshake::features::ALL.contains(&f.as_str()))
        .cloned()
        .collect();
    let _ = shared.session.set(Session {
        mode: params.mode,
        koi_home: PathBuf::from(params.koi_home),
        interactive: params.interactive,
    });
    if shared.states.get().is_none() {
        // Built before the answer, so every later method, status and service finds them.
        let builders = std::mem::take(&mut *lock(&def.lifecycle.states));
        let session = shared.session();
        let init = StateInit {
            mode: session.mode,
            koi_home: session.koi_home.clone(),
            moniker: def.manifest.name.clone(),
        };
        let states = crate::state::build_all(builders, &init).map_err(|problem| {
            ErrorObject::new(codes::INTERNAL_ERROR, problem)
                .with_hint("This is a bug in the plugin; report it with the plugin's log.")
        })?;
        let _ = shared.states.set(states);
    }
    let result = InitializeResult {
        protocol: PROTOCOL_VERSION,
        features,
        manifest: def.manifest.clone(),
    };
    serde_json::to_value(result).map_err(|e| {
        ErrorObject::new(
            codes::INTERNAL_ERROR,
            format!("manifest not serialisable: {e}"),
        )
    })
}

/// A context not tied to any host (no session, nothing sent anywhere), for the SDK's unit tests.
#[cfg(test)]
pub(crate) fn detached_context(cancel: CancellationToken) -> Context {
    let (out, _) = outbound::channel(outbound::BUDGET);
    Context {
        shared: Arc::new(Shared::new(out, "t")),
        request: None,
        cancel,
        call: None,
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
