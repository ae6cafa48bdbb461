//! The plugin's ends of the protocol pipes. When stdin and stdout are pipes (as `koi` starts every
//! plugin) they are read and written through tokio's reactor (`tokio::net::unix::pipe`), so a
//! frame costs one `read` or `write` on the thread that wants it. Anything else — a terminal, a
//! file, a socket, as some tests use — falls back to `tokio::io::stdin()`/`stdout()`, which do each
//! read and write on tokio's blocking thread pool (a thread hand-off per frame, which is what made
//! the pipe path worth having: docs/benchmarks.md, "SDK (issue 15)").
//!
//! The pipes are used through duplicates of fd 0 and 1 (`F_DUPFD_CLOEXEC`), so the process's
//! own descriptors stay open and valid. A duplicate shares its open file description with the
//! original, so putting it in non-blocking mode also makes fd 0 and fd 1 non-blocking — but only
//! this process's ends: the host holds the other end of each pipe through its own open file
//! description, which is unaffected. Nothing else in a plugin may read stdin or write stdout (they
//! carry the protocol), and a child process must not inherit them for the same reason.

use rustix::io::fcntl_dupfd_cloexec;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// Where frames from the host are read.
pub(crate) type Input = Pin<Box<dyn AsyncRead + Send>>;
/// Where frames for the host are written.
pub(crate) type Output = Pin<Box<dyn AsyncWrite + Send>>;

/// Stdin as an async reader: the reactor-driven pipe when fd 0 is a pipe open for reading, else
/// tokio's blocking-pool stdin. Must be called inside the runtime.
pub(crate) fn input() -> Input {
    let piped = fcntl_dupfd_cloexec(rustix::stdio::stdin(), 0)
        .map_err(std::io::Error::from)
        .and_then(pipe::Receiver::from_owned_fd);
    match piped {
        Ok(receiver) => Box::pin(receiver),
        Err(e) => {
            tracing::debug!(error = %e, "stdin is not a pipe; reading it on the blocking pool");
            Box::pin(tokio::io::stdin())
        }
    }
}

/// Stdout as an async writer: the reactor-driven pipe when fd 1 is a pipe open for writing, else
/// tokio's blocking-pool stdout. Must be called inside the runtime.
pub(crate) fn output() -> Output {
    let piped = fcntl_dupfd_cloexec(rustix::stdio::stdout(), 0)
        .map_err(std::io::Error::from)
        .and_then(pipe::Sender::from_owned_fd);
    match piped {
        Ok(sender) => Box::pin(sender),
        Err(e) => {
            tracing::debug!(error = %e, "stdout is not a pipe; writing it on the blocking pool");
            Box::pin(tokio::io::stdout())
        }
    }
}
