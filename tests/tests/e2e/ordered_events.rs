//! Ordered event subscriptions through a real plugin process (the SDK example `koi-ordered`): the
//! test plays the host over raw stdio — handshake with the `event_gaps` feature, bursts of `event`
//! notifications into the plugin's real protocol loop, and the publisher's answers to the
//! `pub.truth` calls the plugin makes to resync. It checks order, gap reports that account for
//! every lost event, and that each subscriber ends with the publisher's state.

use crate::support::example;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Key → the seq of the event that made it appear, per stream (`svc`, `slow`).
type Truth = BTreeMap<String, BTreeMap<String, u64>>;

/// `koi-ordered`, started with the host's launch cookie, and the test acting as its host.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    next_id: u64,
    truth: Truth,
    _home: tempfile::TempDir,
}

impl Raw {
    /// Starts the plugin and does the handshake, offering `event_gaps`; checks it is answered.
    fn start() -> Self {
        let home = tempfile::tempdir().expect("temp KOI_HOME");
        let mut child = Command::new(example("koi-ordered"))
            .env("KOI_PLUGIN_COOKIE", "koi-stdio-jsonrpc")
            .env("KOI_HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start koi-ordered");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut raw = Raw {
            child,
            stdin,
            lines,
            next_id: 1,
            truth: Truth::new(),
            _home: home,
        };
        let koi_home = raw._home.path().display().to_string();
        let result = raw.call(
            "initialize",
            json!({
                "protocol": {"major": 1, "minor": 1},
                "host": {"name": "koi", "version": "test"},
                "mode": "daemon",
                "features": ["events", "plugin_calls", "event_gaps"],
                "max_frame_bytes": 1 << 20,
                "koi_home": koi_home,
                "interactive": false,
            }),
        );
        let features = result["features"].as_array().cloned().unwrap_or_default();
        assert!(
            features.contains(&json!("event_gaps")),
            "the plugin must answer the event_gaps feature: {result}"
        );
        raw
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let mut line = serde_json::to_vec(message).expect("json");
        line.push(b'\n');
        stdin.write_all(&line).expect("write to the plugin");
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
        self.send(&json!({"jsonrpc": "2.0", "method": "event", "params": params}));
    }

    /// Calls `method` and waits (at most 30 s) for its result, answering the plugin's `host/call`
    /// of `pub.truth` with the current truth meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.lines.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => panic!("no answer to {method} within 30 s"),
                Err(RecvTimeoutError::Disconnected) => panic!("koi-ordered exited during {method}"),
            };
            if message["method"] == "host/call" {
                let stream = message["params"]["params"]["stream"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let services = self.truth.get(&stream).cloned().unwrap_or_default();
                let answer = json!({"jsonrpc": "2.0", "id": message["id"],
                    "result": {"services": services}});
                self.send(&answer);
            } else if message["id"] == json!(id) && message.get("method").is_none() {
                assert!(message.get("error").is_none(), "{method} failed: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Polls `observed` until `done` holds for the view of `stream` (at most 30 s); returns it.
    fn observe_until(&mut self, stream: &str, done: impl Fn(&Value, &Truth) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.call("observed", json!({}));
            if done(&seen[stream], &self.truth) {
                return seen[stream].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{stream} never got there in 30 s: {}",
                seen[stream]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // EOF on stdin: the plugin shuts down; kill it if it does not.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
