//! The fake daemon: two fake plugins behind [`koi_rest::DaemonApi`], and [`TestServer`], which
//! serves it on 127.0.0.1:<ephemeral> from its own runtime thread.
//!
//! - `fake`: `scan` (read-only; integer, boolean, array, `$ref` enum and nullable params; echoes
//!   them), `set` (mutating), `enroll` (mutating, interactive: always -32010); legacy routes
//!   `/scan` → `scan` and `/fake` → `status`.
//! - `other-plug`: `fail` (answers with the error code it is given), `wait` (blocks until the test
//!   releases it), `echo` (mutating, returns its params); legacy route `/echo` → `echo`.

use koi_protocol::{ErrorObject, LegacyRoute, Manifest, MethodSpec};
use koi_rest::{DaemonApi, RestConfig, RestServer};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Fake {
    ready: AtomicBool,
    /// Signalled when a `wait` call has started.
    wait_started: Mutex<Option<mpsc::Sender<()>>>,
    /// Releases `wait` calls.
    pub release: Arc<Notify>,
}

impl Fake {
    pub fn new() -> Arc<Fake> {
        Arc::new(Fake {
            ready: AtomicBool::new(true),
            wait_started: Mutex::new(None),
            release: Arc::new(Notify::new()),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// A receiver told each time a `wait` call starts.
    pub fn watch_waits(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        *self.wait_started.lock().expect("lock") = Some(tx);
        rx
    }
}

fn method(name: &str, mutating: bool, params: Value, result: Value) -> MethodSpec {
    MethodSpec {
        name: name.into(),
        summary: format!("The fake {name} method"),
        description: None,
        params,
        result,
        cli: None,
        interactive: false,
        long_running: false,
        mutating,
        stream_item: None,
        timeout_ms: None,
        local_only: false,
    }
}

pub fn manifests() -> Vec<Manifest> {
    let scan_params = json!({
        "type": "object",
        "additionalProperties": false,
        "$defs": {"Mode": {"type": "string", "enum": ["fast", "slow"]}},
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many"},
            "verbose": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 5},
            "ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
            "mode": {"$ref": "#/$defs/Mode"},
            "limit": {"type": ["integer", "null"], "minimum": 0}
        },
        "required": ["count"]
    });
    let scan_result = json!({
        "type": "object",
        "required": ["params", "items"],
        "properties": {
            "params": {"type": "object"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}
        },
        "$defs": {"Item": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}}
    });
    let set_params = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
        },
        "required": ["name", "port"]
    });
    let set_result = json!({
        "type": "object",
        "required": ["ok", "name"],
        "properties": {"ok": {"const": true}, "name": {"type": "string"}}
    });
    let mut enroll = method(
        "enroll",
        true,
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
        json!({"type": "object"}),
    );
    enroll.interactive = true;
    let mut sign = method(
        "sign",
        true,
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
        json!({"type": "object"}),
    );
    sign.local_only = true;
    let fake = Manifest {
        name: "fake".into(),
        version: "0.0.1".into(),
        summary: "A fake plugin".into(),
        description: None,
        methods: vec![
            method("scan", false, scan_params, scan_result),
            method("set", true, set_params, set_result),
            enroll,
            sign,
        ],
        publishes: vec![],
        subscribes: vec![],
        aliases: vec![],
        legacy_routes: vec![
            LegacyRoute {
                path: "/scan".into(),
                method: "scan".into(),
            },
            LegacyRoute {
                path: "/fake".into(),
                method: "status".into(),
            },
        ],
        shutdown_grace_ms: None,
    };
    let other = Manifest {
        name: "other-plug".into(),
        version: "0.0.1".into(),
        summary: "Another fake plugin".into(),
        description: None,
        methods: vec![
            method(
                "fail",
                false,
                json!({
                    "type": "object",
                    "properties": {"code": {"type": "integer"}, "payload": {"type": "string"}},
                    "required": ["code"]
                }),
                json!({"type": "null"}),
            ),
            method(
                "wait",
                false,
                json!({"type": "object"}),
                json!({"type": "object"}),
            ),
            method(
                "echo",
                true,
                json!({"type": "object"}),
                json!({"type": "object"}),
            ),
        ],
        publishes: vec![],
        subscribes: vec![],
        aliases: vec![],
        legacy_routes: vec![LegacyRoute {
            path: "/echo".into(),
            method: "echo".into(),
        }],
        shutdown_grace_ms: None,
    };
    vec![fake, other]
}

/// What the fake daemon reports for `GET /v1/status`.
pub fn daemon_status() -> Value {
    json!({"plugins": {"fake": {"state": "ok"}, "other-plug": {"state": "ok"}}})
}

impl DaemonApi for Fake {
    fn manifests(&self) -> Vec<Manifest> {
        manifests()
    }

    fn status(&self) -> Pin<Box<dyn Future<Output = Value> + Send>> {
        Box::pin(async { daemon_status() })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn call(
        &self,
        plugin: String,
        method: String,
        params: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ErrorObject>> + Send>> {
        let wait = (method == "wait").then(|| {
            let started = self.wait_started.lock().expect("lock").clone();
            (started, self.release.clone())
        });
        Box::pin(answer(plugin, method, params, wait))
    }
}

async fn answer(
    plugin: String,
    method: String,
    params: Value,
    wait: Option<(Option<mpsc::Sender<()>>, Arc<Notify>)>,
) -> Result<Value, ErrorObject> {
    if let Some((started, release)) = wait {
        let released = release.notified();
        if let Some(started) = started {
            let _ = started.send(());
        }
        released.await;
        return Ok(json!({"waited": true}));
    }
    match (plugin.as_str(), method.as_str()) {
        (_, "status") => Ok(json!({
            "state": "ok",
            "summary": format!("{plugin} is fine"),
            "details": {"params": params}
        })),
        ("fake", "scan") => {
            let count = params["count"].as_u64().unwrap_or(0);
            let items: Vec<Value> = (1..=count.min(3)).map(|n| json!({"n": n})).collect();
            Ok(json!({"params": params, "items": items}))
        }
        ("fake", "set") => Ok(json!({"ok": true, "name": params["name"]})),
        ("fake", "enroll") => Err(ErrorObject::new(
            koi_protocol::codes::USER_INPUT_UNAVAILABLE,
            "koi-fake needs a person to answer a prompt, and this request has no terminal",
        )
        .with_hint("Run `koi fake enroll` in a terminal.")),
        ("other-plug", "fail") => {
            let mut error = ErrorObject::new(params["code"].as_i64().unwrap_or(1), "fake failure");
            if let Some(payload) = params.get("payload") {
                error.set_data_field("payload", payload.clone());
            }
            Err(error.with_hint("Nothing to do: the fake always fails."))
        }
        ("other-plug", "echo") => Ok(params),
        _ => Err(ErrorObject::new(
            koi_protocol::codes::METHOD_NOT_FOUND,
            format!("koi-{plugin} has no method `{method}`"),
        )),
    }
}

/// The fake daemon served on 127.0.0.1 from a runtime thread of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub fake: Arc<Fake>,
    pub shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with_config(RestConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..RestConfig::default()
        })
    }

    pub fn with_config(config: RestConfig) -> TestServer {
        let fake = Fake::new();
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let api: Arc<dyn DaemonApi> = fake.clone();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = RestServer::bind(config).await.expect("bind 127.0.0.1:0");
                tx.send(server.local_addr()).expect("send address");
                server.run(api, token).await;
            });
        });
        let addr = rx.recv().expect("server address");
        TestServer {
            addr,
            fake,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels the server and waits for `run` to return.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
