//! A CLI session: the plugins started for one `koi` command, and the host services they get.
//!
//! The session starts plugins on demand (the one the user named, and any another plugin calls
//! through `host/call`), answers their questions through the [`Terminal`], routes `host/publish`
//! events to the subscribers that are running, and shuts every plugin down at the end.

use crate::connection::{Connection, LaunchOptions};
use crate::discovery::Discovery;
use crate::schema::lock;
use crate::services::{BoxFuture, HostServices, blame_caller};
use crate::ui::Terminal;
use koi_protocol::calls::{self, CallParams, EventDelivery, PublishParams, PublishResult};
use koi_protocol::{CallContext, ErrorObject, codes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The plugins running for one command.
pub struct Session {
    /// What discovery found.
    pub discovery: Discovery,
    /// How plugins are launched.
    pub launch: LaunchOptions,
    /// Where questions and output go.
    pub terminal: Arc<Terminal>,
    live: Mutex<HashMap<String, Connection>>,
    me: Weak<Session>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// A session over `discovery`.
    pub fn new(discovery: Discovery, launch: LaunchOptions, terminal: Arc<Terminal>) -> Arc<Self> {
        Arc::new_cyclic(|me| Session {
            discovery,
            launch,
            terminal,
            live: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    fn services(&self) -> Weak<dyn HostServices> {
        let weak: Weak<dyn HostServices> = self.me.clone();
        weak
    }

    /// The running connection to `moniker`, starting the plugin if needed.
    pub async fn connect(&self, moniker: &str) -> Result<Connection, ErrorObject> {
        if let Some(existing) = lock(&self.live)
            .get(moniker)
            .filter(|c| !c.has_exited())
            .cloned()
        {
            return Ok(existing);
        }
        let candidate = self
            .discovery
            .find(moniker)
            .ok_or_else(|| not_installed(moniker))?;
        let connection =
            Connection::start(moniker, &candidate.path, &self.launch, self.services()).await?;
        let previous = lock(&self.live).insert(moniker.to_owned(), connection.clone());
        if let Some(previous) = previous {
            previous.shutdown().await;
        }
        Ok(connection)
    }

    /// Starts a plugin outside the shared set (for `status`, `plugins list`): the caller shuts it down.
    pub async fn start_private(&self, moniker: &str) -> Result<Connection, ErrorObject> {
        let candidate = self
            .discovery
            .find(moniker)
            .ok_or_else(|| not_installed(moniker))?;
        Connection::start(moniker, &candidate.path, &self.launch, self.services()).await
    }

    /// Shuts down every plugin this session started, concurrently, and reaps them.
    pub async fn shutdown_all(&self) {
        let connections: Vec<Connection> = lock(&self.live).drain().map(|(_, c)| c).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for c in connections {
            tasks.spawn(async move { c.shutdown().await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn call_other(&self, from: Connection, params: Value) -> Result<Value, ErrorObject> {
        let call: CallParams = serde_json::from_value(params).map_err(|e| {
            ErrorObject::new(
                codes::INVALID_PARAMS,
                format!("invalid host/call params: {e}"),
            )
        })?;
        // The caller is the connection the request came in on, whatever it claims.
        let caller = CallContext::plugin(from.moniker());
        let caller_moniker = from.moniker().to_owned();
        let target = if call.plugin == from.moniker() {
            from
        } else {
            if self.discovery.find(&call.plugin).is_none() {
                return Err(ErrorObject::new(
                    codes::PLUGIN_UNAVAILABLE,
                    format!(
                        "koi-{} asked to call `{}.{}`, but no koi-{} plugin is installed",
                        from.moniker(),
                        call.plugin,
                        call.method,
                        call.plugin
                    ),
                )
                .with_hint(format!(
                    "Install koi-{} (see `koi plugins list` for where plugins are looked for).",
                    call.plugin
                )));
            }
            self.connect(&call.plugin).await?
        };
        target
            .call_as(&caller, &call.method, call.params)
            .await
            .map_err(|e| blame_caller(&caller_moniker, &call.plugin, &call.method, e))
    }

    fn publish(&self, from: &Connection, params: Value) -> Result<Value, ErrorObject> {
        let publish: PublishParams = serde_json::from_value(params).map_err(|e| {
            ErrorObject::new(
                codes::INVALID_PARAMS,
                format!("invalid host/publish params: {e}"),
            )
        })?;
        let delivery = EventDelivery::new(publish.topic, from.moniker(), publish.payload);
        let body = serde_json::to_value(&delivery).unwrap_or(Value::Null);
        let mut delivered = 0;
        for connection in lock(&self.live).values() {
            if connection.moniker() != from.moniker()
                && connection.manifest().subscribes_to(&delivery.topic)
            {
                connection.notify(calls::EVENT, body.clone());
                delivered += 1;
            }
        }
        tracing::debug!(topic = %delivery.topic, source = %delivery.source, delivered, "event published");
        Ok(serde_json::json!(PublishResult { delivered }))
    }
}

impl HostServices for Session {
    fn request(
        &self,
        from: Connection,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        if method == calls::PUBLISH {
            // Done now, not in the future: the connection calls this in frame order, and a
            // publisher's events must reach subscribers in the order it sent them.
            let outcome = self.publish(&from, params);
            return Box::pin(async move { outcome });
        }
        let Some(me) = self.me.upgrade() else {
            return Box::pin(async {
                Err(ErrorObject::new(
                    codes::PLUGIN_UNAVAILABLE,
                    "the host is shutting down",
                ))
            });
        };
        Box::pin(async move {
            match method.as_str() {
                calls::PROMPT
                | calls::SECRET
                | calls::CONFIRM
                | calls::CHOOSE
                | calls::KEYSTROKES => me.terminal.answer(from.moniker(), method, params).await,
                calls::CALL => me.call_other(from, params).await,
                other => Err(ErrorObject::new(
                    codes::METHOD_NOT_FOUND,
                    format!("the host has no method `{other}`"),
                )
                .with_hint("docs/protocol.md lists the host methods.")),
            }
        })
    }

    fn notification(&self, from: &Connection, method: &str, params: Value) {
        if !self.terminal.relay(method, params) {
            tracing::debug!(plugin = %from.moniker(), method, "ignored an unknown or invalid notification");
        }
    }
}

fn not_installed(moniker: &str) -> ErrorObject {
    ErrorObject::new(
        codes::PLUGIN_UNAVAILABLE,
        format!("no koi-{moniker} plugin is installed"),
    )
    .with_hint("`koi plugins list` shows the plugins found and where koi looks for them.")
}
