//! How the REST API listens: [`RestConfig`] and its defaults (loopback only, port 7240, 1 MiB
//! bodies, 10 s to send the request headers).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The default port of the daemon's REST API.
pub const DEFAULT_PORT: u16 = 7240;

/// The default cap on a request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The default time a client has to send its request line and headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the REST API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestConfig {
    /// Where to listen. Must be a loopback address unless `allow_non_loopback` is set.
    pub bind: SocketAddr,
    /// Allows `bind` to be a non-loopback address. The API has no authentication: anyone who can
    /// reach the address can control the daemon.
    pub allow_non_loopback: bool,
    /// The largest request body accepted; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// How long a client may take to send its request headers before the connection is closed.
    pub header_read_timeout: Duration,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            allow_non_loopback: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}
