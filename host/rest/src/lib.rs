//! `koi-rest`: the local REST API of `koi daemon`. It turns the plugins' manifests into HTTP
//! routes — `GET /v1/<moniker>/<method>?…` for read-only methods, `POST` with a JSON body for
//! mutating ones, `GET /v1/<moniker>/status` for every plugin — checks params against each
//! method's JSON Schema, calls the daemon through [`DaemonApi`], maps JSON-RPC errors to HTTP
//! statuses, redirects legacy paths, and serves an OpenAPI 3.1 document of all of it. It knows no
//! capability and does not depend on the host crate: the daemon hands it a [`DaemonApi`].
//!
//! ```no_run
//! # async fn example(api: std::sync::Arc<dyn koi_rest::DaemonApi>) -> Result<(), koi_rest::RestError> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let server = koi_rest::RestServer::bind(koi_rest::RestConfig::default()).await?;
//! println!("REST API on http://{}/", server.local_addr());
//! server.run(api, shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - [`api`]: the [`DaemonApi`] trait the daemon implements.
//! - [`config`]: [`RestConfig`] and its defaults (127.0.0.1:7240, 1 MiB bodies, 10 s headers).
//! - [`error`]: [`RestError`], why the API could not start.
//! - `server`: [`RestServer`]: binding, the accept loop, graceful shutdown.
//! - `routes`: routing one request; body limits; `Host` checking; legacy redirects.
//! - `query`: query strings to typed params, following the params schema.
//! - `validate`: params checked against the method's schema, failures naming the field.
//! - `schema`: `koi_protocol::schema_read`, the schema reader shared with the CLI.
//! - `reply`: JSON responses and the JSON-RPC error → HTTP status mapping ([`http_status_for`]).
//! - `openapi`: the OpenAPI 3.1 document ([`openapi()`]).
//!
//! Security properties: the API listens on loopback unless `allow_non_loopback` is set; a request
//! without exactly one `Host` header is answered 400; when on loopback it answers only requests
//! whose `Host` (and absolute-form target, if any) is a loopback name (so a web page cannot reach it
//! by DNS rebinding); it sends no CORS headers and answers no preflight, and mutating methods
//! require `content-type: application/json`, so a web page cannot post to it either.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
mod openapi;
mod query;
mod reply;
mod routes;
use koi_protocol::schema_read as schema;
mod server;
mod validate;

pub use api::DaemonApi;
pub use config::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, RestConfig};
pub use error::RestError;
pub use openapi::openapi;
pub use reply::http_status_for;
pub use routes::BODY_READ_TIMEOUT;
pub use server::{MAX_CONNECTIONS, RestServer, SHUTDOWN_GRACE};
