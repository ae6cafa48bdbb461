//! Per-client token buckets: `rate` queries per second sustained, `burst` at once. Each of the W
//! UDP workers owns one limiter with 1/W of the rate and burst (no lock on the hot path); the
//! workers read one socket and the kernel hands packets to whichever waits, so a client's
//! queries spread over them and the sum holds it near the configured limit. The TCP path shares
//! one limiter with the whole limit. The table is bounded: when it is full, idle clients (buckets refilled) are forgotten
//! first, and if all are busy the table starts over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most clients remembered per limiter.
pub const MAX_CLIENTS: usize = 65_536;

/// A limiter.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    /// `rate` 0 turns limiting off.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `ip`; `true` when the client is over its limit.
    pub fn limited(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, last)| {
                *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_CLIENTS {
                self.buckets.clear();
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate)
            .min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_burst_is_limited_and_another_is_not() {
        let mut l = Limiter::new(10, 5);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        assert!((0..5).all(|_| !l.limited(a, now)));
        assert!(l.limited(a, now));
        assert!(!l.limited(b, now));
        assert!(!l.limited(a, now + std::time::Duration::from_millis(200)));
        assert!(!Limiter::new(0, 1).limited(a, now));
    }
}
