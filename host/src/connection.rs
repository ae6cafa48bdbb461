//! One live plugin process and the JSON-RPC connection to it.
//!
//! `Connection::start` spawns `koi-<moniker>` in its own process group with piped stdio, performs
//! the `initialize` handshake within a deadline, and then runs three tasks: a reader (frames from
//! the plugin's stdout: responses, the plugin's own requests, notifications), a stderr pump (the
//! plugin's log lines into the host's log, keeping the last few for crash reports) and a reaper
//! (waits for the process, fails every pending call with a clear error when it dies). The reader
//! and the stderr pump live in the `inbound` submodule (`connection/inbound.rs`).
//!
//! Invariants: every payload crossing the connection is checked against the manifest's schemas;
//! a frame over the limit or non-protocol output before the handshake ends the connection; the
//! process is always reaped; `shutdown` escalates `shutdown` → close stdin → SIGTERM → SIGKILL.

use crate::schema::{PayloadKind, Validators, lock};
use crate::services::HostServices;
use crate::trace::{self, Direction};
use koi_protocol::calls;
use koi_protocol::handshake::{HostInfo, InitializeParams, InitializeResult, RunMode, features};
use koi_protocol::redact::secret_property_names;
use koi_protocol::{
    COOKIE_ENV, COOKIE_VALUE, CallContext, ErrorObject, Id, Manifest, Message, PROTOCOL_VERSION,
    codes,
};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

mod handshake;
mod inbound;
mod process;

pub use process::shutdown_grace;
use process::{describe_status, kill_leftovers};

/// Frames that may wait for a plugin to read its stdin. A plugin that lets more pile up has
/// stopped reading; the connection is then closed rather than letting the host's memory grow.
pub const OUTBOUND_FRAMES: usize = 1024;
/// Each escalation step of `shutdown` waits this long.
pub const SHUTDOWN_STEP: Duration = Duration::from_secs(2);
/// While the host answers a plugin's host call, the request it serves is marked active this often.
const KEEP_ALIVE_TICK: Duration = Duration::from_secs(1);

/// Settings for launching plugins.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// One-shot or daemon.
    pub mode: RunMode,
    /// `$KOI_HOME`.
    pub koi_home: PathBuf,
    /// Whether a person can answer prompts.
    pub interactive: bool,
    /// Frame limit in both directions.
    pub max_frame_bytes: usize,
    /// Deadline for the handshake.
    pub handshake_timeout: Duration,
    /// Default inactivity timeout for a request.
    pub request_timeout: Duration,
    /// The log filter handed to plugins as `KOI_LOG`.
    pub log_filter: String,
}

/// How a call behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Inactivity timeout; `None` for none (long-running methods).
    pub timeout: Option<Duration>,
}

/// What became of the plugin process.
#[derive(Debug, Clone)]
pub struct ExitReport {
    /// `exited with status 1`, `was killed by signal 9 (SIGKILL)`, ...
    pub description: String,
}

type Pending = Mutex<HashMap<u64, PendingCall>>;

struct PendingCall {
    method: String,
    reply: oneshot::Sender<Result<Value, ErrorObject>>,
    last_activity: Arc<Mutex<Instant>>,
}

struct Inner {
    moniker: String,
    path: PathBuf,
    pid: u32,
    max_frame: usize,
    request_timeout: Duration,
    out: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    pending: Pending,
    next_id: AtomicU64,
    manifest: OnceLock<Manifest>,
    protocol: OnceLock<koi_protocol::ProtocolVersion>,
    secret_names: OnceLock<BTreeSet<String>>,
    validators: Validators,
    handshake_done: AtomicBool,
    /// Whether the plugin answered the `call_context` feature (then requests carry `context`).
    call_context: AtomicBool,
    /// Whether the plugin answered the `event_gaps` feature (then events carry `missed` and the
    /// host sends gap markers).
    event_gaps: AtomicBool,
    /// Set when the connection broke (protocol violation); later errors quote it.
    fatal: Mutex<Option<String>>,
    stderr_tail: Mutex<VecDeque<String>>,
    stray_lines: AtomicU64,
    exit: watch::Receiver<Option<ExitReport>>,
    services: Weak<dyn HostServices>,
}

/// A handle to a running plugin; cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("moniker", &self.inner.moniker)
            .field("pid", &self.inner.pid)
            .finish()
    }
}

impl Connection {
    /// Spawns the plugin at `path` and completes the handshake, or explains why it could not.
    pub async fn start(
        moniker: &str,
        path: &Path,
        options: &LaunchOptions,
        services: Weak<dyn HostServices>,
    ) -> Result<Connection, ErrorObject> {
        let mut command = Command::new(path);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(COOKIE_ENV, COOKIE_VALUE)
            .env("KOI_HOME", &options.koi_home)
            .env("KOI_LOG", &options.log_filter)
            .process_group(0)
            .kill_on_drop(true);
        // The absolute path of this koi, for advice a plugin prints (`sudo <koi> …`: sudo does not
        // search the user's PATH). Documented in docs/plugins.md.
        if let Ok(exe) = std::env::current_exe() {
            command.env("KOI_EXE", exe);
        }
        let mut child = command.spawn().map_err(|e| {
            unavailable(format!("cannot start koi-{moniker} ({}): {e}", path.display()))
                .with_hint("Check that the file is an executable for this machine; `koi plugins list` shows what was found.")
        })?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(unavailable(format!(
                "koi-{moniker}: the operating system gave no pipes"
            )));
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let inner = Arc::new(Inner {
            moniker: moniker.to_owned(),
            path: path.to_owned(),
            pid,
            max_frame: options.max_frame_bytes,
            request_timeout: options.request_timeout,
            out: Mutex::new(Some(out_tx)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            manifest: OnceLock::new(),
            protocol: OnceLock::new(),
            secret_names: OnceLock::new(),
            validators: Validators::default(),
            handshake_done: AtomicBool::new(false),
            call_context: AtomicBool::new(false),
            event_gaps: AtomicBool::new(false),
            fatal: Mutex::new(None),
            stderr_tail: Mutex::new(VecDeque::new()),
            stray_lines: AtomicU64::new(0),
            exit: exit_rx,
            services,
        });
        tokio::spawn(koi_protocol::frame::write_frames(stdin, out_rx));
        tokio::spawn(inbound::stderr_loop(Arc::downgrade(&inner), stderr));
        let stdout_done = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(inbound::read_loop(
            inner.clone(),
            stdout,
            stdout_done.clone(),
        ));
        let reaper_inner = Arc::downgrade(&inner);
        let reaper_moniker = moniker.to_owned();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Let the reader drain what the plugin wrote before it died (bounded wait).
            let _ = tokio::time::timeout(Duration::from_millis(200), stdout_done.notified()).await;
            let description = match status {
                Ok(s) => describe_status(s),
                Err(e) => format!("could not be waited for ({e})"),
            };
            kill_leftovers(&reaper_moniker, pid);
            let _ = exit_tx.send(Some(ExitReport { description }));
            if let Some(inner) = reaper_inner.upgrade() {
                inner.fail_all_pending();
            }
        });

        let connection = Connection { inner };
        let init = InitializeParams {
            protocol: PROTOCOL_VERSION,
            host: HostInfo {
                name: "koi".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            mode: options.mode,
            features: features::ALL.iter().map(|s| (*s).to_owned()).collect(),
            max_frame_bytes: options.max_frame_bytes as u64,
            koi_home: options.koi_home.display().to_string(),
            interactive: options.interactive,
        };
        let params = serde_json::to_value(init).unwrap_or(Value::Null);
        let outcome = connection
            .raw_call(calls::INITIALIZE, params, Some(options.handshake_timeout))
            .await;
        match connection.check_handshake(outcome) {
            Ok(()) => Ok(connection),
            Err(e) => {
                connection.kill().await;
                Err(e)
            }
        }
    }

    /// The plugin's moniker.
    pub fn moniker(&self) -> &str {
        &self.inner.moniker
    }

    /// The executable's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The protocol version the plugin answered with.
    pub fn protocol(&self) -> koi_protocol::ProtocolVersion {
        self.inner
            .protocol
            .get()
            .copied()
            .unwrap_or(PROTOCOL_VERSION)
    }

    /// The manifest from the handshake.
    pub fn manifest(&self) -> &Manifest {
        // Set before `start` returns a connection.
        self.inner.manifest.get_or_init(|| Manifest {
            name: self.inner.moniker.clone(),
            version: String::new(),
            summary: String::new(),
            description: None,
            methods: Vec::new(),
            publishes: Vec::new(),
            subscribes: Vec::new(),
            aliases: Vec::new(),
            legacy_routes: Vec::new(),
            shutdown_grace_ms: None,
        })
    }

    /// Whether the plugin negotiated `event_gaps`: its events may carry `missed`, and it gets gap
    /// markers (docs/protocol.md, "Events").
    pub fn event_gaps(&self) -> bool {
        self.inner.event_gaps.load(Ordering::Acquire)
    }

    /// How long [`Self::shutdown`] lets the plugin exit on its own after `shutdown` before
    /// SIGTERM: [`SHUTDOWN_STEP`], or the manifest's `shutdown_grace_ms` (capped at
    /// [`koi_protocol::MAX_SHUTDOWN_GRACE_MS`]) plus one second when that is longer.
    pub fn shutdown_grace(&self) -> Duration {
        shutdown_grace(self.manifest())
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.inner.exit.borrow().is_some()
    }

    /// Calls a method of the plugin on the host's own behalf (caller `host`: pings, the
    /// dashboard). Calls made for someone else go through [`Self::call_as`].
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ErrorObject> {
        self.call_with_id_as(&CallContext::host(), method, params, |_| {})
            .await
    }

    /// Calls a method of the plugin for `context.caller`: checks params against its schema,
    /// waits (with an inactivity timeout unless the method is long-running) and checks the
    /// result. `status` is checked against the protocol's status schema instead. The context is
    /// sent (as the request member `context`) only if the plugin negotiated `call_context`.
    pub async fn call_as(
        &self,
        context: &CallContext,
        method: &str,
        params: Value,
    ) -> Result<Value, ErrorObject> {
        self.call_with_id_as(context, method, params, |_| {}).await
    }

    /// Like [`Self::call_as`], reporting the request id as soon as it is assigned (for
    /// cancellation).
    pub async fn call_with_id_as(
        &self,
        context: &CallContext,
        method: &str,
        params: Value,
        on_id: impl FnOnce(u64),
    ) -> Result<Value, ErrorObject> {
        let moniker = &self.inner.moniker;
        let timeout_for = |long_running: bool, timeout_ms: Option<u64>| {
            if long_running {
                None
            } else {
                Some(timeout_ms.map_or(self.inner.request_timeout, Duration::from_millis))
            }
        };
        if method == calls::STATUS {
            let result = self
                .raw_call_observed(
                    method,
                    Value::Null,
                    Some(self.inner.request_timeout),
                    on_id,
                    Some(context),
                )
                .await?;
            return serde_json::from_value::<calls::StatusReport>(result.clone()).map(|_| result).map_err(|e| {
                schema_error(format!("koi-{moniker} answered `status` with a report that breaks the protocol schema: {e}"))
            });
        }
        let Some(spec) = self.manifest().method(method).cloned() else {
            let known: Vec<&str> = self
                .manifest()
                .methods
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(ErrorObject::new(
                codes::METHOD_NOT_FOUND,
                format!("koi-{moniker} has no method `{method}`"),
            )
            .with_hint(format!("Its methods are: {}.", known.join(", "))));
        };
        let params = if params.is_null() {
            Value::Object(Default::default())
        } else {
            params
        };
        self.inner
            .validators
            .check(moniker, PayloadKind::Params, method, &spec.params, &params)?;
        let result = self
            .raw_call_observed(
                method,
                params,
                timeout_for(spec.long_running, spec.timeout_ms),
                on_id,
                Some(context),
            )
            .await?;
        self.inner
            .validators
            .check(moniker, PayloadKind::Result, method, &spec.result, &result)?;
        Ok(result)
    }

    /// Asks the plugin to cancel request `id`.
    pub fn cancel(&self, id: u64) {
        self.notify(calls::CANCEL, serde_json::json!({ "request": id }));
    }

    /// Sends a notification, waiting while the plugin's input queue is full (for event delivery,
    /// whose own bounded queue absorbs the wait). Returns false if the plugin's stdin is closed.
    /// `params` is serialised straight into the frame (not copied into a `Message` first): on the
    /// event path this runs once per event and subscriber.
    pub async fn deliver(&self, method: &str, params: &Value) -> bool {
        /// A notification borrowed from the caller, for one serialisation.
        #[derive(serde::Serialize)]
        struct Notification<'a> {
            jsonrpc: &'static str,
            method: &'a str,
            params: &'a Value,
        }
        let body = serde_json::to_vec(&Notification {
            jsonrpc: "2.0",
            method,
            params,
        })
        .unwrap_or_default();
        trace::frame(
            &self.inner.moniker,
            Direction::ToPlugin,
            &body,
            self.inner.secret_names(),
            false,
        );
        let sender = lock(&self.inner.out).clone();
        match sender {
            Some(sender) => sender.send(body).await.is_ok(),
            None => false,
        }
    }

    /// Resolves once the plugin process has exited and been reaped.
    pub async fn closed(&self) {
        let mut exit = self.inner.exit.clone();
        let _ = exit.wait_for(Option::is_some).await;
    }

    /// How the process ended, once it has.
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.inner.exit.borrow().clone()
    }

    /// Sends a notification.
    pub fn notify(&self, method: &str, params: Value) {
        self.send(&Message::Notification {
            method: method.to_owned(),
            params,
        });
    }

    async fn raw_call(
        &self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ErrorObject> {
        self.raw_call_observed(method, params, timeout, |_| {}, None)
            .await
    }

    async fn raw_call_observed(
        &self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
        on_id: impl FnOnce(u64),
        context: Option<&CallContext>,
    ) -> Result<Value, ErrorObject> {
        if let Some(error) = self.gone_error(method) {
            return Err(error);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let last_activity = Arc::new(Mutex::new(Instant::now()));
        lock(&self.inner.pending).insert(
            id,
            PendingCall {
                method: method.to_owned(),
                reply: tx,
                last_activity: last_activity.clone(),
            },
        );
        // If this future is dropped before the answer arrives (a REST client that disconnected,
        // a caller that gave up), the plugin is told to stop instead of working for nobody.
        let _abandon = CancelOnDrop {
            inner: &self.inner,
            id,
        };
        on_id(id);
        // Only the host writes the context, and only for plugins that asked for it.
        let context = context.filter(|_| self.inner.call_context.load(Ordering::Acquire));
        self.inner.enqueue(
            koi_protocol::context::request_bytes(Id::Number(id), method, params, context),
            false,
        );
        let Some(timeout) = timeout else {
            return rx.await.unwrap_or_else(|_| {
                Err(self
                    .gone_error(method)
                    .unwrap_or_else(|| unavailable("connection closed")))
            });
        };
        loop {
            let deadline = *lock(&last_activity) + timeout;
            match tokio::time::timeout_at(deadline.into(), &mut rx).await {
                Ok(outcome) => {
                    return outcome.unwrap_or_else(|_| {
                        Err(self
                            .gone_error(method)
                            .unwrap_or_else(|| unavailable("connection closed")))
                    });
                }
                Err(_) if *lock(&last_activity) + timeout > Instant::now() => continue,
                Err(_) => {
                    lock(&self.inner.pending).remove(&id);
                    self.cancel(id);
                    return Err(ErrorObject::new(
                        codes::TIMEOUT,
                        format!(
                            "koi-{} did not answer `{method}` within {:.1} s",
                            self.inner.moniker,
                            timeout.as_secs_f64()
                        ),
                    )
                    .with_hint(self.stray_hint()));
                }
            }
        }
    }

    fn stray_hint(&self) -> String {
        let stray = self.inner.stray_lines.load(Ordering::Relaxed);
        if stray > 0 {
            format!("It wrote {stray} non-protocol line(s) to stdout; plugins must log to stderr.")
        } else {
            "The plugin may be stuck; `KOI_TRACE_PROTOCOL=1` shows the exchange.".to_owned()
        }
    }

    /// Why calls can no longer succeed, if they can't.
    fn gone_error(&self, method: &str) -> Option<ErrorObject> {
        if let Some(reason) = lock(&self.inner.fatal).clone() {
            return Some(
                unavailable(reason)
                    .with_hint("This is a bug in the plugin: report it to its author."),
            );
        }
        let exit = self.inner.exit.borrow().clone()?;
        Some(self.inner.crash_error(method, &exit))
    }

    fn send(&self, message: &Message) {
        self.inner.enqueue(message.to_bytes(), false);
    }
}

impl Inner {
    fn crash_error(&self, method: &str, exit: &ExitReport) -> ErrorObject {
        let mut message = format!(
            "koi-{} ({}) {} while handling `{method}`",
            self.moniker,
            self.path.display(),
            exit.description
        );
        let tail: Vec<String> = lock(&self.stderr_tail).iter().cloned().collect();
        if !tail.is_empty() {
            message.push_str(&format!(
                ". Its last words on stderr: \"{}\"",
                tail.join(" | ")
            ));
        }
        unavailable(message).with_hint("This is a bug in the plugin: report it to its author (`koi plugins list` shows its path and version).")
    }

    fn fail_all_pending(&self) {
        let drained: Vec<PendingCall> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        let exit = self.exit.borrow().clone();
        for call in drained {
            let error = match (&*lock(&self.fatal), &exit) {
                (Some(reason), _) => unavailable(reason.clone())
                    .with_hint("This is a bug in the plugin: report it to its author."),
                (None, Some(exit)) => self.crash_error(&call.method, exit),
                (None, None) => {
                    unavailable(format!("the connection to koi-{} closed", self.moniker))
                }
            };
            let _ = call.reply.send(Err(error));
        }
    }

    /// Marks the connection broken, fails pending calls and kills the process group.
    fn break_connection(&self, reason: String) {
        tracing::error!(plugin = %self.moniker, "{reason}");
        lock(&self.fatal).get_or_insert(reason);
        lock(&self.out).take();
        self.fail_all_pending();
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    fn secret_names(&self) -> &BTreeSet<String> {
        static EMPTY: BTreeSet<String> = BTreeSet::new();
        self.secret_names.get().unwrap_or(&EMPTY)
    }

    fn bump_activity(&self, request: &Id) {
        if let Id::Number(n) = request {
            if let Some(call) = lock(&self.pending).get(n) {
                *lock(&call.last_activity) = Instant::now();
            }
        }
    }

    /// Awaits `work` done on behalf of `request` (a host call the plugin made while serving it),
    /// keeping the request's inactivity timer from running out meanwhile.
    async fn keep_alive<T>(&self, request: &Id, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(KEEP_ALIVE_TICK);
        loop {
            tokio::select! {
                outcome = &mut work => {
                    self.bump_activity(request);
                    return outcome;
                }
                _ = tick.tick() => self.bump_activity(request),
            }
        }
    }

    fn send_response(&self, id: Id, outcome: Result<Value, ErrorObject>, secret: bool) {
        self.enqueue(Message::Response { id, outcome }.to_bytes(), secret);
    }

    /// Traces a frame and queues it for the plugin's stdin (dropped if stdin is already closed).
    fn enqueue(&self, body: Vec<u8>, whole_result_secret: bool) {
        trace::frame(
            &self.moniker,
            Direction::ToPlugin,
            &body,
            self.secret_names(),
            whole_result_secret,
        );
        let sender = lock(&self.out).clone();
        if let Some(sender) = sender {
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(body) {
                self.break_connection(format!(
                    "koi-{} stopped reading its stdin ({OUTBOUND_FRAMES} frames were waiting); the connection was closed",
                    self.moniker
                ));
            }
        }
    }
}

/// Relays a dropped, still unanswered call as `$/cancel` and forgets it (docs/protocol.md §12).
/// A call that was answered, timed out or failed with the connection is no longer pending, so
/// dropping its guard does nothing.
struct CancelOnDrop<'a> {
    inner: &'a Arc<Inner>,
    id: u64,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let Some(call) = lock(&self.inner.pending).remove(&self.id) else {
            return;
        };
        tracing::debug!(plugin = %self.inner.moniker, method = %call.method, id = self.id,
            "the caller went away before the answer; cancelling the request");
        Connection {
            inner: self.inner.clone(),
        }
        .cancel(self.id);
    }
}

fn unavailable(message: impl Into<String>) -> ErrorObject {
    ErrorObject::new(codes::PLUGIN_UNAVAILABLE, message)
}

fn schema_error(message: String) -> ErrorObject {
    ErrorObject::new(codes::SCHEMA_VIOLATION, message)
        .with_hint("This is a bug in the plugin: report it to its author.")
}

impl Drop for Inner {
    fn drop(&mut self) {
        // kill_on_drop covers the direct child; take the group down too if it is still alive.
        if self.exit.borrow().is_none() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}
