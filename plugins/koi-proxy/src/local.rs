//! Backend connections owned by one HTTP/1.1 client connection and driven in its own task.
//!
//! An HTTP/1.1 client sends one request at a time, so its connection needs at most one backend
//! connection per entry it talks to. Keeping that connection here, and polling it from the same
//! task that serves the client (`LocalBackends::drive` is a branch of the connection's loop),
//! means a request never hops between tasks or threads and never takes the shared pool's lock:
//! the proxy does what an nginx worker does. A connection's first request, and HTTP/2 clients
//! (many streams at once), use the entry's shared pool instead, so a client that sends one request
//! per connection costs no new backend connection. A request that the backend connection could not even start (it
//! closed while idle) is sent again on a fresh connection.

use crate::backend::resolve;
use crate::state::{EntryRt, lock};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;

/// The most backend connections one client connection keeps (one per entry it used).
const MAX_CONNECTIONS: usize = 8;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection to the backend (refused, unreachable, not loopback, timed out).
    Connect(String),
    /// The backend connection failed during the exchange.
    Exchange(hyper::Error),
    /// This client connection holds its maximum of backend connections: use the pool.
    Full(Box<Request<Incoming>>),
}

/// The backend connections of one client connection.
#[derive(Default)]
pub struct LocalBackends {
    /// Idle senders, keyed by the entry's backend base URL.
    idle: Mutex<Vec<(String, SendRequest<Incoming>)>>,
    /// The connections' futures, polled by [`Self::drive`].
    drivers: Mutex<Vec<Driver>>,
}

impl std::fmt::Debug for LocalBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackends")
            .field("connections", &lock(&self.drivers).len())
            .finish()
    }
}

impl LocalBackends {
    /// Polls every backend connection; never completes (a branch of the connection's loop).
    pub fn drive(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            lock(&self.drivers).retain_mut(|d| d.as_mut().poll(cx).is_pending());
            Poll::Pending
        })
    }

    /// Sends `req` to `entry`'s backend over this connection's own backend connection.
    pub async fn send(
        &self,
        entry: &EntryRt,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let base = entry.base.as_str();
        // `req` is in origin form (`/path?query`), what a connection of our own speaks.
        for _ in 0..2 {
            let reused = {
                let mut idle = lock(&self.idle);
                idle.iter()
                    .position(|(k, _)| k == base)
                    .map(|i| idle.swap_remove(i))
            };
            let (key, mut sender, fresh) = match reused {
                Some((key, s)) => (key, s, false),
                None => match self.connect(entry).await {
                    Ok(s) => (entry.base.clone(), s, true),
                    Err(None) => return Err(SendError::Full(Box::new(req))),
                    Err(Some(why)) => return Err(SendError::Connect(why)),
                },
            };
            match attempt(&mut sender, req, fresh).await {
                Attempt::Done(resp) => {
                    lock(&self.idle).push((key, sender));
                    return Ok(resp);
                }
                Attempt::Retry(unsent) => req = unsent,
                Attempt::Failed(e) => return Err(e),
            }
        }
        Err(SendError::Connect(
            "the backend closed two connections in a row".into(),
        ))
    }

    /// A new backend connection, driven by this connection's loop; `Err(None)` when this client
    /// connection already holds its maximum.
    async fn connect(&self, entry: &EntryRt) -> Result<SendRequest<Incoming>, Option<String>> {
        if lock(&self.drivers).len() >= MAX_CONNECTIONS {
            return Err(None);
        }
        let (sender, conn) = dial(entry).await.map_err(Some)?;
        lock(&self.drivers).push(Box::pin(async move {
            let _ = conn.await;
        }));
        // Make the connection's loop poll the new driver.
        poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::Ready(())
        })
        .await;
        Ok(sender)
    }
}

/// A new HTTP/1.1 connection to `entry`'s backend (resolved, loopback unless the entry allows a
/// remote backend, 5 s to connect, `TCP_NODELAY`): its sender and the connection future, which
/// the caller drives.
pub async fn dial(
    entry: &EntryRt,
) -> Result<
    (
        SendRequest<Incoming>,
        Connection<TokioIo<TcpStream>, Incoming>,
    ),
    String,
> {
    let b = &entry.backend;
    let connect = async {
        let addrs = resolve(&b.host, b.port, entry.entry.backend_remote).await?;
        TcpStream::connect(&addrs[..]).await
    };
    let tcp = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("the connection timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())
}

/// What one try of a request on a backend connection gave.
pub enum Attempt {
    /// The backend's response.
    Done(Response<Incoming>),
    /// Never sent (an idle connection was closing): try once more, on a fresh connection.
    Retry(Request<Incoming>),
    /// The exchange failed (or a fresh connection closed at once).
    Failed(SendError),
}

/// Sends `req` on `sender`, a connection made just now (`fresh`) or an idle one.
pub async fn attempt(
    sender: &mut SendRequest<Incoming>,
    req: Request<Incoming>,
    fresh: bool,
) -> Attempt {
    if sender.ready().await.is_err() {
        if fresh {
            return Attempt::Failed(SendError::Connect(
                "the backend closed the connection".into(),
            ));
        }
        return Attempt::Retry(req);
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Attempt::Done(resp),
        Err(mut e) => match e.take_message() {
            Some(unsent) if !fresh => Attempt::Retry(unsent),
            _ => Attempt::Failed(SendError::Exchange(e.into_error())),
        },
    }
}
