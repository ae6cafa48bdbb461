//! Counters and latency for `koi dns status`: one [`Counters`] per UDP worker (plus one for TCP
//! and one for forwarding), written with relaxed atomics (uncontended: one UDP worker
//! each), summed on demand.
//! Latency goes into a log-linear histogram (4 buckets per power of two, in microseconds), from
//! which p50 and p99 are read.

use crate::wire::Verdict;
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 128;

/// One writer's counters.
#[derive(Debug)]
pub struct Counters {
    queries: AtomicU64,
    local: AtomicU64,
    forwarded: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
    malformed: AtomicU64,
    servfail: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            queries: AtomicU64::new(0),
            local: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            nxdomain: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            servfail: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

fn bucket(us: u64) -> usize {
    if us < 4 {
        return usize::try_from(us).unwrap_or(0);
    }
    let pow = 63 - u64::from(us.leading_zeros());
    let sub = (us >> (pow - 2)) & 3;
    usize::try_from(pow * 4 + sub)
        .unwrap_or(BUCKETS - 1)
        .min(BUCKETS - 1)
}

fn bucket_floor(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let pow = (i / 4) as u64;
    let sub = (i % 4) as u64;
    (1u64 << pow) + (sub << (pow - 2))
}

impl Counters {
    /// Records one query's verdict and how long it took.
    pub fn record(&self, verdict: Verdict, took: Duration) {
        bump(&self.queries);
        match verdict {
            Verdict::Local(_) => bump(&self.local),
            Verdict::NxDomain => bump(&self.nxdomain),
            Verdict::Forward => {}
            Verdict::Refused => bump(&self.refused),
            Verdict::RateLimited => bump(&self.rate_limited),
            Verdict::Malformed | Verdict::Dropped => bump(&self.malformed),
        }
        if !matches!(verdict, Verdict::Forward | Verdict::Dropped) {
            self.latency(took);
        }
    }

    /// Records a forwarded query's outcome.
    pub fn forwarded(&self, ok: bool, took: Duration) {
        bump(&self.forwarded);
        if !ok {
            bump(&self.servfail);
        }
        self.latency(took);
    }

    fn latency(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        bump(&self.hist[bucket(us)]);
    }
}

/// The sums `status` shows.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct Summary {
    /// Queries received.
    pub queries: u64,
    /// Answered from the table.
    pub local_answers: u64,
    /// Forwarded upstream.
    pub forwarded: u64,
    /// NXDOMAIN in the zone.
    pub nxdomain: u64,
    /// REFUSED (outside the local subnets and allow list).
    pub refused: u64,
    /// REFUSED by the rate limit.
    pub rate_limited: u64,
    /// FORMERR/NOTIMP/BADVERS answered or packets dropped.
    pub malformed: u64,
    /// SERVFAIL after an upstream failed.
    pub servfail: u64,
    /// Median latency, microseconds (bucket floor).
    pub p50_us: u64,
    /// 99th percentile latency, microseconds (bucket floor).
    pub p99_us: u64,
}

/// Sums counters.
pub fn summarize<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Summary {
    let mut s = Summary::default();
    let mut hist = [0u64; BUCKETS];
    for c in all {
        s.queries += c.queries.load(Relaxed);
        s.local_answers += c.local.load(Relaxed);
        s.forwarded += c.forwarded.load(Relaxed);
        s.nxdomain += c.nxdomain.load(Relaxed);
        s.refused += c.refused.load(Relaxed);
        s.rate_limited += c.rate_limited.load(Relaxed);
        s.malformed += c.malformed.load(Relaxed);
        s.servfail += c.servfail.load(Relaxed);
        for (h, a) in hist.iter_mut().zip(&c.hist) {
            *h += a.load(Relaxed);
        }
    }
    let total: u64 = hist.iter().sum();
    let at = |q: f64| {
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return bucket_floor(i);
            }
        }
        0
    };
    if total > 0 {
        s.p50_us = at(0.5);
        s.p99_us = at(0.99);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_percentiles_land_in_them() {
        let mut last = 0;
        for us in [0, 1, 3, 4, 5, 7, 8, 100, 1000, 1_000_000] {
            let b = bucket(us);
            assert!(b >= last && bucket_floor(b) <= us, "{us}");
            last = b;
        }
        let c = Counters::default();
        for _ in 0..99 {
            c.record(Verdict::Local(None), Duration::from_micros(10));
        }
        c.record(Verdict::Local(None), Duration::from_millis(5));
        let s = summarize([&c]);
        assert_eq!(s.queries, 100);
        assert!(s.p50_us <= 10 && s.p50_us >= 8, "{}", s.p50_us);
    }
}
