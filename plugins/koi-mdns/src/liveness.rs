//! The re-check of known services (under `koi daemon`, inside the `browse` service). An mDNS cache
//! alone cannot say "host B was last heard at T": a refreshed record changes nothing, so mdns-sd
//! reports nothing, and a host killed without a goodbye stays cached until its records expire
//! (120 s for SRV and addresses, 75 min for PTR). So every [`period`] the engine re-confirms each
//! cached service with mdns-sd's `verify` (RFC 6762 §10.4: a query for its SRV and address
//! records, answered by the host from its own records; no other traffic), with a timeout of
//! 80 % of the period. At the next round, a service still cached answered: its host is published
//! once as `mdns.host.seen` with the time the query went out. A service that did not answer is
//! flushed by mdns-sd, and its `mdns.service.removed` carries `reason: "unanswered"`, so a
//! subscriber can tell it from a goodbye. The period is `KOI_MDNS_RECHECK_SECS` (default 20 s,
//! 3 to 3600: below 3 s, answers fall foul of the responder's one-multicast-per-second rule of RFC
//! 6762 §6 together with mdns-sd's re-sent query, and live hosts look unanswered); at most [`MAX_PER_ROUND`] services are re-checked per round.

use crate::engine::Engine;
use crate::events::{HOST_SEEN, HostSeenPayload, UNANSWERED};
use koi_sdk::Context;
use mdns_sd::ServiceDaemon;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// Environment variable for the period, in seconds.
pub const PERIOD_ENV: &str = "KOI_MDNS_RECHECK_SECS";
/// Default period.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(20);
/// Most services re-checked per round (the rest wait for a later round, oldest first).
pub const MAX_PER_ROUND: usize = 512;

/// The period, from the environment (default 20 s; 3 to 3600 s).
pub fn period() -> Duration {
    period_from(std::env::var(PERIOD_ENV).ok().as_deref())
}

fn period_from(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (3..=3600).contains(s))
        .map_or(DEFAULT_PERIOD, Duration::from_secs)
}

/// One service's outstanding re-check.
struct Outstanding {
    host: String,
    sent: SystemTime,
    deadline: Instant,
}

/// The re-check's memory between rounds.
pub struct Recheck {
    period: Duration,
    outstanding: HashMap<String, Outstanding>,
    cursor: usize,
}

impl Default for Recheck {
    fn default() -> Self {
        Self::new(period())
    }
}

impl Recheck {
    /// A re-check every `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            outstanding: HashMap::new(),
            cursor: 0,
        }
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Why `fullname` was removed: [`UNANSWERED`] when its re-check timed out, `None` otherwise
    /// (a goodbye or expiry). Forgets the outstanding re-check either way.
    pub fn removal_reason(&mut self, fullname: &str) -> Option<&'static str> {
        let o = self.outstanding.remove(fullname)?;
        // mdns-sd flushes at the deadline; a removal well before it is a goodbye.
        (Instant::now() + Duration::from_millis(250) >= o.deadline).then_some(UNANSWERED)
    }

    /// One round: publishes the hosts whose services answered the last round, then re-checks.
    pub async fn round(&mut self, daemon: &ServiceDaemon, engine: &Engine, ctx: &Context) {
        let cached = engine.query(None, None);
        let mut seen: BTreeMap<String, HostSeenPayload> = BTreeMap::new();
        for service in &cached {
            if let Some(o) = self.outstanding.get(&service.fullname)
                && o.host == service.host
            {
                let stamp = crate::cache::timestamp(o.sent);
                let entry = seen
                    .entry(service.host.clone())
                    .or_insert_with(|| HostSeenPayload {
                        host: service.host.clone(),
                        addresses: service.addresses.clone(),
                        services: 0,
                        last_seen: stamp.clone(),
                    });
                entry.services += 1;
                entry.last_seen = entry.last_seen.clone().max(stamp);
            }
        }
        for payload in seen.values() {
            if let Err(e) = ctx.publish(HOST_SEEN, payload).await {
                tracing::debug!(error = %e, "could not publish mdns.host.seen");
            }
        }
        self.outstanding.clear();
        if cached.is_empty() {
            return;
        }
        let timeout = self.period.mul_f64(0.8);
        let now = SystemTime::now();
        let deadline = Instant::now() + timeout;
        let start = self.cursor % cached.len();
        for service in cached
            .iter()
            .cycle()
            .skip(start)
            .take(cached.len().min(MAX_PER_ROUND))
        {
            if let Err(e) = daemon.verify(service.fullname.clone(), timeout) {
                tracing::debug!(error = %e, "re-check of {} not sent", service.fullname);
                continue;
            }
            self.outstanding.insert(
                service.fullname.clone(),
                Outstanding {
                    host: service.host.clone(),
                    sent: now,
                    deadline,
                },
            );
        }
        self.cursor = start + MAX_PER_ROUND.min(cached.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_bounded() {
        assert_eq!(period_from(None), DEFAULT_PERIOD);
        assert_eq!(period_from(Some("3")), Duration::from_secs(3));
        assert_eq!(period_from(Some("1")), DEFAULT_PERIOD);
        assert_eq!(period_from(Some("0")), DEFAULT_PERIOD);
        assert_eq!(period_from(Some("junk")), DEFAULT_PERIOD);
    }

    #[test]
    fn removal_before_the_deadline_is_a_goodbye() {
        let mut r = Recheck::new(Duration::from_secs(20));
        let sent = SystemTime::now();
        r.outstanding.insert(
            "a".into(),
            Outstanding {
                host: "h".into(),
                sent,
                deadline: Instant::now() + Duration::from_secs(10),
            },
        );
        r.outstanding.insert(
            "b".into(),
            Outstanding {
                host: "h".into(),
                sent,
                deadline: Instant::now(),
            },
        );
        assert_eq!(r.removal_reason("a"), None);
        assert_eq!(r.removal_reason("b"), Some(UNANSWERED));
        assert_eq!(r.removal_reason("c"), None);
    }
}
