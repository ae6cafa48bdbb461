//! The debug-build stall watchdog: finds handlers that hold a protocol worker thread.
//!
//! Every handler, status and service future is wrapped with [`watched`]. In debug builds each poll
//! records (name, start) in a per-thread slot; a plain OS thread looks at the slots every 100 ms and
//! logs at warn, once per stall, any poll running over 500 ms, naming the handler and the fix. In
//! release builds [`watched`] returns the future unchanged: no cost at all.

use std::future::Future;

/// Wraps a handler's future so that a poll holding its worker thread too long is reported.
#[cfg(not(debug_assertions))]
pub(crate) fn watched<F: Future>(_name: &std::sync::Arc<str>, fut: F) -> F {
    fut
}

/// Names the plugin in stall reports (`koi-<moniker>`).
#[cfg(not(debug_assertions))]
pub(crate) fn start(_moniker: &str) {}

#[cfg(debug_assertions)]
pub(crate) use imp::{start, watched};

#[cfg(debug_assertions)]
mod imp {
    use super::Future;
    use std::cell::RefCell;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    /// A poll running longer than this is a stall.
    const STALL: Duration = Duration::from_millis(500);
    /// How often the watchdog thread looks.
    const TICK: Duration = Duration::from_millis(100);

    /// The poll running on one thread right now, if any.
    struct Running {
        name: Arc<str>,
        started: Instant,
        reported: bool,
    }

    type Slot = Arc<Mutex<Option<Running>>>;

    struct Registry {
        slots: Mutex<Vec<Slot>>,
        moniker: OnceLock<String>,
    }

    fn registry() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            // The thread lives as long as the process; if it cannot start, stalls go unreported.
            let _ = std::thread::Builder::new()
                .name("koi-sdk-watchdog".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(TICK);
                        scan();
                    }
                });
            Registry {
                slots: Mutex::new(Vec::new()),
                moniker: OnceLock::new(),
            }
        })
    }

    thread_local! {
        static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn this_thread() -> Slot {
        SLOT.with(|slot| {
            slot.borrow_mut()
                .get_or_insert_with(|| {
                    let fresh: Slot = Arc::default();
                    lock(&registry().slots).push(fresh.clone());
                    fresh
                })
                .clone()
        })
    }

    /// Starts the watchdog thread; `moniker` names the plugin in its reports.
    pub(crate) fn start(moniker: &str) {
        let _ = registry().moniker.set(moniker.to_owned());
    }

    fn scan() {
        let now = Instant::now();
        let registry = registry();
        let moniker = registry.moniker.get().map_or("plugin", String::as_str);
        for slot in lock(&registry.slots).iter() {
            if let Some(running) = lock(slot).as_mut() {
                let held = now.saturating_duration_since(running.started);
                if held > STALL && !running.reported {
                    running.reported = true;
                    report(moniker, &running.name, held);
                }
            }
        }
    }

    fn report(moniker: &str, name: &str, held: Duration) {
        tracing::warn!(
            "koi-{moniker}: `{name}` held a protocol worker for {} ms; move blocking work into ctx.blocking / Method::blocking",
            held.as_millis()
        );
        #[cfg(test)]
        lock(&tests::REPORTS).push(name.to_owned());
    }

    /// A future whose polls are timed by the watchdog (boxed: debug builds only).
    pub(crate) struct Watched<F> {
        name: Arc<str>,
        inner: Pin<Box<F>>,
    }

    impl<F: Future> Future for Watched<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            // A task may move between threads: each poll uses the slot of the thread it runs on.
            let slot = this_thread();
            let previous = lock(&slot).replace(Running {
                name: self.name.clone(),
                started: Instant::now(),
                reported: false,
            });
            let outcome = self.inner.as_mut().poll(cx);
            *lock(&slot) = previous;
            outcome
        }
    }

    /// Wraps `fut` so that a poll holding its worker over 500 ms is logged with `name`.
    pub(crate) fn watched<F: Future>(name: &Arc<str>, fut: F) -> Watched<F> {
        Watched {
            name: name.clone(),
            inner: Box::pin(fut),
        }
    }

    #[cfg(test)]
    pub(crate) mod tests {
        use super::*;

        pub(crate) static REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

        fn reported(name: &str) -> bool {
            lock(&REPORTS).iter().any(|n| n == name)
        }

        #[test]
        fn a_handler_that_blocks_its_worker_is_reported_by_name_and_an_awaiting_one_is_not() {
            start("t");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let blocking: Arc<str> = Arc::from("verify_blocks_thread");
                let awaiting: Arc<str> = Arc::from("verify_awaits_timer");
                let a = tokio::spawn(watched(&blocking, async {
                    std::thread::sleep(Duration::from_millis(700));
                }));
                let b = tokio::spawn(watched(&awaiting, async {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }));
                let _ = a.await;
                let _ = b.await;
            });
            // The watchdog looks every 100 ms; give it a few looks past the end of the stall.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !reported("verify_blocks_thread") && Instant::now() < deadline {
                std::thread::sleep(TICK);
            }
            assert!(reported("verify_blocks_thread"));
            assert!(!reported("verify_awaits_timer"));
        }
    }
}
