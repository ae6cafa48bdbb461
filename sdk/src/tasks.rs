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
    if shared.kill.is_cancelled() {
        // Already finished (a `shutdown` request, then end of input): the grace is spent.
        return;
    }
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
    shared.kill.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn context(shared: &Arc<Shared>, root: &CancellationToken) -> Context {
        Context {
            shared: shared.clone(),
            request: None,
            cancel: root.child_token(),
            call: None,
        }
    }

    /// Sets its flag when dropped: a task stopped after the grace drops its future.
    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_spawned_task_within_the_grace_and_drops_one_that_overruns() {
        let (out, _inbox) = outbound::channel(outbound::BUDGET);
        let shared = Arc::new(Shared::new(out, "t"));
        let root = CancellationToken::new();
        let finished = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let ctx = context(&shared, &root);
        let drains = {
            let (ctx, finished) = (ctx.clone(), finished.clone());
            async move {
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.store(true, Ordering::SeqCst);
            }
        };
        let overruns = {
            let (ctx, dropped) = (ctx.clone(), dropped.clone());
            async move {
                let _guard = SetOnDrop(dropped);
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        };
        ctx.spawn(drains);
        ctx.spawn(overruns);
        // The grace covers the 300 ms drain, not the hour.
        tokio::time::timeout(
            Duration::from_secs(30),
            finish(&root, &shared, Duration::from_secs(2)),
        )
        .await
        .expect("finish returns after the grace");
        assert!(finished.load(Ordering::SeqCst), "the drain was cut short");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the overrunning task kept running"
        );
    }
}
