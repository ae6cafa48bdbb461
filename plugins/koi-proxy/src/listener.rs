//! The listeners. An HTTPS port accepts TCP, applies the connection caps, completes the TLS
//! handshake within [`TLS_HANDSHAKE`] with the certificate the SNI names ([`SniResolver`]: an
//! unknown or missing SNI gets a TLS alert, never another entry's certificate), then serves
//! HTTP/2 or HTTP/1.1 as ALPN chose, with header caps and timeouts, and closes the connection
//! when it has been idle for [`IDLE`]. A redirect port answers plain HTTP with a 308 to HTTPS for
//! the entries that asked for it, and nothing else.

use crate::body::ProxyBody;
use crate::forward::{Conn, Held, handle, page, request_host};
use crate::limits::{self, Activity, Admitted, TLS_HANDSHAKE, Tracked};
use crate::state::Proxy;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Picks the certificate by SNI among the entries on one port.
#[derive(Debug)]
pub struct SniResolver {
    port: u16,
    proxy: Arc<Proxy>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        self.proxy
            .routes
            .load()
            .tls_entry(self.port, &sni)?
            .cert
            .key()
    }
}

/// The TLS configuration of one port: TLS 1.3 and 1.2, ALPN h2 and http/1.1, resumption, and the
/// server's cipher suite order ([`crate::certs::suite_rank`]) rather than the client's.
pub fn tls_config(proxy: &Arc<Proxy>, port: u16) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(crate::certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("the TLS configuration is refused: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            port,
            proxy: Arc::clone(proxy),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(4096);
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| format!("no TLS session tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// Binds `port` on every address (IPv6 and IPv4 when the machine has IPv6).
pub fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(port, false)?)
}

/// Binds `port` on every address, with `SO_REUSEPORT` when `shared` (one socket per serving
/// thread; the kernel spreads new connections across them). Another program's listener on the
/// port still makes this fail, since it did not set the option.
fn bind_std(port: u16, shared: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let open = |domain: Domain, addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(domain, Type::STREAM, None)?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        if shared {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    open(Domain::IPV6, SocketAddr::from(([0u16; 8], port)))
        .or_else(|_| open(Domain::IPV4, SocketAddr::from(([0, 0, 0, 0], port))))
}

/// The most serving threads one HTTPS port gets (one per core up to this).
const MAX_SERVING_THREADS: usize = 16;

/// Serves HTTPS on `port` from one thread per core, each with a current-thread runtime and its
/// own `SO_REUSEPORT` listener (nginx's worker model): a connection lives on one thread from
/// accept to close, with no work stealing, and never competes with the SDK's protocol runtime.
/// Every socket is bound before any thread starts, so a port in use fails here, with its cause.
/// The threads stop with `stop` (after their connections end, see [`serve_tls`]).
pub fn start_tls(
    proxy: &Arc<Proxy>,
    port: u16,
    config: &Arc<ServerConfig>,
    stop: &tokio_util_stop::Stop,
) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_SERVING_THREADS);
    let sockets = (0..threads)
        .map(|_| bind_std(port, true))
        .collect::<std::io::Result<Vec<_>>>()?;
    for (i, socket) in sockets.into_iter().enumerate() {
        let (proxy, config, stop) = (Arc::clone(proxy), Arc::clone(config), stop.clone());
        std::thread::Builder::new()
            .name(format!("proxy-{port}-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(port, "a serving thread has no runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(l) => serve_tls(proxy, port, l, config, stop).await,
                        Err(e) => tracing::warn!(port, "a serving thread cannot listen: {e}"),
                    }
                });
            })?;
    }
    Ok(())
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Accepts HTTPS connections on `listener` until `stop`, then closes the listener and waits
/// (up to [`DRAIN`]) for the connections it accepted to end, so a serving thread's runtime is
/// not dropped under them.
pub async fn serve_tls(
    proxy: Arc<Proxy>,
    port: u16,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    stop: tokio_util_stop::Stop,
) {
    let acceptor = TlsAcceptor::from(config);
    let live = Arc::new(());
    loop {
        let accepted = tokio::select! {
            () = stop.stopped() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a moment instead of spinning.
                tracing::warn!(port, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = canonical(peer.ip());
        let Some(admitted) = proxy.caps.admit(ip) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (proxy, acceptor, live) = (Arc::clone(&proxy), acceptor.clone(), Arc::clone(&live));
        tokio::spawn(async move {
            tls_connection(proxy, port, acceptor, tcp, ip, admitted).await;
            drop(live);
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a stopped HTTPS listener waits for its connections: an idle one closes within
/// [`limits::IDLE`] and the 10 s grace after it.
const DRAIN: Duration = Duration::from_secs(limits::IDLE.as_secs() + 15);

/// Serves `$conn` (a hyper connection future) until it ends or stays idle too long.
macro_rules! watched {
    ($conn:expr, $activity:expr, $drive:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                () = $drive => {}
                () = limits::idle_past(&$activity, limits::IDLE), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep(Duration::from_secs(10)), if closing => break,
            }
        }
    }};
}

/// Polls the connection's own backend connections (never completes).
async fn drive(conn: &Conn) {
    match &conn.local {
        Some(local) => local.drive().await,
        None => std::future::pending().await,
    }
}

async fn tls_connection(
    proxy: Arc<Proxy>,
    port: u16,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    ip: IpAddr,
    admitted: Admitted,
) {
    let tls = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    let (h2, sni_entry) = {
        let (_, session) = tls.get_ref();
        let entry = session.server_name().and_then(|s| {
            proxy
                .routes
                .load()
                .tls_entry(port, &s.to_ascii_lowercase())
                .cloned()
        });
        (session.alpn_protocol() == Some(b"h2"), entry)
    };
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(tls, Arc::clone(&activity)));
    let conn = Arc::new(Conn {
        port,
        peer: ip,
        proxy,
        activity: Arc::clone(&activity),
        h2,
        local: (!h2).then(crate::local::LocalBackends::default),
        requests: std::sync::atomic::AtomicU64::new(0),
        named: std::sync::OnceLock::new(),
        held: std::sync::Mutex::new(Some(Held::new(admitted, sni_entry))),
    });
    let driving = Arc::clone(&conn);
    let svc = service_fn(move |req| handle(Arc::clone(&conn), req));
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(limits::MAX_H2_HEADER_LIST)
            .max_concurrent_streams(limits::MAX_H2_STREAMS)
            .keep_alive_interval(limits::H2_PING.0)
            .keep_alive_timeout(limits::H2_PING.1);
        watched!(
            b.serve_connection(io, svc),
            activity,
            std::future::pending::<()>()
        );
    } else {
        let b = http1_builder();
        watched!(
            b.serve_connection(io, svc).with_upgrades(),
            activity,
            drive(&driving)
        );
    }
}

/// An HTTP/1.1 connection builder with the slowloris limits (header read timeout, buffer and
/// header-count caps), for HTTPS and redirect connections alike.
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ)
        .max_buf_size(limits::READ_BUFFER)
        .max_headers(limits::MAX_HEADERS);
    b
}

/// Accepts plain-HTTP connections on a redirect port until `stop`.
pub async fn serve_redirect(
    proxy: Arc<Proxy>,
    port: u16,
    listener: TcpListener,
    stop: tokio_util_stop::Stop,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.stopped() => return,
            r = listener.accept() => r,
        };
        let Ok((tcp, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(admitted) = proxy.caps.admit(canonical(peer.ip())) else {
            continue;
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let activity = Activity::new();
            let io = TokioIo::new(Tracked::new(tcp, Arc::clone(&activity)));
            let svc = service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(redirect(&proxy, port, &req)) }
            });
            let b = http1_builder();
            watched!(
                b.serve_connection(io, svc),
                activity,
                std::future::pending::<()>()
            );
            drop(admitted);
        });
    }
}

fn redirect<B>(proxy: &Proxy, port: u16, req: &Request<B>) -> Response<ProxyBody> {
    let routes = proxy.routes.load();
    let target = request_host(req).and_then(|(host, _)| {
        let entry = routes.redirect.get(&port)?.get(&host)?;
        Some((host, entry.entry.listen_port))
    });
    let Some((host, https_port)) = target else {
        return page(
            StatusCode::MISDIRECTED_REQUEST,
            "This proxy redirects no such host on this port.",
        );
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = page(
        StatusCode::PERMANENT_REDIRECT,
        &format!("Moved to {location}"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A stop signal for listeners (a cancellation token without another dependency).
pub mod tokio_util_stop {
    use tokio::sync::watch;

    /// The listener side of a stop signal.
    #[derive(Debug, Clone)]
    pub struct Stop(watch::Receiver<bool>);

    /// The owner side: dropping it or calling `stop` stops the listener.
    #[derive(Debug)]
    pub struct StopHandle(watch::Sender<bool>);

    /// A connected pair.
    pub fn pair() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(false);
        (StopHandle(tx), Stop(rx))
    }

    impl Stop {
        /// Resolves when stopped (or the handle is gone).
        pub async fn stopped(&self) {
            let mut rx = self.0.clone();
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    impl Drop for StopHandle {
        fn drop(&mut self) {
            let _ = self.0.send(true);
        }
    }
}
