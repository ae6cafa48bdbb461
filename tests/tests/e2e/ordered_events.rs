//! Ordered event subscriptions through a real plugin process (the SDK example `koi-ordered`): the
//! test plays the host over raw stdio — handshake with the `event_gaps` feature, bursts of `event`
//! notifications into the plugin's real protocol loop, and the publisher's answers to the
//! `pub.truth` calls the plugin makes to resync. It checks order, gap reports that account for
//! every lost event, and that each subscriber ends with the publisher's state.

use crate::support::rawhost::RawHost;
use crate::support::{example, poll_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Key → the seq of the event that made it appear, per stream (`svc`, `slow`).
type Truth = BTreeMap<String, BTreeMap<String, u64>>;

/// `koi-ordered` with the test as its host, and the publisher's truth.
struct Raw {
    host: RawHost,
    truth: Truth,
}

impl Raw {
    /// Starts the plugin and does the handshake, offering `event_gaps`; checks it is answered.
    fn start() -> Self {
        let mut host = RawHost::spawn(&example("koi-ordered"), &[]);
        let result = host.initialize("daemon", &["events", "plugin_calls", "event_gaps"]);
        let features = result["features"].as_array().cloned().unwrap_or_default();
        assert!(
            features.contains(&json!("event_gaps")),
            "the plugin must answer the event_gaps feature: {result}"
        );
        Raw {
            host,
            truth: Truth::new(),
        }
    }

    /// Publishes one `svc`-style event: updates the truth, then delivers it.
    fn publish(&mut self, topic: &str, key: u32, seq: u64) {
        let stream = topic.split('.').next().unwrap_or_default().to_owned();
        let services = self.truth.entry(stream).or_default();
        if topic.ends_with(".removed") {
            services.remove(&key.to_string());
        } else {
            services.insert(key.to_string(), seq);
        }
        self.deliver(json!({"topic": topic, "source": "pub", "payload": {"key": key, "seq": seq}}));
    }

    /// Sends an `event` notification with these params as they are.
    fn deliver(&mut self, params: Value) {
        self.host.notify("event", params);
    }

    /// Polls `observed` until `done` holds for the view of `stream` (at most 30 s); returns it.
    fn observe_until(&mut self, stream: &str, done: impl Fn(&Value, &Truth) -> bool) -> Value {
        let (host, truth) = (&mut self.host, &self.truth);
        poll_until(
            &format!("the {stream} view to get there"),
            Duration::from_millis(20),
            || observed(host, truth)[stream].clone(),
            |view| done(view, truth),
        )
    }
}

/// Calls `observed` and waits (at most 30 s) for its result, answering the plugin's `host/call`
/// of `pub.truth` with the current truth meanwhile.
fn observed(host: &mut RawHost, truth: &Truth) -> Value {
    host.call_answering("observed", json!({}), Duration::from_secs(30), |call| {
        assert_eq!(call["method"], "host/call", "koi-ordered asked: {call}");
        let stream = call["params"]["params"]["stream"]
            .as_str()
            .unwrap_or_default();
        json!({"services": truth.get(stream).cloned().unwrap_or_default()})
    })
}

fn services(view: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(view["services"].clone()).unwrap_or_default()
}

fn missed(view: &Value) -> u64 {
    view["gaps"]
        .as_array()
        .map(|gaps| gaps.iter().filter_map(|g| g["missed"].as_u64()).sum())
        .unwrap_or(0)
}

#[test]
fn ten_thousand_appeared_removed_pairs_through_the_protocol_loop_arrive_in_order() {
    let mut raw = Raw::start();
    let mut seq = 0;
    for pair in 0..10_000u32 {
        for topic in ["svc.appeared", "svc.removed"] {
            seq += 1;
            raw.publish(topic, pair % 64, seq);
        }
    }
    // One more appearance per key, so that the final state is not simply empty.
    for key in 0..64 {
        seq += 1;
        raw.publish("svc.appeared", key, seq);
    }
    let view = raw.observe_until("svc", |v, _| v["events"].as_u64() == Some(seq));
    assert_eq!(view["out_of_order"], 0, "{view}");
    assert_eq!(view["gaps"], json!([]), "{view}");
    assert_eq!(services(&view), raw.truth["svc"]);
}

#[test]
fn a_slow_subscriber_is_told_of_every_drop_resyncs_from_the_publisher_and_ends_right() {
    let mut raw = Raw::start();
    const EVENTS: u64 = 2_000;
    for seq in 1..=EVENTS {
        let key = u32::try_from(seq % 13).unwrap_or(0);
        let topic = if (seq / 13) % 3 == 0 {
            "slow.removed"
        } else {
            "slow.appeared"
        };
        raw.publish(topic, key, seq);
    }
    // Every event is either applied or counted in a gap, and the state is the publisher's.
    let view = raw.observe_until("slow", |v, truth| {
        v["events"].as_u64().unwrap_or(0) + missed(v) == EVENTS && services(v) == truth["slow"]
    });
    assert!(
        !view["gaps"].as_array().is_some_and(Vec::is_empty),
        "a queue of 8 took 2,000 events without a drop: {view}"
    );
    assert_eq!(view["out_of_order"], 0, "{view}");
    assert_eq!(view["resync_errors"], 0, "{view}");
}

#[test]
fn drops_the_host_reports_and_payloads_of_the_wrong_shape_reach_the_handler_as_gaps() {
    let mut raw = Raw::start();
    raw.publish("svc.appeared", 1, 1);
    raw.publish("svc.appeared", 2, 2);
    // The host dropped 5 events before this one, then 2 more that it reports on their own.
    raw.truth
        .entry("svc".into())
        .or_default()
        .insert("9".into(), 7);
    raw.deliver(json!({"topic": "svc.appeared", "source": "pub",
        "payload": {"key": 3, "seq": 8}, "missed": 5}));
    raw.truth
        .entry("svc".into())
        .or_default()
        .insert("3".into(), 8);
    raw.truth.entry("svc".into()).or_default().remove("1");
    raw.deliver(
        json!({"topic": "svc.removed", "source": "pub", "payload": null,
        "missed": 2, "gap": true}),
    );
    raw.deliver(json!({"topic": "svc.changed", "source": "pub", "payload": {"key": "three"}}));
    raw.publish("svc.removed", 2, 11);
    let view = raw.observe_until("svc", |v, _| v["last_seq"] == 11);
    assert_eq!(
        view["gaps"],
        json!([
            {"missed": 5, "topic": "svc.appeared"},
            {"missed": 2, "topic": "svc.removed"},
            {"missed": 1, "topic": "svc.changed"},
        ]),
        "{view}"
    );
    assert_eq!(view["events"], 4, "{view}");
    assert_eq!(services(&view), raw.truth["svc"], "{view}");
}
