//! [`RestError`]: why the REST API could not start, with the next step for the user.

use std::net::SocketAddr;

/// A failure to start the REST API.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// `bind` is not a loopback address and `allow_non_loopback` is not set.
    #[error(
        "Refusing to serve the koi REST API on {addr}: it is not a loopback address, and the API \
         has no authentication, so anyone who can reach {addr} could control this daemon. Bind \
         127.0.0.1 (the default), or set `allow_non_loopback = true` in the REST API settings if \
         that is really intended."
    )]
    NonLoopback {
        /// The address that was refused.
        addr: SocketAddr,
    },
    /// The listening socket could not be opened.
    #[error(
        "Failed to listen for the koi REST API on {addr}: {source}. Is another `koi daemon` (or \
         another program) using that port? Stop it, or choose another port in the REST API \
         settings."
    )]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket did not report its address.
    #[error(
        "Failed to read the address of the koi REST API listener bound to {addr}: {source}. This \
         is unexpected; restart `koi daemon`, and report it if it happens again."
    )]
    LocalAddr {
        /// The address that was bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}
