//! The plugin's side of the connection: reads frames from stdin, dispatches requests to handlers
//! (each in its own task, so calls run concurrently), answers the host's requests, sends the
//! plugin's own requests to the host and matches their responses, and shuts down on `shutdown`,
//! stdin EOF, SIGTERM or the host's death. At shutdown every host call still awaiting a reply
//! fails at once, and the process exits after a short grace even if a task ignores cancellation,
//! so a plugin never outlives its host.

use crate::Context;
use crate::method::{BoxFuture, Handler};
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
use std::time::Duration;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight handlers get to finish after `shutdown`, EOF or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub(crate) type StatusHandler = Arc<dyn Fn(Context) -> BoxFuture<StatusReport> + Send + Sync>;

/// Everything `Plugin` declared, frozen for serving.
pub(crate) struct Definition {
    pub manifest: Manifest,
    pub methods: HashMap<String, (Handler, bool)>,
    pub status: Option<StatusHandler>,
    /// `Plugin::on` subscriptions, each served in order by its own task (crate::events).
    pub subscriptions: Vec<crate::events::Subscription>,
    pub background: Option<BackgroundTask>,
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
    out: mpsc::UnboundedSender<Vec<u8>>,
    session: OnceLock<Session>,
    next_id: AtomicU64,
    pending: Pending,
    max_frame: AtomicUsize,
    /// Set once the connection is over (shutdown, stdin EOF, SIGTERM, host death): no host reply
    /// can come any more.
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn session(&self) -> &Session {
        self.session.get().unwrap_or_else(|| default_session())
    }

    fn send(&self, message: &Message) {
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
                    let _ = self.out.send(reply.to_bytes());
                }
                _ => tracing::error!(
                    bytes = body.len(),
                    limit,
                    "dropped an outgoing frame over the limit"
                ),
            }
            return;
        }
        // A closed channel means the host is gone; there is nobody left to tell.
        let _ = self.out.send(body);
    }

    pub(crate) fn notify<P: Serialize>(&self, method: &str, params: &P) {
        let params = serde_json::to_value(params).unwrap_or(Value::Null);
        self.send(&Message::Notification {
            method: method.to_owned(),
            params,
        });
    }

    pub(crate) async fn request(&self, method: &str, params: Value) -> Result<Value, ErrorObject> {
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
        self.send(&Message::Request {
            id,
            method: method.to_owned(),
            params,
        });
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
        let waiting: Vec<_> = lock(&self.pending).drain().collect();
        // Dropping the senders fails each receiver with "the host closed the connection".
        drop(waiting);
    }

    fn respond(&self, id: Id, outcome: Result<Value, ErrorObject>) {
        self.send(&Message::Response { id, outcome });
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
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(koi_protocol::frame::write_frames(
        tokio::io::stdout(),
        out_rx,
    ));
    let shared = Arc::new(Shared {
        out: out_tx,
        session: OnceLock::new(),
        next_id: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        max_frame: AtomicUsize::new(
            usize::try_from(koi_protocol::DEFAULT_MAX_FRAME_BYTES).unwrap_or(usize::MAX),
        ),
        closed: AtomicBool::new(false),
    });
    let root = CancellationToken::new();
    let running: Arc<Mutex<HashMap<Id, CancellationToken>>> = Arc::default();
    let tracker = TaskTracker::new();
    let mut reader = BufReader::with_capacity(64 * 1024, tokio::io::stdin());
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
            Message::Response { id, outcome } => {
                if let Some(tx) = lock(&shared.pending).remove(&id) {
                    let _ = tx.send(outcome);
                }
            }
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
                    if let (true, true, Some(task)) = (first, started, def.background.clone()) {
                        let ctx = Context {
                            shared: shared.clone(),
                            request: None,
                            cancel: root.child_token(),
                            call: None,
                        };
                        tracker.spawn(async move { task(ctx).await });
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
                    finish(&root, &tracker).await;
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
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        let report = match status {
                            Some(handler) => handler(ctx).await,
                            None => StatusReport {
                                state: calls::HealthState::Ok,
                                summary: "ready".into(),
                                details: Default::default(),
                            },
                        };
                        shared.respond(
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
                    Some((handler, handles_cancellation)) => {
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
                        let shared = shared.clone();
                        let running = running.clone();
                        tracker.spawn(async move {
                            let outcome = if handles_cancellation {
                                fut.await
                            } else {
                                tokio::select! {
                                    r = fut => r,
                                    _ = token.cancelled() => Err(ErrorObject::new(codes::REQUEST_CANCELLED, "cancelled")),
                                }
                            };
                            lock(&running).remove(&id);
                            shared.respond(id, outcome);
                        });
                    }
                },
            },
        }
    }

    // The host is gone or done with us: no reply to a host call can arrive any more.
    drop(events);
    shared.close();
    finish(&root, &tracker).await;
    drop(shared);
    // The writer ends when the last `Shared` is dropped, that is when every task is over. A task
    // that ignores cancellation must not keep the process alive (holding locks and an unlocked
    // CA): after the grace the process exits anyway (`Plugin::run` calls `process::exit`).
    if tokio::time::timeout(SHUTDOWN_GRACE, writer).await.is_err() {
        tracing::warn!("a task ignored shutdown; exiting without it");
    }
    exit
}

/// Cancels every handler and gives them [`SHUTDOWN_GRACE`] to answer.
async fn finish(root: &CancellationToken, tracker: &TaskTracker) {
    root.cancel();
    tracker.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
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
    let (out, _) = mpsc::unbounded_channel();
    Context {
        shared: Arc::new(Shared {
            out,
            session: OnceLock::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            max_frame: AtomicUsize::new(1 << 20),
            closed: AtomicBool::new(false),
        }),
        request: None,
        cancel,
        call: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> (Arc<Shared>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out,
            session: OnceLock::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            max_frame: AtomicUsize::new(1 << 20),
            closed: AtomicBool::new(false),
        });
        (shared, rx)
    }

    #[tokio::test]
    async fn closing_fails_a_host_call_awaiting_its_reply_and_every_later_one() {
        let (shared, mut sent) = shared();
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { shared.request("host/prompt", Value::Null).await }
        });
        // The request went out; no reply will come (the host died).
        assert!(sent.recv().await.is_some());
        shared.close();
        let outcome = waiting.await.expect("task");
        assert_eq!(
            outcome.expect_err("no reply").code,
            codes::PLUGIN_UNAVAILABLE
        );
        let later = shared.request("host/prompt", Value::Null).await;
        assert_eq!(later.expect_err("closed").code, codes::PLUGIN_UNAVAILABLE);
    }
}
