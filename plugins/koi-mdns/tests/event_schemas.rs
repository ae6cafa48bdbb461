//! The JSON Schemas koi-mdns announces for its events (and for `query`'s result, which carries the
//! same service record) are the contract subscribers in any language code against. They are kept
//! byte for byte in `tests/golden/event-schemas.json`, taken before the payload types moved to the
//! `koi-mdns-api` crate: a change to them must be deliberate (update the file and say why).

use serde_json::{Value, json};

fn announced() -> Value {
    let m = koi_mdns::plugin().manifest();
    let publishes: Vec<Value> = m
        .publishes
        .iter()
        .map(|e| json!({"topic": e.topic, "summary": e.summary, "payload": e.payload}))
        .collect();
    let query = m.method("query").map(|q| q.result.clone());
    json!({"publishes": publishes, "query_result": query})
}

#[test]
fn event_and_query_schemas_are_byte_identical_to_the_recorded_contract() {
    let text = serde_json::to_string_pretty(&announced()).expect("json");
    if std::env::var_os("KOI_RECORD_GOLDEN").is_some() {
        std::fs::write("tests/golden/event-schemas.json", format!("{text}\n")).expect("write");
    }
    let recorded = include_str!("golden/event-schemas.json");
    assert_eq!(
        text.trim_end(),
        recorded.trim_end(),
        "koi-mdns's event schemas changed; if deliberate, rerun with KOI_RECORD_GOLDEN=1"
    );
}
