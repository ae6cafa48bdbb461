//! The CLI's side of `koi daemon`: connect to the control socket (a missing or stale socket means
//! "no daemon", and the CLI runs plugins itself), then relay the daemon's callbacks — the plugin's
//! questions, progress, items and output — to this terminal.

use crate::daemon::control::methods;
use crate::paths::KoiHome;
use crate::peer::{Peer, PeerHandler};
use crate::services::BoxFuture;
use crate::ui::Terminal;
use koi_protocol::calls;
use koi_protocol::{ErrorObject, Id, codes};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers the daemon's callbacks at this terminal.
struct TerminalHandler {
    terminal: Arc<Terminal>,
    refusal: Mutex<Option<String>>,
}

impl PeerHandler for TerminalHandler {
    fn request(
        &self,
        _peer: Arc<Peer>,
        _id: Id,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>> {
        let terminal = self.terminal.clone();
        Box::pin(async move {
            let plugin = params
                .get("plugin")
                .and_then(Value::as_str)
                .unwrap_or("plugin")
                .to_owned();
            match method.as_str() {
                calls::PROMPT
                | calls::SECRET
                | calls::CONFIRM
                | calls::CHOOSE
                | calls::KEYSTROKES => terminal.answer(&plugin, method, params).await,
                other => Err(ErrorObject::new(
                    codes::METHOD_NOT_FOUND,
                    format!("the CLI has no method `{other}`"),
                )),
            }
        })
    }

    fn notification(&self, _peer: &Arc<Peer>, method: &str, params: Value) {
        if method == REFUSED {
            let message = params
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned();
            *crate::schema::lock(&self.refusal) = Some(message);
        } else {
            self.terminal.relay(method, params);
        }
    }
}

/// The notification a daemon sends before closing a connection it refuses.
pub const REFUSED: &str = "daemon/refused";

/// Connects to the daemon of `home` and checks it answers `daemon/hello`; returns `None` when none
/// answers (no socket, a stale one, or a refusal — which is reported on stderr before falling
/// back).
pub async fn connect(home: &KoiHome, terminal: Arc<Terminal>) -> Option<Arc<Peer>> {
    let path = crate::daemon::socket_path(home);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            if path.exists() {
                tracing::debug!(socket = %path.display(), "no daemon answers ({e}); running plugins directly");
            }
            return None;
        }
    };
    let (read, write) = stream.into_split();
    let handler = Arc::new(TerminalHandler {
        terminal,
        refusal: Mutex::new(None),
    });
    let peer = Peer::start(
        read,
        write,
        handler.clone(),
        koi_protocol::DEFAULT_MAX_FRAME_BYTES as usize,
    );
    match tokio::time::timeout(
        Duration::from_secs(2),
        peer.request(methods::HELLO, Value::Null),
    )
    .await
    {
        Ok(Ok(_)) => Some(peer),
        _ => {
            if let Some(refusal) = crate::schema::lock(&handler.refusal).take() {
                eprintln!("warning: {refusal}; running without the daemon.");
            }
            None
        }
    }
}
