//! Killing at random moments, for the crash and host-death tests: a seeded jitter (printed, and
//! replayable with `KOI_TEST_SEED`), a process's children from `/proc`, and `SIGKILL` to a
//! process or to it and its process group.

use std::time::{SystemTime, UNIX_EPOCH};

/// A seeded xorshift sequence; the seed is printed so a failing run can be replayed
/// (`KOI_TEST_SEED`).
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from `KOI_TEST_SEED` or else the clock; prints the seed labelled `what`.
    pub fn new(what: &str) -> Self {
        let seed = std::env::var("KOI_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("{what} seed {seed} (KOI_TEST_SEED={seed} replays it)");
        Jitter(seed)
    }

    /// The next number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// SIGKILL to `pid` and, when it leads one, its process group (the host starts each plugin in
/// its own group, so the group holds the plugin and the tools it runs).
pub fn kill9_with_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}
