//! The seam between the REST API and the daemon: [`DaemonApi`]. The daemon implements it; this
//! crate only routes HTTP requests to it, so the REST layer never depends on how plugins are run and
//! never names a capability.

use koi_protocol::{ErrorObject, Manifest};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// What the REST API needs from the daemon.
///
/// Every method is cheap to call repeatedly: the API asks for [`DaemonApi::manifests`] on each
/// request that needs routing, so a plugin that restarts with a new manifest is picked up at once.
pub trait DaemonApi: Send + Sync + 'static {
    /// Manifests of the plugins the daemon runs (for routing, checks and OpenAPI).
    fn manifests(&self) -> Vec<Manifest>;

    /// The body of `GET /v1/status`.
    fn status(&self) -> Pin<Box<dyn Future<Output = Value> + Send>>;

    /// Whether every plugin has completed its handshake.
    fn ready(&self) -> bool;

    /// Calls a plugin method (or `"status"`) through the daemon.
    ///
    /// The REST API has already checked `params` against the method's params schema; the daemon
    /// checks again. An error maps to an HTTP status with [`crate::http_status_for`].
    fn call(
        &self,
        plugin: String,
        method: String,
        params: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ErrorObject>> + Send>>;
}
