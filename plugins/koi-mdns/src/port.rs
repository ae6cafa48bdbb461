//! The UDP port 5353 check. mdns-sd binds `0.0.0.0:5353` and `[::]:5353` with `SO_REUSEADDR` and
//! `SO_REUSEPORT`, so it shares the port with stacks that do the same (Avahi, mDNSResponder) —
//! but when a stack holds the port *without* sharing, mdns-sd only logs the failure and then hears
//! nothing. This check binds the port exactly the way mdns-sd will (no packet is sent) and turns
//! that case into a clear error before the engine starts.

use crate::error::MdnsError;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The mDNS port.
pub const MDNS_PORT: u16 = 5353;

fn try_bind(addr: SocketAddr) -> std::io::Result<()> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())
}

/// Checks that mdns-sd will be able to bind port 5353 (IPv4 always; IPv6 where the kernel has it).
pub fn check() -> Result<(), MdnsError> {
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, MDNS_PORT));
    if let Err(e) = try_bind(v4) {
        return Err(held("IPv4", &e));
    }
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, MDNS_PORT));
    match try_bind(v6) {
        Ok(()) => Ok(()),
        // No IPv6 in this kernel or namespace: mdns-sd runs IPv4-only, which is fine.
        Err(e)
            if e.raw_os_error() == Some(97) || e.kind() == std::io::ErrorKind::AddrNotAvailable =>
        {
            Ok(())
        }
        Err(e) => Err(held("IPv6", &e)),
    }
}

fn held(family: &'static str, e: &std::io::Error) -> MdnsError {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        MdnsError::PortHeld {
            family,
            cause: e.to_string(),
        }
    } else {
        MdnsError::Engine {
            cause: format!("cannot bind UDP port 5353 ({family}): {e}"),
        }
    }
}
