//! Checking a plugin's answer to `initialize`, for [`super::Connection::start`]: the protocol
//! version, the result's shape (with the path of the first schema violation), the manifest, and the
//! negotiated features.

use super::*;

impl Connection {
    pub(super) fn check_handshake(
        &self,
        outcome: Result<Value, ErrorObject>,
    ) -> Result<(), ErrorObject> {
        let moniker = &self.inner.moniker;
        let value = match outcome {
            Ok(v) => v,
            Err(e) if e.code == codes::PROTOCOL_MISMATCH => {
                let plugin_version = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("plugin_protocol"))
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                return Err(match plugin_version {
                    Some(v) => self.incompatible(v),
                    None => e,
                });
            }
            Err(e) if e.code == codes::TIMEOUT => {
                return Err(ErrorObject::new(
                    codes::PLUGIN_UNAVAILABLE,
                    format!(
                        "koi-{moniker} ({}) did not complete the handshake: {}",
                        self.inner.path.display(),
                        e.message
                    ),
                )
                .with_hint("The plugin may be waiting for something else, or is not a Koi plugin. Run it with KOI_TRACE_PROTOCOL=1 to see the exchange."));
            }
            Err(e) => return Err(e),
        };
        let result: InitializeResult = match serde_json::from_value(value.clone()) {
            Ok(result) => result,
            Err(e) => {
                let cause = initialize_schema_problem(&value).unwrap_or_else(|| e.to_string());
                return Err(unavailable(format!("koi-{moniker} answered `initialize` with an invalid manifest: {cause}"))
                    .with_hint("This is a bug in the plugin: report it to its author. docs/protocol.md §6 describes the manifest."));
            }
        };
        if !PROTOCOL_VERSION.is_compatible_with(result.protocol) {
            return Err(self.incompatible(result.protocol));
        }
        if result.manifest.name != *moniker {
            return Err(unavailable(format!(
                "koi-{moniker} ({}) calls itself `{}` in its manifest",
                self.inner.path.display(),
                result.manifest.name
            ))
            .with_hint(format!(
                "Rename the file to koi-{} or fix the plugin's manifest.",
                result.manifest.name
            )));
        }
        if let Some((path, problem)) = result.manifest.first_problem() {
            return Err(unavailable(format!(
                "koi-{moniker} ({}) answered `initialize` with an invalid manifest: at /manifest{path}: {problem}",
                self.inner.path.display()
            ))
            .with_hint("This is a bug in the plugin: report it to its author. docs/protocol.md §6 describes the manifest."));
        }
        let mut secret = BTreeSet::new();
        for m in &result.manifest.methods {
            secret.extend(secret_property_names(&m.params));
            secret.extend(secret_property_names(&m.result));
        }
        let _ = self.inner.secret_names.set(secret);
        self.inner.call_context.store(
            result.features.iter().any(|f| f == features::CALL_CONTEXT),
            Ordering::Release,
        );
        self.inner.event_gaps.store(
            result.features.iter().any(|f| f == features::EVENT_GAPS),
            Ordering::Release,
        );
        let _ = self.inner.protocol.set(result.protocol);
        let _ = self.inner.manifest.set(result.manifest);
        self.inner.handshake_done.store(true, Ordering::Release);
        Ok(())
    }

    fn incompatible(&self, plugin: koi_protocol::ProtocolVersion) -> ErrorObject {
        let moniker = &self.inner.moniker;
        let (what, upgrade) = if plugin.major > PROTOCOL_VERSION.major {
            (
                "koi",
                format!(
                    "Upgrade koi to a release that speaks protocol {}, or install a koi-{moniker} built for protocol {}.",
                    plugin.major, PROTOCOL_VERSION.major
                ),
            )
        } else {
            (
                "the plugin",
                format!(
                    "Upgrade koi-{moniker} to a release built for protocol {}.",
                    PROTOCOL_VERSION.major
                ),
            )
        };
        let mut e = ErrorObject::new(
            codes::PROTOCOL_MISMATCH,
            format!(
                "koi-{moniker} ({}) speaks Koi plugin protocol {plugin}, but this koi {} speaks protocol {PROTOCOL_VERSION}; {what} is out of date",
                self.inner.path.display(),
                env!("CARGO_PKG_VERSION"),
            ),
        )
        .with_hint(upgrade);
        e.set_data_field("plugin_protocol", serde_json::json!(plugin));
        e.set_data_field("host_protocol", serde_json::json!(PROTOCOL_VERSION));
        e
    }
}

/// The first violation of the protocol's `initialize` result schema, with its path. Only computed
/// when decoding already failed, so the happy path pays nothing for it.
fn initialize_schema_problem(value: &Value) -> Option<String> {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../schemas/protocol/initialize.result.schema.json"
    ))
    .ok()?;
    let validator = jsonschema::validator_for(&schema).ok()?;
    let error = validator.iter_errors(value).next()?;
    let path = error.instance_path().to_string();
    Some(format!(
        "at {}: {error}",
        if path.is_empty() { "/" } else { &path }
    ))
}
