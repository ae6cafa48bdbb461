//! The re-check of known services (under `koi daemon`, inside the `browse` service). An mDNS cache
//! alone cannot say "host B was last heard at T": a refreshed record changes nothing, so mdns-sd
//! reports nothing, and a host killed without a goodbye stays cached until its records expire
//! (120 s for SRV and addresses, 75 min for PTR). Liveness is per HOST, so every [`period`] the
//! engine re-confirms ONE cached service per host with mdns-sd's `verify` (RFC 6762 §10.4: a query
//! for its SRV and address records, answered by the host from its own records; no other
//! traffic), with a timeout of 80 % of the period: N hosts cost N queries per round, whatever
//! their service count. The service asked rotates through the host's services from round to
//! round. At the next round, a verified service still cached answered: its host is published once
//! as `mdns.host.seen` with the time the query went out, and its other services stay cached until
//! their own TTL or goodbye. A verified service that did not answer is flushed by mdns-sd, and its
//! `mdns.service.removed` carries `reason: "unanswered"`, so a subscriber can tell it from a
//! goodbye. The period is `KOI_MDNS_RECHECK_SECS` (default 20 s, 3 to 3600: below 3 s, answers
//! fall foul of the responder's one-multicast-per-second rule of RFC 6762 §6 together with
//! mdns-sd's re-sent query, and live hosts look unanswered); at most [`MAX_PER_ROUND`] hosts are
//! re-checked per round, those heard longest ago (or never) first.

use crate::engine::Engine;
use crate::events::{HOST_SEEN, HostSeenPayload, UNANSWERED};
use koi_mdns_api::ServiceRecord;
use koi_sdk::Context;
use mdns_sd::ServiceDaemon;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// Environment variable for the period, in seconds.
pub const PERIOD_ENV: &str = "KOI_MDNS_RECHECK_SECS";
/// Default period.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(20);
/// Most hosts re-checked per round, one service each (the rest wait for a later round; those
/// heard longest ago go first).
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
    /// When each cached host last answered (hosts no longer cached are dropped every round).
    heard: HashMap<String, Instant>,
    /// Rounds so far: picks which of a host's services is asked.
    rounds: usize,
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
            heard: HashMap::new(),
            rounds: 0,
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

    /// The hosts whose verified service answered the last round (still cached, same host), with
    /// their payloads; remembers when each was heard. Forgets hosts no longer cached.
    fn answered(&mut self, cached: &[ServiceRecord]) -> BTreeMap<String, HostSeenPayload> {
        let mut seen: BTreeMap<String, HostSeenPayload> = BTreeMap::new();
        for service in cached {
            if let Some(o) = self.outstanding.get(&service.fullname)
                && o.host == service.host
            {
                seen.entry(service.host.clone())
                    .or_insert_with(|| HostSeenPayload {
                        host: service.host.clone(),
                        addresses: service.addresses.clone(),
                        services: 1,
                        last_seen: crate::cache::timestamp(o.sent),
                    });
                self.heard.insert(service.host.clone(), Instant::now());
            }
        }
        self.heard
            .retain(|host, _| cached.iter().any(|s| s.host == *host));
        self.outstanding.clear();
        seen
    }

    /// This round's queries: one service per host, the hosts heard longest ago (never heard
    /// first), at most [`MAX_PER_ROUND`]; each host's services taken in turn, round by round.
    fn pick<'a>(&mut self, cached: &'a [ServiceRecord]) -> Vec<&'a ServiceRecord> {
        let mut by_host: BTreeMap<&str, Vec<&ServiceRecord>> = BTreeMap::new();
        for service in cached {
            by_host
                .entry(service.host.as_str())
                .or_default()
                .push(service);
        }
        let mut hosts: Vec<(Option<Instant>, &str, Vec<&ServiceRecord>)> = by_host
            .into_iter()
            .map(|(host, mut services)| {
                services.sort_by(|a, b| a.fullname.cmp(&b.fullname));
                (self.heard.get(host).copied(), host, services)
            })
            .collect();
        // `None` (never heard) sorts before every time; ties by host name.
        hosts.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let round = self.rounds;
        self.rounds = self.rounds.wrapping_add(1);
        hosts
            .into_iter()
            .take(MAX_PER_ROUND)
            .filter_map(|(_, _, services)| services.get(round % services.len().max(1)).copied())
            .collect()
    }

    /// One round: publishes the hosts whose verified service answered the last round, then
    /// re-checks one service per host.
    pub async fn round(&mut self, daemon: &ServiceDaemon, engine: &Engine, ctx: &Context) {
        let cached = engine.query(None, None);
        for payload in self.answered(&cached).values() {
            if let Err(e) = ctx.publish(HOST_SEEN, payload).await {
                tracing::debug!(error = %e, "could not publish mdns.host.seen");
            }
        }
        let timeout = self.period.mul_f64(0.8);
        let now = SystemTime::now();
        let deadline = Instant::now() + timeout;
        for service in self.pick(&cached) {
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

    fn record(host: &str, n: usize) -> ServiceRecord {
        let instance = format!("svc{n}");
        ServiceRecord {
            fullname: format!("{instance}._http._tcp.local."),
            instance,
            service_type: "_http._tcp.local.".into(),
            host: host.into(),
            addresses: vec!["10.0.0.1".into()],
            port: 80,
            txt: BTreeMap::new(),
            first_seen: String::new(),
            last_seen: String::new(),
        }
    }

    /// N hosts × M services: one query per host per round, every service of a host asked in turn.
    #[test]
    fn one_query_per_host_per_round() {
        let (hosts, per_host) = (7, 5);
        let cached: Vec<ServiceRecord> = (0..hosts)
            .flat_map(|h| (0..per_host).map(move |s| record(&format!("h{h}.local."), h * 100 + s)))
            .collect();
        let mut r = Recheck::new(Duration::from_secs(20));
        let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for _ in 0..per_host {
            let picked = r.pick(&cached);
            assert_eq!(picked.len(), hosts, "one query per host");
            let distinct: std::collections::BTreeSet<&str> =
                picked.iter().map(|s| s.host.as_str()).collect();
            assert_eq!(distinct.len(), hosts, "never two services of one host");
            for s in picked {
                asked
                    .entry(s.host.clone())
                    .or_default()
                    .push(s.fullname.clone());
            }
        }
        for (host, names) in asked {
            let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
            assert_eq!(distinct.len(), per_host, "{host}: each service in turn");
        }
    }

    /// The host whose verified service answered is seen once; the cap takes hosts heard longest
    /// ago first.
    #[test]
    fn an_answering_host_is_seen_once_and_the_longest_unheard_go_first() {
        let cached: Vec<ServiceRecord> = (0..3)
            .flat_map(|s| [record("a.local.", s), record("b.local.", 10 + s)])
            .collect();
        let mut r = Recheck::new(Duration::from_secs(20));
        let sent = SystemTime::now();
        r.outstanding.insert(
            cached[0].fullname.clone(),
            Outstanding {
                host: "a.local.".into(),
                sent,
                deadline: Instant::now(),
            },
        );
        let seen = r.answered(&cached);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen["a.local."].services, 1);
        assert!(r.outstanding.is_empty());
        // b was never heard, a was just heard: b goes first.
        let picked = r.pick(&cached);
        assert_eq!(picked[0].host, "b.local.");
        assert_eq!(picked[1].host, "a.local.");
        // A host gone from the cache is forgotten.
        let only_b: Vec<ServiceRecord> = cached
            .iter()
            .filter(|s| s.host == "b.local.")
            .cloned()
            .collect();
        r.answered(&only_b);
        assert!(r.heard.is_empty());
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
