//! Keeps `schemas/protocol/` in step with the protocol types: each schema file must equal the one
//! generated from the Rust type. `KOI_BLESS=1` rewrites them.

use koi_protocol::calls::*;
use koi_protocol::context::{CallContext, host_events::PluginStarted};
use koi_protocol::{ErrorObject, InitializeParams, InitializeResult, Manifest};
use schemars::{JsonSchema, schema_for};
use std::path::PathBuf;

fn check<T: JsonSchema>(name: &str, stale: &mut Vec<String>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/protocol");
    let path = dir.join(format!("{name}.schema.json"));
    let generated =
        serde_json::to_string_pretty(&schema_for!(T)).expect("schema serialises") + "\n";
    if std::env::var_os("KOI_BLESS").is_some() {
        std::fs::create_dir_all(&dir).expect("create schemas/protocol");
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(generated.as_str()) {
        stale.push(path.display().to_string());
    }
}

#[test]
fn protocol_schemas_are_current() {
    let mut stale = Vec::new();
    check::<InitializeParams>("initialize.params", &mut stale);
    check::<InitializeResult>("initialize.result", &mut stale);
    check::<Manifest>("manifest", &mut stale);
    check::<ErrorObject>("error", &mut stale);
    check::<StatusReport>("status.result", &mut stale);
    check::<CancelParams>("cancel.params", &mut stale);
    check::<EventDelivery>("event.params", &mut stale);
    check::<ProgressParams>("progress.params", &mut stale);
    check::<ItemParams>("item.params", &mut stale);
    check::<ShowParams>("show.params", &mut stale);
    check::<ViewParams>("view.params", &mut stale);
    check::<PromptParams>("prompt.params", &mut stale);
    check::<PromptResult>("prompt.result", &mut stale);
    check::<SecretParams>("secret.params", &mut stale);
    check::<SecretResult>("secret.result", &mut stale);
    check::<ConfirmParams>("confirm.params", &mut stale);
    check::<ConfirmResult>("confirm.result", &mut stale);
    check::<ChooseParams>("choose.params", &mut stale);
    check::<ChooseResult>("choose.result", &mut stale);
    check::<KeystrokesParams>("keystrokes.params", &mut stale);
    check::<KeystrokesResult>("keystrokes.result", &mut stale);
    check::<CallParams>("call.params", &mut stale);
    check::<PublishParams>("publish.params", &mut stale);
    check::<PublishResult>("publish.result", &mut stale);
    check::<CallContext>("call.context", &mut stale);
    check::<PluginStarted>("host.plugin.started.payload", &mut stale);
    assert!(
        stale.is_empty(),
        "these schemas are stale or missing: {stale:?}\nRegenerate them with: KOI_BLESS=1 cargo test -p koi-protocol --test schemas"
    );
}
