//! Write Koi plugins in Rust.
//!
//! A Koi plugin is an executable named `koi-<moniker>` that the `koi` host starts and talks to with
//! JSON-RPC 2.0 over stdin/stdout (see `docs/protocol.md`). This SDK does the protocol for you:
//! framing with a size limit, the `initialize` handshake and manifest, JSON Schemas generated from
//! your types, concurrent requests, cancellation, calls back into the host (prompts, secrets,
//! progress, tables, QR codes, other plugins' methods, events), structured logging to stderr, and
//! exiting when the host goes away. You write typed async functions.
//!
//! # A complete plugin
//!
//! ```no_run
//! use koi_sdk::{Context, Method, MethodError, NoParams, Plugin};
//! use koi_sdk::protocol::calls::{HealthState, StatusReport};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! /// Params of `koi hello greet NAME [--shout]`.
//! #[derive(Deserialize, JsonSchema)]
//! struct GreetParams {
//!     /// Who to greet.
//!     name: String,
//!     /// Greet loudly.
//!     #[serde(default)]
//!     shout: bool,
//! }
//!
//! /// What `greet` returns (and what `--json` prints).
//! #[derive(Serialize, JsonSchema)]
//! struct Greeting {
//!     /// The greeting.
//!     greeting: String,
//! }
//!
//! async fn greet(_ctx: Context, p: GreetParams) -> Result<Greeting, MethodError> {
//!     if p.name.trim().is_empty() {
//!         return Err(MethodError::new("the name is empty").hint("Pass a name: `koi hello greet Ada`."));
//!     }
//!     let greeting = format!("Hello, {}!", p.name);
//!     Ok(Greeting { greeting: if p.shout { greeting.to_uppercase() } else { greeting } })
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Plugin::new("hello", env!("CARGO_PKG_VERSION"), "Says hello")
//!         .method(
//!             Method::new("greet", "Greet someone by name", greet)
//!                 .positional(["name"])
//!                 .short("shout", 's')
//!                 .example("koi hello greet Ada --shout"),
//!         )
//!         .status(|_ctx: Context| async {
//!             StatusReport { state: HealthState::Ok, summary: "ready to greet".into(), details: Default::default() }
//!         })
//!         .run()
//! }
//! ```
//!
//! Build it as `koi-hello`, put it on `PATH` (or in `$KOI_HOME/plugins`, or next to `koi`), and:
//!
//! ```text
//! $ koi hello greet Ada --shout
//! HELLO, ADA!
//! $ koi hello greet Ada --json
//! {"greeting":"Hello, Ada!"}
//! ```
//!
//! `sdk/examples/koi-hello.rs` is a runnable plugin that also uses progress, cancellation, prompts,
//! tables, QR codes, calls to other plugins and events.
//!
//! # Modules
//! - [`plugin`]: the `Plugin` builder and `run`.
//! - [`method`]: `Method`, typed handlers and their manifest entries.
//! - [`context`]: `Context`, the handler's view of the host.
//! - [`error`] holds `MethodError`.
//! - [`events`]: typed, ordered subscriptions (`Plugin::on`), `Delivery`, `Event`, `Gap`.
//! - [`state`]: `StateInit`, what `Plugin::state` builders see.
//! - `runtime`, `lifecycle`, `logging` (private): serving, process hygiene, stderr logs;
//!   `services` (supervision and status), `outbound` (the bounded outbound queue), `watchdog`
//!   (debug-build stall reports).

#![forbid(unsafe_code)]

pub mod context;
pub mod error;
pub mod events;
mod lifecycle;
mod logging;
pub mod method;
mod outbound;
pub mod plugin;
mod post;
mod runtime;
mod services;
pub mod state;
mod stdio;
mod tasks;
mod watchdog;

pub use context::Context;
pub use error::MethodError;
pub use events::{Delivery, Event, Gap};
pub use koi_protocol as protocol;
/// Durable files: atomic writes, durable appends, private directories, versioned JSON files
/// (the `koi-store` crate; see docs/plugins.md, "Durable store").
pub use koi_store as store;
pub use method::{Method, NoParams};
pub use plugin::Plugin;
pub use state::StateInit;
