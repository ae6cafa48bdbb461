//! The manifest koi-mdns announces, checked without a network: the verbs and their CLI shapes, the
//! methods reserved for other plugins, the methods kept off the REST API (`local_only`), the
//! deprecated aliases with the seed's warnings, and the event payload schemas (a payload with `last_seen` passes; one without fails), validated with
//! the same JSON Schema machinery the host uses.

use serde_json::json;

#[test]
fn verbs_plugin_methods_and_aliases_are_declared() {
    let plugin = koi_mdns::plugin();
    plugin.check().expect("a valid declaration");
    let m = plugin.manifest();
    for verb in ["discover", "announce", "unannounce", "resolve", "state"] {
        assert!(m.method(verb).is_some_and(|s| s.cli.is_some()), "{verb}");
    }
    for internal in ["advertise", "withdraw", "query"] {
        assert!(
            m.method(internal).is_some_and(|s| s.cli.is_none()),
            "{internal}"
        );
    }
    // Announcing and withdrawing are never served over the daemon's unauthenticated REST API.
    for local in ["announce", "unannounce", "advertise", "withdraw"] {
        assert!(m.method(local).is_some_and(|s| s.local_only), "{local}");
    }
    for open in ["discover", "resolve", "state", "query"] {
        assert!(m.method(open).is_some_and(|s| !s.local_only), "{open}");
    }
    let discover = m.method("discover").expect("discover");
    assert!(discover.long_running && discover.stream_item.is_some());
    let aliases: Vec<(&str, &str)> = m
        .aliases
        .iter()
        .map(|a| (a.name.as_str(), a.warning.as_str()))
        .collect();
    assert!(aliases.contains(&(
        "discover",
        "Warning: `koi discover` is deprecated. Use `koi mdns discover`.\nThis alias will be removed in the next release."
    )));
    assert!(aliases.contains(&(
        "announce",
        "Warning: `koi announce` is deprecated. Use `koi mdns announce`.\nThis alias will be removed in the next release."
    )));
}

#[test]
fn event_payloads_are_schema_checked_and_carry_last_seen() {
    let m = koi_mdns::plugin().manifest();
    let service = json!({
        "instance": "ca", "service_type": "_certmesh._tcp", "fullname": "ca._certmesh._tcp.local.",
        "host": "a.local.", "addresses": ["10.77.0.1", "fe80::1%veth0"], "port": 5641,
        "txt": {"fp": "AB:CD"}, "first_seen": "2026-01-01T00:00:00.000Z",
        "last_seen": "2026-01-01T00:00:05.000Z"
    });
    let topics: Vec<&str> = m.publishes.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "mdns.service.appeared",
            "mdns.service.changed",
            "mdns.service.removed",
            "mdns.host.seen"
        ]
    );
    for event in m
        .publishes
        .iter()
        .filter(|e| e.topic.starts_with("mdns.service."))
    {
        let validator = jsonschema::validator_for(&event.payload).expect("a valid schema");
        let mut good = json!({"service": service.clone()});
        if event.topic.ends_with("changed") {
            good["changed"] = json!(["txt"]);
        }
        assert!(validator.is_valid(&good), "{}: {good}", event.topic);
        let mut bad = good.clone();
        if let Some(s) = bad["service"].as_object_mut() {
            s.remove("last_seen");
        }
        assert!(
            !validator.is_valid(&bad),
            "{} accepted a payload without last_seen",
            event.topic
        );
    }
}
