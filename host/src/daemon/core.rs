//! The daemon's shared state: the supervised plugins, the event bus, and the routes that connect a
//! plugin's request back to the CLI client that caused it. `Daemon` is the host for plugins
//! (`HostServices`: questions and progress go to the client's terminal, `host/call` goes to another
//! supervised plugin, `host/publish` to the bus) and the backend of the REST API (`DaemonApi`).

use super::bus::Bus;
use super::config::Config;
use super::supervisor::Supervised;
use crate::connection::Connection;
use crate::peer::Peer;
use crate::schema::lock;
use crate::services::{BoxFuture, HostServices};
use koi_protocol::calls::{self, CallParams, EventDelivery, PublishParams, PublishResult};
use koi_protocol::{CallContext, ErrorObject, Id, Manifest, codes};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a call waits for a restarting plugin.
const RESTART_WAIT: Duration = Duration::from_secs(5);

/// Where a plugin's questions and progress for one request go: the CLI client that made it.
#[derive(Clone)]
struct Route {
    client: Arc<Peer>,
    client_request: Id,
}

/// The running daemon.
pub struct Daemon {
    /// `$KOI_HOME`.
    pub home: PathBuf,
    /// The control socket's path.
    pub socket: PathBuf,
    /// The REST API's address, once bound.
    pub rest_addr: Mutex<Option<std::net::SocketAddr>>,
    /// Settings in force.
    pub config: Arc<Mutex<Config>>,
    /// Every plugin, sorted by moniker.
    pub plugins: Vec<Arc<Supervised>>,
    /// Event routing.
    pub bus: Bus,
    routes: Mutex<HashMap<(String, u64), Route>>,
    started: Instant,
    /// Cancelled to shut everything down.
    pub stop: CancellationToken,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon over `plugins`.
    pub fn new(
        home: PathBuf,
        socket: PathBuf,
        config: Config,
        plugins: Vec<Arc<Supervised>>,
    ) -> Arc<Self> {
        Arc::new(Daemon {
            home,
            socket,
            rest_addr: Mutex::new(None),
            config: Arc::new(Mutex::new(config)),
            plugins,
            bus: Bus::default(),
            routes: Mutex::new(HashMap::new()),
            started: Instant::now(),
            stop: CancellationToken::new(),
        })
    }

    /// The supervised plugin `moniker`.
    pub fn plugin(&self, moniker: &str) -> Result<&Arc<Supervised>, ErrorObject> {
        self.plugins
            .iter()
            .find(|p| p.moniker == moniker)
            .ok_or_else(|| {
                let known: Vec<&str> = self.plugins.iter().map(|p| p.moniker.as_str()).collect();
                ErrorObject::new(
                    codes::METHOD_NOT_FOUND,
                    format!("koi daemon runs no koi-{moniker} plugin"),
                )
                .with_hint(format!(
                    "It runs: {}. Install the plugin and restart the daemon.",
                    known.join(", ")
                ))
            })
    }

    /// The manifest of `moniker` from its latest handshake.
    /// Waits, like a call does, for a plugin that is still starting or restarting.
    pub async fn manifest(&self, moniker: &str) -> Result<Manifest, ErrorObject> {
        let plugin = self.plugin(moniker)?;
        if let Some(manifest) = plugin.manifest() {
            return Ok(manifest);
        }
        Ok(plugin
            .wait_connection(RESTART_WAIT)
            .await?
            .manifest()
            .clone())
    }

    /// Calls a plugin method (or its `status`) for `caller`; waits briefly for a restarting
    /// plugin.
    pub async fn call(
        &self,
        caller: &CallContext,
        moniker: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, ErrorObject> {
        let connection = self.plugin(moniker)?.wait_connection(RESTART_WAIT).await?;
        connection.call_as(caller, method, params).await
    }

    /// Calls a plugin method for a CLI client: the plugin's questions, progress, items and output
    /// for this call are routed to `client`, and `cancel` relays the client's `$/cancel`. The
    /// plugin is told `caller`: the CLI run by the uid the control socket's SO_PEERCRED reports,
    /// and whether that CLI's terminal can answer questions.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_for_client(
        &self,
        moniker: &str,
        method: &str,
        params: Value,
        client: Arc<Peer>,
        client_request: Id,
        caller: CallContext,
        cancel: CancellationToken,
    ) -> Result<Value, ErrorObject> {
        let connection = self.plugin(moniker)?.wait_connection(RESTART_WAIT).await?;
        let route = Route {
            client,
            client_request,
        };
        let registered: Arc<Mutex<Option<(String, u64)>>> = Arc::default();
        let registered_in_call = registered.clone();
        let call = {
            let registered = registered_in_call;
            connection.call_with_id_as(&caller, method, params, move |id| {
                let key = (moniker.to_owned(), id);
                lock(&self.routes).insert(key.clone(), route);
                *lock(&registered) = Some(key);
            })
        };
        tokio::pin!(call);
        let outcome = tokio::select! {
            outcome = &mut call => outcome,
            _ = cancel.cancelled() => {
                if let Some((_, id)) = lock(&registered).clone() {
                    connection.cancel(id);
                }
                call.await
            }
        };
        if let Some(key) = lock(&registered).take() {
            lock(&self.routes).remove(&key);
        }
        outcome
    }

    fn route(&self, from: &Connection, params: &Value) -> Option<(Route, Value)> {
        let Some(Id::Number(id)) = params
            .get("request")
            .and_then(|r| serde_json::from_value::<Id>(r.clone()).ok())
        else {
            return None;
        };
        let route = lock(&self.routes)
            .get(&(from.moniker().to_owned(), id))
            .cloned()?;
        let mut params = params.clone();
        params["request"] = serde_json::to_value(&route.client_request).unwrap_or(Value::Null);
        params["plugin"] = Value::String(from.moniker().to_owned());
        Some((route, params))
    }

    /// Whether every plugin has finished its first start attempt and at least started once.
    pub fn ready(&self) -> bool {
        self.plugins
            .iter()
            .all(|p| p.first_attempt_done() && p.ever_ready())
    }

    /// The live dashboard: `koi status --json` when a daemon runs.
    pub async fn status(&self) -> Value {
        let mut rows = Vec::new();
        for plugin in &self.plugins {
            let mut row = match plugin.connection() {
                Some(connection) => {
                    let version = connection.manifest().version.clone();
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        connection.call(calls::STATUS, Value::Null),
                    )
                    .await
                    {
                        Ok(Ok(report)) => {
                            json!({"name": plugin.moniker, "version": version, "state": report["state"],
                                                 "summary": report["summary"], "details": report["details"]})
                        }
                        Ok(Err(e)) => {
                            json!({"name": plugin.moniker, "version": version, "state": "failed", "summary": e.message})
                        }
                        Err(_) => {
                            json!({"name": plugin.moniker, "version": version, "state": "failed",
                                         "summary": "did not answer `status` within 5 s"})
                        }
                    }
                }
                None => json!({"name": plugin.moniker, "version": null, "state": "failed",
                               "summary": "not running (the daemon is restarting it)"}),
            };
            row["path"] = json!(plugin.path);
            row["supervision"] = plugin.supervision_json();
            rows.push(row);
        }
        json!({
            "koi": {"version": env!("CARGO_PKG_VERSION")},
            "daemon": {
                "pid": std::process::id(),
                "uptime_secs": self.started.elapsed().as_secs(),
                "socket": self.socket,
                "rest": lock(&self.rest_addr).map(|a| a.to_string()),
                "events": self.bus.stats(),
            },
            "plugins": rows,
        })
    }
}

impl HostServices for Daemon {
    fn request(
        &self,
        from: Connection,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        match method.as_str() {
            calls::PROMPT | calls::SECRET | calls::CONFIRM | calls::CHOOSE | calls::KEYSTROKES => {
                match self.route(&from, &params) {
                    Some((route, params)) => {
                        Box::pin(async move { route.client.request(&method, params).await })
                    }
                    None => {
                        let moniker = from.moniker().to_owned();
                        Box::pin(async move {
                            Err(ErrorObject::new(
                            codes::USER_INPUT_UNAVAILABLE,
                            format!("koi-{moniker} asked a question, but no terminal is attached to this call under koi daemon"),
                        )
                        .with_hint("Run the command from a terminal with `koi`, or pass the answer as a flag."))
                        })
                    }
                }
            }
            calls::CALL => {
                let plugins = self.plugins.clone();
                Box::pin(async move {
                    let call: CallParams = serde_json::from_value(params).map_err(|e| {
                        ErrorObject::new(
                            codes::INVALID_PARAMS,
                            format!("invalid host/call params: {e}"),
                        )
                    })?;
                    let target = plugins
                        .iter()
                        .find(|p| p.moniker == call.plugin)
                        .ok_or_else(|| {
                            ErrorObject::new(
                                codes::PLUGIN_UNAVAILABLE,
                                format!(
                                    "koi-{} asked to call `{}.{}`, but koi daemon runs no koi-{}",
                                    from.moniker(),
                                    call.plugin,
                                    call.method,
                                    call.plugin
                                ),
                            )
                            .with_hint(format!(
                                "Install koi-{} and restart the daemon.",
                                call.plugin
                            ))
                        })?;
                    let connection = target.wait_connection(RESTART_WAIT).await?;
                    // The caller is the connection the request came in on, whatever it claims.
                    let caller = CallContext::plugin(from.moniker());
                    connection
                        .call_as(&caller, &call.method, call.params)
                        .await
                        .map_err(|e| {
                            crate::services::blame_caller(
                                from.moniker(),
                                &call.plugin,
                                &call.method,
                                e,
                            )
                        })
                })
            }
            calls::PUBLISH => {
                // Queued now, before the future is returned: the connection calls `request` in
                // frame order, so a publisher's events keep their order in every queue.
                let outcome = serde_json::from_value::<PublishParams>(params)
                    .map_err(|e| {
                        ErrorObject::new(
                            codes::INVALID_PARAMS,
                            format!("invalid host/publish params: {e}"),
                        )
                    })
                    .map(|p| {
                        let delivered = self.bus.publish(&EventDelivery::new(
                            p.topic,
                            from.moniker(),
                            p.payload,
                        ));
                        json!(PublishResult { delivered })
                    });
                Box::pin(async move { outcome })
            }
            other => {
                let message = format!("the host has no method `{other}`");
                Box::pin(async move { Err(ErrorObject::new(codes::METHOD_NOT_FOUND, message)) })
            }
        }
    }

    fn notification(&self, from: &Connection, method: &str, params: Value) {
        match self.route(from, &params) {
            Some((route, params)) => {
                if !route.client.try_notify(method, params) {
                    tracing::debug!(plugin = %from.moniker(), method, "client gone or slow; notification dropped");
                }
            }
            None => {
                tracing::debug!(plugin = %from.moniker(), method, "notification for no attached client")
            }
        }
    }
}

/// The REST API's view of the daemon.
pub struct RestBackend(pub Weak<Daemon>);

impl koi_rest::DaemonApi for RestBackend {
    fn manifests(&self) -> Vec<Manifest> {
        self.0
            .upgrade()
            .map(|d| d.plugins.iter().filter_map(|p| p.manifest()).collect())
            .unwrap_or_default()
    }

    fn status(&self) -> BoxFuture<Value> {
        let daemon = self.0.upgrade();
        Box::pin(async move {
            match daemon {
                Some(d) => d.status().await,
                None => json!({"error": "shutting down"}),
            }
        })
    }

    fn ready(&self) -> bool {
        self.0.upgrade().is_some_and(|d| d.ready())
    }

    fn call(
        &self,
        plugin: String,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        let daemon = self.0.upgrade();
        Box::pin(async move {
            match daemon {
                Some(d) => d.call(&CallContext::rest(), &plugin, &method, params).await,
                None => Err(ErrorObject::new(
                    codes::PLUGIN_UNAVAILABLE,
                    "koi daemon is shutting down",
                )),
            }
        })
    }
}
