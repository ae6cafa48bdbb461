//! Backend connections shared by the client connections of one serving thread.
//!
//! A client connection's first request, every HTTP/2 request, and an HTTP/1.1 connection's
//! requests past its own [`crate::local`] connections go through this pool. Each serving thread
//! runs a current-thread runtime (see [`crate::listener::start_tls`]), so a backend connection
//! made here is driven by a task on the same thread as every request that uses it: no lock and no
//! wake-up crosses threads (a pool shared by all threads hands a connection made on one thread to
//! a request on another, whose every exchange then wakes the first thread). The idle list is
//! bounded ([`MAX_IDLE`] per thread); a connection idle past [`IDLE_FOR`] or closed by the backend
//! is dropped when the list is next searched without a match; one still streaming a response is
//! never handed out (it is not ready), so a long body never holds up another client.

use crate::local::{Attempt, SendError, attempt, dial};
use crate::state::EntryRt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Idle backend connections one serving thread keeps, all backends together.
pub const MAX_IDLE: usize = 256;
/// How long an unused backend connection is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(60);

struct Idle {
    /// The entry's backend base URL.
    key: String,
    sender: SendRequest<Incoming>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// A ready idle connection to `key`, if this thread has one.
fn checkout(key: &str) -> Option<(String, SendRequest<Incoming>)> {
    IDLE.with_borrow_mut(|idle| {
        if let Some(i) = idle
            .iter()
            .position(|i| i.key == key && i.sender.is_ready())
        {
            let i = idle.swap_remove(i);
            return Some((i.key, i.sender));
        }
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_FOR);
        None
    })
}

/// Keeps `sender` for the next request to `key` (dropped, and its connection closed once its
/// response ends, when the list is full).
fn checkin(key: String, sender: SendRequest<Incoming>) {
    IDLE.with_borrow_mut(|idle| {
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                key,
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// Sends `req` (origin form) to `entry`'s backend over one of this thread's connections, or a
/// new one.
pub async fn send(
    entry: &EntryRt,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, SendError> {
    for _ in 0..2 {
        let (key, mut sender, fresh) = match checkout(&entry.base) {
            Some((key, sender)) => (key, sender, false),
            None => (entry.base.clone(), connect(entry).await?, true),
        };
        match attempt(&mut sender, req, fresh).await {
            Attempt::Done(resp) => {
                checkin(key, sender);
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

/// A new backend connection, driven by a task on this thread.
async fn connect(entry: &EntryRt) -> Result<SendRequest<Incoming>, SendError> {
    let (sender, conn) = dial(entry).await.map_err(SendError::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
