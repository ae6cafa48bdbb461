//! `HostServices`: what the host does for plugins. A connection hands every request and
//! notification a plugin sends (`host/prompt`, `host/call`, `host/publish`, `$/progress`,
//! `host/show`, `$/item`, ...) to an implementation of this trait, after checking the payloads it
//! can check itself. The one-shot CLI session implements it; the daemon will too.

use crate::connection::Connection;
use koi_protocol::ErrorObject;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Handles what plugins ask of the host.
pub trait HostServices: Send + Sync + 'static {
    /// A plugin → host request; the answer goes back to the plugin.
    fn request(
        &self,
        from: Connection,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>>;
    /// A plugin → host notification.
    fn notification(&self, from: &Connection, method: &str, params: Value);
}
