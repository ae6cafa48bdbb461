//! Forwarding names outside the zone, without caching: the client's packet is relayed to the
//! upstreams in order (a fresh random ID, a fresh socket, the reply checked against both), each
//! upstream getting an equal share of the timeout, and the reply is relayed back with the
//! client's ID. UDP clients are forwarded over UDP (a truncated upstream reply stays truncated,
//! so the client retries over TCP), TCP clients over TCP. When every upstream fails or the time
//! is up, the caller answers SERVFAIL at once. A bounded number of forwards run at a time.
//!
//! We relay packets rather than resolve with hickory-resolver: the client's question, flags and
//! EDNS reach the upstream untouched and nothing is re-encoded, which keeps the overhead low.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

/// Most forwards in flight; beyond it, SERVFAIL at once.
pub const MAX_IN_FLIGHT: usize = 1024;

fn random_id() -> [u8; 2] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    let v = h.finish();
    [(v >> 8) as u8, v as u8]
}

/// Relays `packet` to the upstreams; `None` when none answered in time.
pub async fn relay(
    packet: &[u8],
    upstreams: &[SocketAddr],
    limit: Duration,
    tcp: bool,
) -> Option<Vec<u8>> {
    if packet.len() < 12 || upstreams.is_empty() {
        return None;
    }
    let end = Instant::now() + limit;
    let n = u32::try_from(upstreams.len()).unwrap_or(1);
    for (k, up) in upstreams.iter().enumerate() {
        let left = u32::try_from(upstreams.len() - k).unwrap_or(1);
        let now = Instant::now();
        if now >= end {
            break;
        }
        let share = (end - now) / left.min(n);
        let deadline = now + share;
        let id = random_id();
        let mut query = packet.to_vec();
        query[..2].copy_from_slice(&id);
        let reply = if tcp {
            timeout_at(deadline, over_tcp(&query, *up)).await
        } else {
            timeout_at(deadline, over_udp(&query, *up, id)).await
        };
        if let Ok(Ok(mut r)) = reply {
            if r.len() >= 12 && r[..2] == id {
                r[..2].copy_from_slice(&packet[..2]);
                return Some(r);
            }
        }
    }
    None
}

async fn over_udp(query: &[u8], up: SocketAddr, id: [u8; 2]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(std::io::Error::other)?;
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 12 && buf[..2] == id && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(query: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
