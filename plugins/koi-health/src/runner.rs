//! Running the checks. Under `koi daemon` the `checks` service gives every check its own task:
//! the first run waits a random part of the interval, and every later wait is the interval ±10 %,
//! so 1000 checks on one interval are spread across it, never all at once. The service reconciles
//! its tasks whenever checks are added or removed. Without the daemon, `status` calls
//! [`run_all_once`]: each check once, at most [`ONE_SHOT_PARALLEL`] at a time.

use crate::book::{Health, Kind, change, lock};
use crate::spec::Check;
use crate::tracker::Outcome;
use koi_sdk::{Context, MethodError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// How often changed check states are saved (and once more at shutdown).
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Checks run at once by a one-shot `status`.
pub const ONE_SHOT_PARALLEL: usize = 64;
/// How long a one-shot `status` waits for its checks; those still running show "not run yet".
pub const ONE_SHOT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// A small xorshift generator seeded from the clock and a name (jitter needs no more).
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and `name`.
    pub fn new(name: &str) -> Self {
        let clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let seed = name.bytes().fold(clock ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut j = Self(seed | 1);
        for _ in 0..4 {
            j.next(); // mix the seed before the first draw
        }
        j
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A fraction in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Applies one run's outcome to the check's track and records a transition if there is one.
pub async fn apply(ctx: &Context, health: &Health, check: &Check, outcome: Outcome) {
    let now = SystemTime::now();
    let changed = {
        let mut tracks = lock(&health.tracks);
        let Some(track) = tracks.get_mut(&check.name) else {
            return; // removed meanwhile
        };
        track
            .observe(outcome, check.fail_after, check.recover_after, now)
            .map(|(old, new)| change(&check.name, Kind::Service, old, new, &track.reason, now))
    };
    if let Some(c) = changed {
        health
            .states_dirty
            .store(true, std::sync::atomic::Ordering::SeqCst);
        health.record(ctx, vec![c]).await;
    }
}

async fn run_forever(ctx: Context, health: Arc<Health>, check: Check) {
    let mut jitter = Jitter::new(&check.name);
    let interval = check.interval();
    let first = interval.mul_f64(jitter.unit());
    tokio::time::sleep(first).await;
    loop {
        let outcome = health.prober.run(&check).await;
        apply(&ctx, &health, &check, outcome).await;
        let wait = interval.mul_f64(0.9 + 0.2 * jitter.unit());
        tokio::time::sleep(wait).await;
    }
}

/// The `checks` service (daemon mode).
pub async fn service(ctx: Context) -> Result<(), MethodError> {
    let health = ctx.state::<Health>()?;
    let mut version = health.version.subscribe();
    let mut running: BTreeMap<String, (Check, tokio::task::AbortHandle)> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut save = tokio::time::interval(SAVE_EVERY);
    loop {
        let wanted = lock(&health.checks).clone();
        running.retain(|name, (check, handle)| {
            let keep = wanted.get(name) == Some(check);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (name, check) in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(name) {
                let handle =
                    tasks.spawn(run_forever(ctx.clone(), Arc::clone(&health), check.clone()));
                slot.insert((check, handle));
            }
        }
        tokio::select! {
            () = ctx.cancelled() => {
                tasks.abort_all();
                health.save_states(&ctx).await;
                return Ok(());
            }
            _ = save.tick() => health.save_states(&ctx).await,
            changed = version.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

/// Runs every check once (one-shot `status` without the daemon).
pub async fn run_all_once(health: &Arc<Health>) {
    let checks: Vec<Check> = lock(&health.checks).values().cloned().collect();
    let permits = Arc::new(tokio::sync::Semaphore::new(ONE_SHOT_PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for check in checks {
        let prober = Arc::clone(&health.prober);
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let outcome = prober.run(&check).await;
            (check, outcome)
        });
    }
    let deadline = tokio::time::Instant::now() + ONE_SHOT_DEADLINE;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok((check, outcome)) = joined {
            // One-shot: the first result settles a pending check either way, so `status`
            // says what it found now (nothing is logged: no state was tracked before).
            let now = SystemTime::now();
            let mut tracks = lock(&health.tracks);
            if let Some(track) = tracks.get_mut(&check.name) {
                track.state = if outcome.ok {
                    crate::tracker::State::Up
                } else {
                    crate::tracker::State::Down
                };
                track.reason = outcome.detail.clone();
                track.since = now;
                track.last = Some((now, outcome));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Jitter;

    #[test]
    fn first_runs_are_spread_across_the_interval() {
        // 1000 checks on one interval: every tenth of it gets some of the first runs.
        let mut deciles = [0u32; 10];
        for i in 0..1000 {
            let u = Jitter::new(&format!("check-{i}")).unit();
            assert!((0.0..1.0).contains(&u));
            deciles[(u * 10.0) as usize] += 1;
        }
        assert!(deciles.iter().all(|&n| n >= 40), "{deciles:?}");
    }
}
