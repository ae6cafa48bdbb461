//! A JSON-RPC peer over any byte stream: the control socket between the CLI and `koi daemon`
//! speaks the same newline-delimited JSON-RPC 2.0 as plugins (docs/protocol.md §3–4), in both
//! directions. The daemon calls back into the CLI for the user's terminal (`host/prompt`,
//! `$/progress`, `$/item`, `host/show`), and the CLI sends `$/cancel` on Ctrl-C.
//!
//! Plugin connections (`connection.rs`) add process supervision, schema checks and stray-output
//! policy on top of the same framing; this type is the plain peer.

use crate::schema::lock;
use crate::services::BoxFuture;
use koi_protocol::frame::{FrameError, read_frame};
use koi_protocol::{ErrorObject, Id, Message, codes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Frames that may wait for the other side to read.
const OUTBOUND_FRAMES: usize = 1024;

/// What a peer does with what the other side sends.
pub trait PeerHandler: Send + Sync + 'static {
    /// A request from the other side (`id` is the other side's id for it); the answer is sent back.
    fn request(
        &self,
        peer: Arc<Peer>,
        id: Id,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>>;
    /// A notification from the other side.
    fn notification(&self, peer: &Arc<Peer>, method: &str, params: Value);
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, ErrorObject>>>>;

/// One end of a JSON-RPC stream.
pub struct Peer {
    out: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    pending: Pending,
    next_id: AtomicU64,
    closed: CancellationToken,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

impl Peer {
    /// Starts reading `reader` and writing `writer`; `handler` answers the other side.
    pub fn start<R, W>(
        reader: R,
        writer: W,
        handler: Arc<dyn PeerHandler>,
        max_frame: usize,
    ) -> Arc<Peer>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let peer = Arc::new(Peer {
            out: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
        });
        tokio::spawn(koi_protocol::frame::write_frames(writer, rx));
        tokio::spawn(read_loop(peer.clone(), reader, handler, max_frame));
        peer
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, ErrorObject> {
        self.request_with_id(method, params, |_| {}).await
    }

    /// Like [`Self::request`], reporting the id as soon as it is assigned.
    pub async fn request_with_id(
        &self,
        method: &str,
        params: Value,
        on_id: impl FnOnce(u64),
    ) -> Result<Value, ErrorObject> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        on_id(id);
        if !self
            .send(&Message::Request {
                id: Id::Number(id),
                method: method.to_owned(),
                params,
            })
            .await
        {
            lock(&self.pending).remove(&id);
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Sends a notification (dropped if the other side is gone).
    pub async fn notify(&self, method: &str, params: Value) {
        self.send(&Message::Notification {
            method: method.to_owned(),
            params,
        })
        .await;
    }

    /// Sends a notification without waiting; false if the queue is full or the peer gone.
    pub fn try_notify(&self, method: &str, params: Value) -> bool {
        let body = Message::Notification {
            method: method.to_owned(),
            params,
        }
        .to_bytes();
        lock(&self.out)
            .as_ref()
            .is_some_and(|s| s.try_send(body).is_ok())
    }

    async fn send(&self, message: &Message) -> bool {
        let sender = lock(&self.out).clone();
        match sender {
            Some(sender) => sender.send(message.to_bytes()).await.is_ok(),
            None => false,
        }
    }

    /// Resolves when the other side has gone away.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Whether the other side has gone away.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Stops writing (the other side sees end-of-file once queued frames are sent).
    pub fn close(&self) {
        lock(&self.out).take();
    }
}

fn gone() -> ErrorObject {
    ErrorObject::new(
        codes::PLUGIN_UNAVAILABLE,
        "the other end of the koi control socket closed the connection",
    )
}

async fn read_loop<R: AsyncRead + Unpin>(
    peer: Arc<Peer>,
    reader: R,
    handler: Arc<dyn PeerHandler>,
    max_frame: usize,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut reader, &mut buf, max_frame).await {
            Ok(true) => {}
            Ok(false) | Err(FrameError::Io(_)) => break,
            Err(FrameError::TooLarge { size, limit }) => {
                tracing::warn!(size, limit, "control socket: frame over the limit; closing");
                break;
            }
        }
        match Message::parse(&buf) {
            Ok(Message::Response {
                id: Id::Number(id),
                outcome,
            }) => {
                if let Some(tx) = lock(&peer.pending).remove(&id) {
                    let _ = tx.send(outcome);
                }
            }
            Ok(Message::Response { .. }) => {}
            Ok(Message::Request { id, method, params }) => {
                let handler = handler.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let outcome = handler
                        .request(peer.clone(), id.clone(), method, params)
                        .await;
                    peer.send(&Message::Response { id, outcome }).await;
                });
            }
            Ok(Message::Notification { method, params }) => {
                handler.notification(&peer, &method, params)
            }
            Err(e) => tracing::warn!("control socket: ignored a malformed frame: {e}"),
        }
    }
    peer.closed.cancel();
    let drained: Vec<_> = lock(&peer.pending).drain().map(|(_, tx)| tx).collect();
    for tx in drained {
        let _ = tx.send(Err(gone()));
    }
}
