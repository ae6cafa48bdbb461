//! The server: for each listen address, one UDP socket read by W threads, each in a tight
//! blocking loop (the kernel wakes one waiting thread per packet, so the load spreads evenly
//! whatever the clients' ports — SO_REUSEPORT's hash could give one thread all of a few busy
//! clients — and no other process can bind the same port beside us), and one TCP listener on the
//! tokio runtime. Every query reads the current [`Snapshot`] and [`Acl`] through
//! arc-swap, so nothing on the hot path takes a lock. Forwards are handed to the runtime and
//! answered from there. All sockets are bound before anything starts, so a bind failure is
//! reported whole, with the exact fix for port 53 without privilege.

use crate::config::Config;
use crate::fast;
use crate::forward;
use crate::ratelimit::Limiter;
use crate::snapshot::Snapshot;
use crate::stats::Counters;
use crate::wire::{self, Acl, Verdict};
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Most TCP connections at once.
pub const MAX_TCP: usize = 256;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the server reads on every query.
#[derive(Debug)]
pub struct Shared {
    /// The answer table.
    pub snapshot: ArcSwap<Snapshot>,
    /// Who may ask.
    pub acl: ArcSwap<Acl>,
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Its configuration.
    pub config: Config,
    /// Per-writer counters (workers, TCP, forwarding).
    pub counters: Vec<Arc<Counters>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Cancels the TCP listeners and every open TCP connection.
    tcp_stop: CancellationToken,
}

/// The error for a failed bind, with the fix that works in that state.
pub fn bind_error(addr: SocketAddr, proto: &str, e: &std::io::Error) -> String {
    let exe =
        std::env::current_exe().map_or_else(|_| "koi-dns".to_owned(), |p| p.display().to_string());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot listen on {addr} ({proto}): permission denied — ports below 1024 need the \
             CAP_NET_BIND_SERVICE capability. Fix it one of three ways: \
             (1) `sudo setcap cap_net_bind_service=+ep {exe}`; \
             (2) under systemd, keep `AmbientCapabilities=CAP_NET_BIND_SERVICE` in the [Service] \
             section of dist/koi.service (`systemctl edit koi`); \
             (3) listen on a high port: `koi dns serve --listen {}:5300`",
            addr.ip()
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr} ({proto}): the address is in use — another DNS server \
             (systemd-resolved, dnsmasq, a running `koi dns serve`) holds it. Stop it, or pick \
             another address with `--listen`"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "cannot listen on {addr} ({proto}): no interface has that address. Pick one of this \
             machine's addresses (`ip -brief addr`) with `--listen`, or leave --listen out"
        ),
        _ => format!(
            "cannot listen on {addr} ({proto}): {e}. Check the address, or pick another \
             with `--listen`"
        ),
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(Duration::from_millis(250)))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds every socket, then starts the workers. Call from a blocking context or a runtime
/// thread: binding is quick.
pub fn start(
    config: Config,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
) -> Result<Running, String> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in &config.listen {
        let first = udp_socket(*addr).map_err(|e| bind_error(*addr, "UDP", &e))?;
        // A port of 0 picks one: TCP uses what UDP got.
        let addr = first
            .local_addr()
            .map_err(|e| bind_error(*addr, "UDP", &e))?;
        let first = Arc::new(first);
        for _ in 0..config.workers {
            udp.push((addr, first.clone()));
        }
        tcp.push((
            addr,
            tcp_listener(addr).map_err(|e| bind_error(addr, "TCP", &e))?,
        ));
    }
    let mut config = config;
    config.listen = tcp.iter().map(|(a, _)| *a).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let fwd_counters = Arc::new(Counters::default());
    let mut counters = vec![fwd_counters.clone()];
    let mut threads = Vec::new();
    let workers = u32::try_from(config.workers).unwrap_or(1).max(1);
    for (k, (addr, sock)) in udp.into_iter().enumerate() {
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let w = Worker {
            sock,
            shared: shared.clone(),
            stop: stop.clone(),
            counters: c,
            fwd: fwd_counters.clone(),
            in_flight: in_flight.clone(),
            rt: rt.clone(),
            upstreams: Arc::from(config.upstreams.clone()),
            timeout: config.upstream_timeout,
            // The workers share the clients evenly, so each holds its share of the limit.
            limiter: Limiter::new(
                config.rate.div_ceil(workers),
                config.burst.div_ceil(workers),
            ),
        };
        let t = std::thread::Builder::new()
            .name(format!("dns-udp-{k}"))
            .spawn(move || w.run())
            .map_err(|e| {
                format!(
                    "cannot start a DNS worker thread for {addr}: {e}. Free some memory \
                     or lower --workers"
                )
            })?;
        threads.push(t);
    }
    let tcp_counters = Arc::new(Counters::default());
    counters.push(tcp_counters.clone());
    let limiter = Arc::new(Mutex::new(Limiter::new(config.rate, config.burst)));
    let conns = Arc::new(AtomicUsize::new(0));
    let tcp_stop = CancellationToken::new();
    for (addr, l) in tcp {
        let _guard = rt.enter();
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| bind_error(addr, "TCP", &e))?;
        let t = TcpCtx {
            shared: shared.clone(),
            counters: tcp_counters.clone(),
            fwd: fwd_counters.clone(),
            limiter: limiter.clone(),
            upstreams: Arc::from(config.upstreams.clone()),
            timeout: config.upstream_timeout,
        };
        let (conns, cancel) = (conns.clone(), tcp_stop.clone());
        rt.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = accept_loop(l, Arc::new(t), conns, cancel.clone()) => {}
            }
        });
    }
    Ok(Running {
        config,
        counters,
        stop,
        threads,
        tcp_stop,
    })
}

impl Running {
    /// Stops every worker and listener and waits for the threads (at most a read timeout).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tcp_stop.cancel();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Worker {
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    fwd: Arc<Counters>,
    in_flight: Arc<AtomicUsize>,
    rt: tokio::runtime::Handle,
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
    limiter: Limiter,
}

impl Worker {
    fn run(mut self) {
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(1500);
        let mut rotation = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            let (n, peer) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // ICMP errors from earlier sends land here on some systems; keep serving.
                    tracing::debug!("dns udp receive: {e}");
                    continue;
                }
            };
            let t0 = Instant::now();
            rotation = rotation.wrapping_add(1);
            let packet = &buf[..n];
            let snap = self.shared.snapshot.load();
            let acl = self.shared.acl.load();
            let ip = peer.ip();
            let allowed = acl.allowed(ip);
            let over = allowed && !acl.exempt(ip) && self.limiter.limited(ip, t0);
            let fast = (allowed && !over)
                .then(|| fast::answer(&snap.fast, packet, rotation, &mut out))
                .flatten();
            let verdict = match fast {
                Some(source) => Verdict::Local(source),
                None => wire::handle(&snap, &acl, packet, ip, true, rotation, || over, &mut out),
            };
            tracing::debug!(client = %peer, ?verdict, "dns query");
            if verdict == Verdict::Forward {
                self.forward(packet, peer);
            } else if !out.is_empty() {
                let _ = self.sock.send_to(&out, peer);
            }
            self.counters.record(verdict, t0.elapsed());
        }
    }

    fn forward(&self, packet: &[u8], peer: SocketAddr) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= forward::MAX_IN_FLIGHT
            || self.upstreams.is_empty()
        {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = self.sock.send_to(&wire::servfail(packet), peer);
            self.fwd.forwarded(false, Duration::ZERO);
            return;
        }
        let (sock, ups, limit, fwd, flight) = (
            self.sock.clone(),
            self.upstreams.clone(),
            self.timeout,
            self.fwd.clone(),
            self.in_flight.clone(),
        );
        let packet = packet.to_vec();
        self.rt.spawn(async move {
            let t0 = Instant::now();
            let reply = forward::relay(&packet, &ups, limit, false).await;
            let ok = reply.is_some();
            let bytes = reply.unwrap_or_else(|| wire::servfail(&packet));
            let _ = sock.send_to(&bytes, peer);
            fwd.forwarded(ok, t0.elapsed());
            flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct TcpCtx {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    fwd: Arc<Counters>,
    limiter: Arc<Mutex<Limiter>>,
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
}

async fn accept_loop(
    l: tokio::net::TcpListener,
    ctx: Arc<TcpCtx>,
    conns: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if conns.fetch_add(1, Ordering::Relaxed) >= MAX_TCP {
            conns.fetch_sub(1, Ordering::Relaxed);
            continue; // dropped: too many connections
        }
        let (ctx, conns, cancel) = (ctx.clone(), conns.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = serve_tcp(stream, peer, &ctx) => {}
            }
            conns.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_tcp(
    mut s: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: &TcpCtx,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut rotation = 0usize;
    loop {
        let Ok(n) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return Ok(());
        };
        let mut packet = vec![0u8; usize::from(n?)];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut packet))
            .await
            .map_err(std::io::Error::other)??;
        let t0 = Instant::now();
        rotation = rotation.wrapping_add(1);
        let verdict = {
            let snap = ctx.shared.snapshot.load();
            let acl = ctx.shared.acl.load();
            let limited = || {
                ctx.limiter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .limited(peer.ip(), t0)
            };
            wire::handle(
                &snap,
                &acl,
                &packet,
                peer.ip(),
                false,
                rotation,
                limited,
                &mut out,
            )
        };
        ctx.counters.record(verdict, t0.elapsed());
        if verdict == Verdict::Forward {
            let reply = forward::relay(&packet, &ctx.upstreams, ctx.timeout, true).await;
            ctx.fwd.forwarded(reply.is_some(), t0.elapsed());
            out = reply.unwrap_or_else(|| wire::servfail(&packet));
        }
        if out.is_empty() {
            return Ok(());
        }
        let len = u16::try_from(out.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&out);
        s.write_all(&framed).await?;
    }
}
