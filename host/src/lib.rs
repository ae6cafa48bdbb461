//! The Koi host: the `koi` command. It discovers `koi-<moniker>` plugin executables, launches them
//! as child processes speaking JSON-RPC over stdio, checks every message against the schemas the
//! plugins declare, and turns their manifests into a command line. It knows no capability itself.
//!
//! Modules:
//! - [`app`]: command-line entry, dispatch, exit codes ([`errors`]: JSON errors, missing plugins,
//!   argument violations in the user's words, a daemon gone mid-command); [`call`]: where a verb
//!   runs (a plugin or `koi daemon`) and the call with Ctrl-C as `$/cancel`; [`builtins`]: status, version, plugins, completions.
//! - [`discovery`]: finding plugins; [`cache`]: the manifest cache; [`catalog`]: manifests for all plugins.
//! - [`connection`]: one plugin process and its JSON-RPC connection (handshake, timeouts, shutdown).
//! - [`session`] + [`services`]: the plugins running for one command and what the host does for them.
//! - [`schema`]: runtime JSON-Schema checking; [`clispec`]: manifests → `clap`, arguments → params.
//! - [`ui`]: questions, progress, shown output; [`keystrokes`]: raw-mode keystroke collection;
//!   [`render`]: human-readable results ([`labels`]: field labels from schemas, [`table`]: tables
//!   fitted to the terminal); [`sanitize`]: control characters escaped before printing.
//! - [`trace`]: redacting protocol traces; [`logging`]: the host log and plugin stderr relay.
//! - [`daemon`]: `koi daemon` (supervision, event bus, control socket, REST, systemd);
//!   [`forward`]: the CLI's client for it; [`peer`]: JSON-RPC over the control socket.
//! - [`paths`] resolves `KOI_HOME`.

#![forbid(unsafe_code)]

pub mod app;
pub mod builtins;
pub mod cache;
pub mod call;
pub mod catalog;
pub mod clispec;
pub mod connection;
pub mod daemon;
pub mod discovery;
pub mod errors;
pub mod forward;
pub mod keystrokes;
pub mod labels;
pub mod logging;
pub mod paths;
pub mod peer;
pub mod render;
pub mod sanitize;
pub mod schema;
pub mod services;
pub mod session;
pub mod table;
pub mod trace;
pub mod ui;
pub mod view;
