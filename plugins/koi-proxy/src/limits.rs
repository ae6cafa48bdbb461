//! Slowloris and flood defences: the limits every listener applies ([`TLS_HANDSHAKE`],
//! [`HEADER_READ`], [`IDLE`], header caps), connection caps per client address and in total
//! ([`Caps`]), and the I/O wrapper ([`Tracked`]) that records the last byte moved so an idle
//! keep-alive or HTTP/2 connection with no request in flight, or an idle WebSocket tunnel, is
//! closed ([`idle_past`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Time for a TLS handshake to complete.
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Time for a request's headers to arrive (HTTP/1.1), from their first byte.
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// A connection with no request in flight and no byte moved for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// A spliced tunnel (WebSocket) with no byte moved either way for this long is closed.
pub const TUNNEL_IDLE: Duration = Duration::from_secs(600);
/// Request header bytes (names and values) the proxy forwards; more get 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// The HTTP/1.1 read buffer, a hard bound on a request head before it is even parsed.
pub const READ_BUFFER: usize = 128 * 1024;
/// Headers per request (more get 431).
pub const MAX_HEADERS: usize = 100;
/// HTTP/2 header list size (a hard bound; [`MAX_HEAD_BYTES`] applies below it).
pub const MAX_H2_HEADER_LIST: u32 = 128 * 1024;
/// HTTP/2 streams per connection.
pub const MAX_H2_STREAMS: u32 = 256;
/// HTTP/2 keep-alive ping interval and the time its answer may take.
pub const H2_PING: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));
/// Connections open at once from one client address.
pub const PER_CLIENT: usize = 256;
/// Connections open at once in total (all listeners).
pub const TOTAL: usize = 4096;

/// A number of seconds from the environment variable `var` (at least 1), honoured in debug builds
/// only, so a test can see a retry or a timeout without waiting minutes; release builds ignore it.
pub fn debug_secs(var: &str) -> Option<Duration> {
    let secs = cfg!(debug_assertions)
        .then(|| std::env::var(var).ok())
        .flatten()?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs.max(1)))
}

/// [`TUNNEL_IDLE`], or `KOI_PROXY_TUNNEL_IDLE_SECS` in debug builds ([`debug_secs`]).
pub fn tunnel_idle() -> Duration {
    debug_secs("KOI_PROXY_TUNNEL_IDLE_SECS").unwrap_or(TUNNEL_IDLE)
}

/// Resolves once `activity` has had no request in flight and no byte moved for `limit`.
pub async fn idle_past(activity: &Activity, limit: Duration) {
    loop {
        let idle = activity.idle_for();
        if idle >= limit {
            return;
        }
        tokio::time::sleep((limit - idle).max(Duration::from_secs(1))).await;
    }
}

/// Open connections, per client and in total.
#[derive(Debug, Default)]
pub struct Caps {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused by a cap.
    pub refused: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Caps {
    /// Admits a connection from `ip`, or refuses it when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut per = crate::state::lock(&self.per_client);
        let n = per.get(&ip).copied().unwrap_or(0);
        if n >= PER_CLIENT || self.total.load(Ordering::Acquire) >= TOTAL {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        per.insert(ip, n + 1);
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(Admitted {
            caps: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per = crate::state::lock(&self.caps.per_client);
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's clock epoch.
pub fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection's activity: the last byte moved and the requests in flight.
#[derive(Debug, Default)]
pub struct Activity {
    last: AtomicU64,
    inflight: AtomicUsize,
}

impl Activity {
    /// A fresh record, active now.
    pub fn new() -> Arc<Self> {
        let a = Arc::new(Self::default());
        a.touch();
        a
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    /// How long nothing has moved, or zero while a request is in flight.
    pub fn idle_for(&self) -> Duration {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    /// Marks a request in flight until the guard drops (with the response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// I/O that records activity on every byte moved.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_refuse_and_free_their_place() {
        let caps = Arc::new(Caps::default());
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..PER_CLIENT).map(|_| caps.admit(ip).unwrap()).collect();
        assert!(caps.admit(ip).is_none());
        assert!(caps.admit("10.0.0.3".parse().unwrap()).is_some());
        drop(held);
        assert_eq!(caps.open(), 0);
        assert!(caps.admit(ip).is_some());
    }
}
