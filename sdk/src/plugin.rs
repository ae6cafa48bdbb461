//! `Plugin`: the builder a plugin's `main` uses to declare its methods, status, events, aliases,
//! services, state and shutdown grace, and `run`, which checks the declaration, sets up logging and
//! process hygiene, and serves.

use crate::events::{DEFAULT_QUEUE_CAPACITY, Delivery, Subscription};
use crate::lifecycle;
use crate::method::{Method, schema_of};
use crate::runtime::{BackgroundTask, Definition, StatusHandler, serve};
use crate::services::{Backoff, ServiceDef};
use crate::state::{StateBuilder, StateInit};
use crate::tasks::{DEFAULT_SHUTDOWN_GRACE, Lifecycle};
use crate::{Context, MethodError};
use koi_protocol::calls::StatusReport;
use koi_protocol::manifest::is_valid_moniker;
use koi_protocol::{EventSpec, Manifest, RootAlias};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Async worker threads a plugin runs on unless it asks for another number: two, so one handler
/// that holds a worker cannot keep the host's pings and `status` calls waiting.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// A plugin under construction. See the crate documentation for a complete example.
pub struct Plugin {
    manifest: Manifest,
    methods: Vec<Method>,
    status: Option<StatusHandler>,
    subscriptions: Vec<Subscription>,
    background: Vec<BackgroundTask>,
    services: Vec<Arc<ServiceDef>>,
    backoff: Backoff,
    grace: Duration,
    states: Vec<StateBuilder>,
    worker_threads: usize,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// A plugin with moniker `name` (the executable is `koi-<name>`), its version and one-line summary.
    pub fn new(name: &str, version: &str, summary: &str) -> Self {
        Self {
            manifest: Manifest {
                name: name.to_owned(),
                version: version.to_owned(),
                summary: summary.to_owned(),
                description: None,
                methods: Vec::new(),
                publishes: Vec::new(),
                subscribes: Vec::new(),
                aliases: Vec::new(),
                legacy_routes: Vec::new(),
                shutdown_grace_ms: None,
            },
            methods: Vec::new(),
            status: None,
            subscriptions: Vec::new(),
            background: Vec::new(),
            services: Vec::new(),
            backoff: Backoff::default(),
            grace: DEFAULT_SHUTDOWN_GRACE,
            states: Vec::new(),
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }

    /// Longer help for `koi help <name>`.
    pub fn description(mut self, text: &str) -> Self {
        self.manifest.description = Some(text.to_owned());
        self
    }

    /// Adds a method.
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// The handler for `status` (for `koi status`). Without one, the plugin reports `ok, ready`.
    pub fn status<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StatusReport> + Send + 'static,
    {
        self.status = Some(Arc::new(move |ctx| Box::pin(handler(ctx))));
        self
    }

    /// Declares an event this plugin publishes, with payload type `T`.
    pub fn publishes<T: JsonSchema>(mut self, topic: &str, summary: &str) -> Self {
        self.manifest.publishes.push(EventSpec {
            topic: topic.to_owned(),
            summary: summary.to_owned(),
            payload: schema_of::<T>(),
        });
        self
    }

    /// Subscribes `handler` to `pattern` — an exact topic (`mdns.service.appeared`) or a prefix
    /// ending in `*` (`mdns.service.*`) — with payloads deserialised into `T` (usually the
    /// publisher's own type from its API crate, such as `koi_mdns_api::ServiceEventPayload`).
    ///
    /// The handler runs for one [`Delivery`] at a time, in the order the host delivered them; a
    /// plugin may have any number of subscriptions, each with its own queue of
    /// [`DEFAULT_QUEUE_CAPACITY`] and its own task. When events are lost — the host dropped them,
    /// this subscription's queue was full, or a payload did not fit `T` — the handler receives
    /// [`Delivery::Gap`] at that point and should resync from the publisher (docs/plugins.md,
    /// "Ordered events"). Handlers' contexts are cancelled at shutdown, which waits for them.
    /// The pattern is added to the manifest's `subscribes`.
    pub fn on<T, F, Fut>(self, pattern: &str, handler: F) -> Self
    where
        T: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(Context, Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_with_capacity(pattern, DEFAULT_QUEUE_CAPACITY, handler)
    }

    /// [`Self::on`] with a queue of `capacity` deliveries (at least 1) instead of the default.
    pub fn on_with_capacity<T, F, Fut>(mut self, pattern: &str, capacity: usize, handler: F) -> Self
    where
        T: DeserializeOwned + JsonSchema + Send + 'static,
        F: Fn(Context, Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if !self.manifest.subscribes.iter().any(|p| p == pattern) {
            self.manifest.subscribes.push(pattern.to_owned());
        }
        self.subscriptions
            .push(Subscription::new(pattern, capacity, handler));
        self
    }

    /// A task started once, right after the handshake, in every mode, with a context not tied
    /// to any request; it is cancelled at shutdown and gets the shutdown grace. It is not
    /// supervised: prefer [`Self::service`] for daemon-mode work (restarted on failure, shown in
    /// `status`). Each call adds a task.
    pub fn background<F, Fut>(mut self, task: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(Arc::new(move |ctx| Box::pin(task(ctx))));
        self
    }

    /// A service: long-lived work that runs only under `koi daemon` (`RunMode::Daemon`), started
    /// right after the first successful `initialize`, with a context that is cancelled at
    /// shutdown. Declare as many as needed (names must be unique).
    ///
    /// Returning `Ok(())` means the service is finished; returning `Err` or panicking restarts it
    /// after a backoff (1 s, doubling to 60 s; see [`Self::service_backoff`]). Each service's state
    /// (`running`, `restarting` with `next_attempt_in_ms`, `failed`, `finished`), last error and
    /// restart count appear in `status` under `details.daemon_services`, and a failing service makes
    /// the plugin at least `degraded`, without any code in the status handler. At shutdown a
    /// service gets the grace ([`Self::shutdown_grace`]) to finish after its context is
    /// cancelled, and is dropped after it.
    pub fn service<F, Fut>(mut self, name: &str, service: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), MethodError>> + Send + 'static,
    {
        self.services.push(Arc::new(ServiceDef {
            name: Arc::from(name),
            run: Arc::new(move |ctx| Box::pin(service(ctx))),
        }));
        self
    }

    /// The delay before a failed service's first restart (`initial`, default 1 s) and the cap the
    /// doubling delay stops at (`max`, default 60 s). A run that lasts `max` without failing resets
    /// the delay to `initial`.
    pub fn service_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            initial,
            max: max.max(initial),
        };
        self
    }

    /// How long services, handlers and [`Context::spawn`] tasks get to finish after `shutdown`,
    /// end of input or SIGTERM, before they are dropped and the plugin exits (default 1 s, capped
    /// at [`koi_protocol::MAX_SHUTDOWN_GRACE_MS`]). A grace other than the default is declared in
    /// the manifest (`shutdown_grace_ms`) so the host waits that long before it signals.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        let cap = Duration::from_millis(koi_protocol::MAX_SHUTDOWN_GRACE_MS);
        self.grace = grace.min(cap);
        self.manifest.shutdown_grace_ms = (self.grace != DEFAULT_SHUTDOWN_GRACE)
            .then(|| u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Plugin state of type `T`, built once by `build` right after the first successful
    /// `initialize` (before any method, status or service runs) and shared by every handler
    /// through [`Context::state`]. `build` gets the session ([`StateInit`]: mode, `$KOI_HOME`,
    /// data directory, moniker); keep it quick, since the handshake waits for it. Register any
    /// number of distinct types; registering one type twice is refused by [`Self::check`].
    pub fn state<T, F>(mut self, build: F) -> Self
    where
        T: Send + Sync + 'static,
        F: FnOnce(&StateInit) -> T + Send + 'static,
    {
        self.states.push(StateBuilder {
            type_id: std::any::TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            build: Box::new(move |init| Arc::new(build(init))),
        });
        self
    }

    /// A deprecated root command: `koi <name>` runs `method`, printing `warning` on stderr.
    pub fn deprecated_alias(mut self, name: &str, method: &str, warning: &str) -> Self {
        self.manifest.aliases.push(RootAlias {
            name: name.to_owned(),
            method: method.to_owned(),
            warning: warning.to_owned(),
        });
        self
    }

    /// A pre-namespacing REST path (`/discover`) the daemon redirects to this plugin's `method`
    /// (`status` names the plugin's status).
    pub fn legacy_route(mut self, path: &str, method: &str) -> Self {
        self.manifest.legacy_routes.push(koi_protocol::LegacyRoute {
            path: path.to_owned(),
            method: method.to_owned(),
        });
        self
    }

    /// Runs handlers on a multi-threaded runtime with `threads` workers (default
    /// [`DEFAULT_WORKER_THREADS`]; 0 counts as 1). A plugin never runs on a single-threaded
    /// runtime: a handler that blocks its worker for a moment must not stop the status and ping
    /// answers (docs/protocol.md, "Never block the protocol loop"). Heavy work belongs in
    /// [`Context::blocking`](crate::Context::blocking) either way.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads.max(1);
        self
    }

    /// The manifest this plugin will announce.
    pub fn manifest(&self) -> Manifest {
        let mut manifest = self.manifest.clone();
        manifest.methods = self.methods.iter().map(|m| m.spec.clone()).collect();
        manifest
    }

    /// Checks the declaration for mistakes a host would reject.
    pub fn check(&self) -> Result<(), String> {
        let manifest = self.manifest();
        if !is_valid_moniker(&manifest.name) {
            return Err(format!(
                "`{}` is not a valid moniker (lower-case letters, digits, hyphens)",
                manifest.name
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &manifest.methods {
            if !seen.insert(m.name.as_str()) {
                return Err(format!("method `{}` is declared twice", m.name));
            }
            if ["initialize", "status", "shutdown"].contains(&m.name.as_str())
                || m.name.starts_with("host/")
                || m.name.starts_with("$/")
            {
                return Err(format!(
                    "method name `{}` is reserved by the protocol",
                    m.name
                ));
            }
            if let Some(cli) = &m.cli {
                let props = m.params.get("properties").and_then(|p| p.as_object());
                for field in cli.positional.iter().chain(cli.short.keys()) {
                    if !props.is_some_and(|p| p.contains_key(field)) {
                        return Err(format!(
                            "method `{}`: `{field}` is not a property of its params",
                            m.name
                        ));
                    }
                }
            }
        }
        let mut services = std::collections::HashSet::new();
        for service in &self.services {
            if service.name.trim().is_empty() {
                return Err("a service has an empty name".into());
            }
            if !services.insert(&*service.name) {
                return Err(format!("service `{}` is declared twice", service.name));
            }
        }
        let mut types = std::collections::HashSet::new();
        for state in &self.states {
            if !types.insert(state.type_id) {
                return Err(format!(
                    "state of type `{}` is declared twice",
                    state.type_name
                ));
            }
        }
        for route in &manifest.legacy_routes {
            if !route.path.starts_with('/')
                || (route.method != "status" && manifest.method(&route.method).is_none())
            {
                return Err(format!(
                    "legacy route `{}` must start with / and point at a method",
                    route.path
                ));
            }
        }
        for alias in &manifest.aliases {
            if manifest.method(&alias.method).is_none() {
                return Err(format!(
                    "alias `{}` points at unknown method `{}`",
                    alias.name, alias.method
                ));
            }
        }
        Ok(())
    }

    /// Serves the protocol on stdin/stdout until the host shuts the plugin down. Started by hand
    /// (without the host's launch cookie) it explains itself on stderr and exits with status 2.
    pub fn run(self) -> ExitCode {
        if let Err(problem) = self.check() {
            eprintln!(
                "koi-{}: invalid plugin declaration: {problem}",
                self.manifest.name
            );
            return ExitCode::from(70);
        }
        let manifest = self.manifest();
        if !lifecycle::launched_by_host() {
            eprint!("{}", lifecycle::explain(&manifest));
            return ExitCode::from(2);
        }
        crate::logging::init();
        let stop = CancellationToken::new();
        lifecycle::exit_with_parent(&stop);
        let runtime = match build_runtime(self.worker_threads) {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("koi-{}: cannot start the async runtime: {e}", manifest.name);
                return ExitCode::FAILURE;
            }
        };
        let methods: HashMap<_, _> = self
            .methods
            .into_iter()
            .map(|m| {
                let name = Arc::from(m.spec.name.as_str());
                (
                    m.spec.name.clone(),
                    (m.handler, m.handles_cancellation, name),
                )
            })
            .collect();
        let def = Arc::new(Definition {
            manifest,
            methods,
            status: self.status,
            subscriptions: self.subscriptions,
            background: self.background,
            lifecycle: Lifecycle {
                services: self.services,
                backoff: self.backoff,
                grace: self.grace,
                states: Mutex::new(self.states),
            },
        });
        let code = runtime.block_on(async move {
            lifecycle::watch_parent(stop.clone());
            serve(def, stop).await
        });
        // Everything owed to the host is flushed (`serve` awaits its writer). Exiting here rather
        // than dropping the runtime avoids waiting for tokio's blocking stdin reader thread.
        std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
    }
}

/// The runtime a plugin's handlers run on: multi-thread with `workers` workers (at least one).
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that blocks its thread (here: until another task runs) must not stop the other
    /// tasks — the status and ping answers. On a single-thread runtime the second task never runs
    /// while the first blocks, and the first gives up after its deadlock guard.
    #[test]
    fn a_blocked_handler_does_not_stop_other_tasks_on_the_default_runtime() {
        let Plugin { worker_threads, .. } = Plugin::new("t", "0", "t");
        let rt = build_runtime(worker_threads).expect("runtime");
        let other_task_ran = rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let blocked =
                tokio::spawn(
                    async move { rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok() },
                );
            tokio::task::yield_now().await;
            let answer = tokio::spawn(async move {
                let _ = tx.send(());
            });
            let _ = answer.await;
            blocked.await.unwrap_or(false)
        });
        assert!(other_task_ran);
    }

    #[test]
    fn a_duplicate_service_or_state_type_is_refused_by_check() {
        let ok = |_ctx: Context| async { Ok(()) };
        let twice = Plugin::new("t", "0", "t").service("a", ok).service("a", ok);
        assert!(twice.check().is_err_and(|e| e.contains("service `a`")));
        let states = Plugin::new("t", "0", "t").state(|_| 1_u32).state(|_| 2_u32);
        assert!(states.check().is_err_and(|e| e.contains("u32")));
        let distinct = Plugin::new("t", "0", "t")
            .service("a", ok)
            .service("b", ok)
            .state(|_| 1_u32)
            .state(|_| String::new());
        assert_eq!(distinct.check(), Ok(()));
    }

    #[test]
    fn only_a_grace_other_than_the_default_is_declared_and_it_is_capped() {
        let default = Plugin::new("t", "0", "t").shutdown_grace(DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(default.manifest().shutdown_grace_ms, None);
        let longer = Plugin::new("t", "0", "t").shutdown_grace(Duration::from_secs(3));
        assert_eq!(longer.manifest().shutdown_grace_ms, Some(3000));
        let huge = Plugin::new("t", "0", "t").shutdown_grace(Duration::from_secs(3600));
        assert_eq!(
            huge.manifest().shutdown_grace_ms,
            Some(koi_protocol::MAX_SHUTDOWN_GRACE_MS)
        );
    }
}
