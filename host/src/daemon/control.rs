//! The control socket `$KOI_HOME/run/koi.sock`: the CLI's way into a running daemon. The directory
//! is 0700 and the socket 0600; every connection's peer uid is read with SO_PEERCRED and must be
//! the daemon's own, so other users are refused even if permissions were loosened. Each client
//! speaks JSON-RPC (see `peer.rs`) with these methods:
//!
//! | Method | Params | Result |
//! |---|---|---|
//! | `daemon/hello` | — | `{pid, version, protocol}` |
//! | `daemon/manifest` | `{plugin}` | the plugin's manifest |
//! | `daemon/call` | `{plugin, method, params, interactive}` | the method's result; meanwhile the daemon sends the client the plugin's `host/prompt`… requests and `$/progress`, `$/item`, `host/show` notifications. `interactive` (default false): the client's terminal can answer them; it becomes the call context's `interactive` |
//! | `daemon/status` | — | the live `koi status --json` |
//!
//! and the notification `$/cancel {request}` (Ctrl-C at the CLI). A client that disconnects has
//! its calls cancelled.

use super::core::Daemon;
use crate::peer::{Peer, PeerHandler};
use crate::schema::lock;
use crate::services::BoxFuture;
use koi_protocol::{CallContext, ErrorObject, Id, PROTOCOL_VERSION, codes};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Control-socket method names.
pub mod methods {
    /// Liveness and identity.
    pub const HELLO: &str = "daemon/hello";
    /// A plugin's manifest.
    pub const MANIFEST: &str = "daemon/manifest";
    /// Call a plugin method.
    pub const CALL: &str = "daemon/call";
    /// The dashboard.
    pub const STATUS: &str = "daemon/status";
}

/// Binds the socket with the documented permissions (any old socket file was left by a daemon that
/// no longer holds the lock, so it is stale and replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        crate::paths::create_private_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until `stop`.
pub async fn serve(listener: UnixListener, daemon: Weak<Daemon>, stop: CancellationToken) {
    let me = rustix::process::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid != Some(me) {
            tracing::warn!(peer_uid = ?uid, "refused a control-socket client from another user");
            let refusal = json!({"jsonrpc": "2.0", "method": crate::forward::REFUSED, "params": {
                "message": format!("koi daemon refuses uid {}: it only answers its own user (uid {me})", uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())),
                "hint": "Run koi as the user that runs the daemon, or use --no-daemon."}});
            let mut stream = stream;
            let _ = stream.write_all(format!("{refusal}\n").as_bytes()).await;
            continue;
        }
        let (read, write) = stream.into_split();
        let session = Arc::new(ClientSession {
            daemon: daemon.clone(),
            uid,
            calls: Arc::default(),
        });
        let peer = Peer::start(
            read,
            write,
            session.clone(),
            koi_protocol::DEFAULT_MAX_FRAME_BYTES as usize,
        );
        tokio::spawn(async move {
            peer.closed().await;
            for token in lock(&session.calls).drain().map(|(_, t)| t) {
                token.cancel();
            }
        });
    }
}

#[derive(Deserialize)]
struct CallRequest {
    plugin: String,
    method: String,
    #[serde(default)]
    params: Value,
    /// Whether the client's terminal can answer the plugin's questions. Only the client can know;
    /// it is the same user (SO_PEERCRED), and the questions go back to that client alone.
    #[serde(default)]
    interactive: bool,
}

#[derive(Deserialize)]
struct PluginRequest {
    plugin: String,
}

/// One connected CLI.
struct ClientSession {
    daemon: Weak<Daemon>,
    /// The client's uid from SO_PEERCRED, told to plugins as the caller's.
    uid: Option<u32>,
    calls: Arc<Mutex<HashMap<Id, CancellationToken>>>,
}

fn bad_params(e: serde_json::Error) -> ErrorObject {
    ErrorObject::new(
        codes::INVALID_PARAMS,
        format!("invalid control-socket params: {e}"),
    )
}

impl PeerHandler for ClientSession {
    fn request(
        &self,
        peer: Arc<Peer>,
        id: Id,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        let Some(daemon) = self.daemon.upgrade() else {
            return Box::pin(async {
                Err(ErrorObject::new(
                    codes::PLUGIN_UNAVAILABLE,
                    "koi daemon is shutting down",
                ))
            });
        };
        match method.as_str() {
            methods::HELLO => Box::pin(async move {
                Ok(
                    json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "protocol": PROTOCOL_VERSION}),
                )
            }),
            methods::MANIFEST => Box::pin(async move {
                let p: PluginRequest = serde_json::from_value(params).map_err(bad_params)?;
                daemon
                    .manifest(&p.plugin)
                    .await
                    .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            }),
            methods::STATUS => Box::pin(async move { Ok(daemon.status().await) }),
            methods::CALL => {
                let token = CancellationToken::new();
                lock(&self.calls).insert(id.clone(), token.clone());
                let calls = self.calls.clone();
                let uid = self.uid;
                Box::pin(async move {
                    let call: CallRequest = serde_json::from_value(params).map_err(bad_params)?;
                    let outcome = daemon
                        .call_for_client(
                            &call.plugin,
                            &call.method,
                            call.params,
                            peer,
                            id.clone(),
                            CallContext::cli(uid, call.interactive),
                            token,
                        )
                        .await;
                    lock(&calls).remove(&id);
                    outcome
                })
            }
            other => {
                let message = format!("the control socket has no method `{other}`");
                Box::pin(async move { Err(ErrorObject::new(codes::METHOD_NOT_FOUND, message)) })
            }
        }
    }

    fn notification(&self, _peer: &Arc<Peer>, method: &str, params: Value) {
        if method == koi_protocol::calls::CANCEL {
            if let Some(request) = params
                .get("request")
                .and_then(|r| serde_json::from_value::<Id>(r.clone()).ok())
            {
                if let Some(token) = lock(&self.calls).remove(&request) {
                    token.cancel();
                }
            }
        }
    }
}
