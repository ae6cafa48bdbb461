//! The discovered-service cache and event diffing: every resolved service seen on the network is
//! kept with its first- and last-seen times; observing it again yields `Appeared`, `Changed` (with
//! the fields that changed) or `Refreshed`; a removal yields `Removed` with the last known record.
//! The diffing is pure (time is passed in), so it is unit-tested without a network.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// What a service looks like on the wire, without timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceData {
    /// Instance name (`web`).
    pub instance: String,
    /// Service type (`_http._tcp`).
    pub service_type: String,
    /// Full DNS name (`web._http._tcp.local.`).
    pub fullname: String,
    /// Target host (`host-a.local.`).
    pub host: String,
    /// Addresses, sorted; IPv6 link-local as `fe80::…%iface`.
    pub addresses: Vec<String>,
    /// Port.
    pub port: u16,
    /// TXT properties.
    pub txt: BTreeMap<String, String>,
}

pub use koi_mdns_api::ServiceRecord;

/// What an observation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A service not in the cache.
    Appeared(ServiceRecord),
    /// A known service whose data changed; the names of the changed fields.
    Changed(ServiceRecord, Vec<&'static str>),
    /// A known service seen again, unchanged (last-seen updated).
    Refreshed(ServiceRecord),
    /// A service that went away (goodbye or expiry); its last known record.
    Removed(ServiceRecord),
}

/// The fields of `new` that differ from `old`.
pub fn diff(old: &ServiceData, new: &ServiceData) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.host != new.host {
        changed.push("host");
    }
    if old.addresses != new.addresses {
        changed.push("addresses");
    }
    if old.port != new.port {
        changed.push("port");
    }
    if old.txt != new.txt {
        changed.push("txt");
    }
    changed
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Clone)]
struct Entry {
    data: ServiceData,
    first_seen: SystemTime,
    last_seen: SystemTime,
}

impl Entry {
    fn record(&self) -> ServiceRecord {
        let d = &self.data;
        ServiceRecord {
            instance: d.instance.clone(),
            service_type: d.service_type.clone(),
            fullname: d.fullname.clone(),
            host: d.host.clone(),
            addresses: d.addresses.clone(),
            port: d.port,
            txt: d.txt.clone(),
            first_seen: timestamp(self.first_seen),
            last_seen: timestamp(self.last_seen),
        }
    }
}

/// Services seen on the network, keyed by lower-cased full name.
#[derive(Debug, Default)]
pub struct Cache {
    entries: BTreeMap<String, Entry>,
}

impl Cache {
    /// Records a resolved service seen at `now`.
    pub fn observe(&mut self, mut data: ServiceData, now: SystemTime) -> Change {
        data.addresses.sort();
        data.addresses.dedup();
        let key = data.fullname.to_ascii_lowercase();
        match self.entries.get_mut(&key) {
            None => {
                let entry = Entry {
                    data,
                    first_seen: now,
                    last_seen: now,
                };
                let record = entry.record();
                self.entries.insert(key, entry);
                Change::Appeared(record)
            }
            Some(entry) => {
                let changed = diff(&entry.data, &data);
                entry.data = data;
                entry.last_seen = now;
                if changed.is_empty() {
                    Change::Refreshed(entry.record())
                } else {
                    Change::Changed(entry.record(), changed)
                }
            }
        }
    }

    /// Removes a service; `None` if it was never resolved.
    pub fn remove(&mut self, fullname: &str) -> Option<Change> {
        self.entries
            .remove(&fullname.to_ascii_lowercase())
            .map(|e| Change::Removed(e.record()))
    }

    /// Every cached service, optionally of one type (`_http._tcp`) and/or one instance.
    pub fn query(&self, service_type: Option<&str>, instance: Option<&str>) -> Vec<ServiceRecord> {
        self.entries
            .values()
            .filter(|e| service_type.is_none_or(|t| e.data.service_type.eq_ignore_ascii_case(t)))
            .filter(|e| instance.is_none_or(|i| e.data.instance == i))
            .map(Entry::record)
            .collect()
    }

    /// How many services are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn web(port: u16) -> ServiceData {
        ServiceData {
            instance: "web".into(),
            service_type: "_http._tcp".into(),
            fullname: "web._http._tcp.local.".into(),
            host: "a.local.".into(),
            addresses: vec!["10.77.0.1".into()],
            port,
            txt: [("path".to_owned(), "/x".to_owned())].into(),
        }
    }

    #[test]
    fn first_sight_appears_then_refreshes_then_changes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_secs(5);
        let mut cache = Cache::default();
        let Change::Appeared(r) = cache.observe(web(80), t0) else {
            panic!("expected Appeared")
        };
        assert_eq!(r.first_seen, r.last_seen);
        assert_eq!(r.last_seen, "2023-11-14T22:13:20.000Z");
        let Change::Refreshed(r) = cache.observe(web(80), t1) else {
            panic!("expected Refreshed")
        };
        assert_eq!(r.last_seen, "2023-11-14T22:13:25.000Z");
        assert_eq!(r.first_seen, "2023-11-14T22:13:20.000Z");
        let mut moved = web(8080);
        moved.txt.insert("v".into(), "2".into());
        assert!(matches!(
            cache.observe(moved, t1),
            Change::Changed(_, fields) if fields == ["port", "txt"]
        ));
    }

    #[test]
    fn address_order_is_not_a_change() {
        let t = SystemTime::UNIX_EPOCH;
        let mut cache = Cache::default();
        let mut a = web(80);
        a.addresses = vec!["10.77.0.1".into(), "fe80::1%veth0".into()];
        cache.observe(a.clone(), t);
        a.addresses.reverse();
        assert!(matches!(cache.observe(a, t), Change::Refreshed(_)));
    }

    #[test]
    fn removal_returns_the_last_record_and_is_case_insensitive() {
        let t = SystemTime::UNIX_EPOCH;
        let mut cache = Cache::default();
        cache.observe(web(80), t);
        assert_eq!(cache.query(Some("_HTTP._tcp"), None).len(), 1);
        assert!(matches!(
            cache.remove("WEB._http._tcp.local."),
            Some(Change::Removed(r)) if r.port == 80
        ));
        assert!(cache.remove("web._http._tcp.local.").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn diff_names_each_changed_field() {
        let a = web(80);
        let mut b = web(80);
        b.host = "b.local.".into();
        b.addresses = vec![];
        assert_eq!(diff(&a, &b), vec!["host", "addresses"]);
        assert!(diff(&a, &a).is_empty());
    }
}
