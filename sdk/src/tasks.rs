//! What runs for a whole session and how shutdown ends it: the declared services, background
//! tasks and shutdown grace ([`Lifecycle`]), their start after the first successful `initialize`,
//! and [`finish`], which cancels every context, waits up to the grace for handlers, services and
//! spawned tasks, and then drops what remains.

use crate::Context;
use crate::runtime::{Definition, Shared};
use crate::services::{Backoff, ServiceDef};
use crate::state::StateBuilder;
use koi_protocol::handshake::RunMode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long in-flight handlers, services and spawned tasks get to finish after `shutdown`, EOF or
/// SIGTERM, unless the plugin declares another grace (`Plugin::shutdown_grace`).
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long, after the grace, aborted tasks get to unwind and the writer to flush what is queued.
pub(crate) const FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// The declarations that shape the plugin's life rather than its calls.
pub(crate) struct Lifecycle {
    pub services: Vec<Arc<ServiceDef>>,
    pub backoff: Backoff,
    pub grace: Duration,
    /// Taken (and run) once, at the first successful `initialize`.
    pub states: Mutex<Vec<StateBuilder>>,
}

/// Starts what runs for the whole session, right after the first successful `initialize`:
/// `Plugin::background` tasks in every mode, services under `koi daemon`.
pub(crate) fn start_lifecycle(def: &Definition, shared: &Arc<Shared>, root: &CancellationToken) {
    let context = || Context {
        shared: shared.clone(),
        request: None,
        cancel: root.child_token(),
        call: None,
    };
    let background: Arc<str> = Arc::from("background");
    for task in &def.background {
        let fut = task(context());
        shared.spawn_tracked(&background, fut);
    }
    if shared.session().mode == RunMode::Daemon {
        for service in &def.lifecycle.services {
            let fut = crate::services::supervise(
                service.clone(),
                def.lifecycle.backoff,
                shared.board.clone(),
                context(),
            );
            shared.spawn_tracked(&service.name, fut);
        }
    }
}

/// Cancels every context and gives handlers, services and spawned tasks `grace` to finish; then
/// drops (aborts) what remains and gives that a moment to unwind. Idempotent.
pub(crate) async fn finish(root: &CancellationToken, shared: &Shared, grace: Duration) {
    root.cancel();
    shared.tasks.close();
    if tokio::time::timeout(grace, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "tasks still running {} ms after shutdown began; stopping them",
            grace.as_millis()
        );
        shared.kill.cancel();
        let _ = tokio::time::timeout(FLUSH_LIMIT, shared.tasks.wait()).await;
    }
}
