//! The listener: [`RestServer::bind`] refuses non-loopback addresses unless allowed, and
//! [`RestServer::run`] serves HTTP/1.1 connections (header read timeout, bounded connection count)
//! until the shutdown token fires, then stops accepting and lets in-flight requests finish for at
//! most [`SHUTDOWN_GRACE`] before dropping them.

use crate::api::DaemonApi;
use crate::config::RestConfig;
use crate::error::RestError;
use crate::routes::Handler;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may take to finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many connections are served at once; further clients wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;

/// The largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Pause after a failed `accept` (for example, out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound, not yet serving, REST API listener.
pub struct RestServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: RestConfig,
}

impl std::fmt::Debug for RestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestServer")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RestServer {
    /// Binds `config.bind`. A non-loopback address is refused unless
    /// `config.allow_non_loopback` is set, in which case a warning is logged.
    pub async fn bind(config: RestConfig) -> Result<RestServer, RestError> {
        let addr = config.bind;
        if !addr.ip().is_loopback() {
            if !config.allow_non_loopback {
                return Err(RestError::NonLoopback { addr });
            }
            tracing::warn!(
                %addr,
                "the koi REST API is listening on a non-loopback address because \
                 `allow_non_loopback` is set; it has no authentication, so anyone who can reach \
                 this address can control the daemon"
            );
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RestError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| RestError::LocalAddr { addr, source })?;
        Ok(RestServer {
            listener,
            local_addr,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `shutdown` is cancelled; then stops accepting, lets in-flight
    /// requests finish (for at most [`SHUTDOWN_GRACE`]) and returns.
    pub async fn run(self, api: Arc<dyn DaemonApi>, shutdown: CancellationToken) {
        let RestServer {
            listener,
            local_addr,
            config,
        } = self;
        let handler = Arc::new(Handler::new(
            api,
            config.max_body_bytes,
            local_addr.ip().is_loopback(),
        ));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(MAX_HEADER_BYTES);
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tracing::info!(addr = %local_addr, "koi REST API listening on http://{local_addr}/");

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            tracing::warn!(%error, "the koi REST API failed to accept a connection; retrying");
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                            }
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let service = service_fn(move |request| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.handle(request).await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "REST API connection ended with an error");
                        }
                    });
                }
            }
        }

        drop(listener);
        let open = connections.len();
        tracing::info!(
            open,
            "koi REST API stopped accepting; letting in-flight requests finish"
        );
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "koi REST API requests still running after {}s of shutdown were dropped",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        connections.shutdown().await;
    }
}
