//! Runtime JSON-Schema checking of params, results, stream items and event payloads.
//!
//! Validators are compiled lazily, once per connection and schema, and cached. A violation becomes
//! a JSON-RPC error (`-32002`) whose message names the plugin, the method or topic and the failing
//! field's path, and whose `data.path` carries that path as a JSON Pointer.

use koi_protocol::{ErrorObject, codes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a payload is, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// Params sent to a method.
    Params,
    /// A method's result.
    Result,
    /// One streamed item.
    Item,
    /// An event payload.
    Event,
}

impl PayloadKind {
    fn describe(self) -> &'static str {
        match self {
            PayloadKind::Params => "params for",
            PayloadKind::Result => "result of",
            PayloadKind::Item => "streamed item of",
            PayloadKind::Event => "payload of event",
        }
    }

    /// The verb agreeing with [`Self::describe`]: "params" is plural.
    fn breaks(self) -> &'static str {
        match self {
            PayloadKind::Params => "break",
            _ => "breaks",
        }
    }
}

/// Compiled validators for one plugin, keyed by payload kind and method or topic.
#[derive(Default)]
pub struct Validators {
    compiled: Mutex<HashMap<(PayloadKind, String), Arc<jsonschema::Validator>>>,
}

impl Validators {
    /// Checks `instance` against `schema`; `plugin` and `name` (method or topic) go into the error.
    pub fn check(
        &self,
        plugin: &str,
        kind: PayloadKind,
        name: &str,
        schema: &Value,
        instance: &Value,
    ) -> Result<(), ErrorObject> {
        let validator = self.validator(plugin, kind, name, schema)?;
        let Some(error) = validator.iter_errors(instance).next() else {
            return Ok(());
        };
        let path = error.instance_path().to_string();
        let shown_path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.clone()
        };
        let mut object = ErrorObject::new(
            codes::SCHEMA_VIOLATION,
            format!(
                "the {} `{name}` of koi-{plugin} {} its declared schema at {shown_path}: {error}",
                kind.describe(),
                kind.breaks()
            ),
        );
        object.set_data_field("path", Value::String(shown_path));
        object.set_data_field("plugin", Value::String(plugin.to_owned()));
        object.set_data_field("name", Value::String(name.to_owned()));
        object.set_data_field("payload", Value::String(format!("{kind:?}").to_lowercase()));
        let hint = match kind {
            PayloadKind::Params => "Check the arguments against `koi help` for this verb.",
            _ => "This is a bug in the plugin: report it to its author.",
        };
        Err(object.with_hint(hint))
    }

    fn validator(
        &self,
        plugin: &str,
        kind: PayloadKind,
        name: &str,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, ErrorObject> {
        let key = (kind, name.to_owned());
        if let Some(v) = lock(&self.compiled).get(&key) {
            return Ok(v.clone());
        }
        let compiled = jsonschema::validator_for(schema).map_err(|e| {
            ErrorObject::new(
                codes::SCHEMA_VIOLATION,
                format!(
                    "koi-{plugin} declares an invalid JSON Schema for the {} `{name}`: {e}",
                    kind.describe()
                ),
            )
            .with_hint("This is a bug in the plugin: report it to its author.")
        })?;
        let compiled = Arc::new(compiled);
        lock(&self.compiled).insert(key, compiled.clone());
        Ok(compiled)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violation_names_plugin_method_and_path() {
        let v = Validators::default();
        let schema = json!({"type":"object","properties":{"port":{"type":"integer","minimum":1}},"required":["port"]});
        assert!(
            v.check(
                "mdns",
                PayloadKind::Params,
                "announce",
                &schema,
                &json!({"port": 80})
            )
            .is_ok()
        );
        let err = v
            .check(
                "mdns",
                PayloadKind::Params,
                "announce",
                &schema,
                &json!({"port": 0}),
            )
            .expect_err("port 0 violates minimum");
        assert_eq!(err.code, codes::SCHEMA_VIOLATION);
        assert!(err.message.contains("koi-mdns"), "{}", err.message);
        assert!(err.message.contains("`announce`"), "{}", err.message);
        assert_eq!(
            err.data.as_ref().and_then(|d| d.get("path")),
            Some(&json!("/port"))
        );
        assert!(
            err.message
                .contains("params for `announce` of koi-mdns break its"),
            "params is plural: {}",
            err.message
        );
        let err = v
            .check("mdns", PayloadKind::Result, "announce", &schema, &json!({}))
            .expect_err("port is required");
        assert!(
            err.message
                .contains("result of `announce` of koi-mdns breaks its"),
            "{}",
            err.message
        );
    }

    #[test]
    fn invalid_schema_is_reported_not_panicked() {
        let v = Validators::default();
        let err = v
            .check(
                "x",
                PayloadKind::Result,
                "m",
                &json!({"type": 12}),
                &json!(1),
            )
            .expect_err("bad schema");
        assert!(
            err.message.contains("invalid JSON Schema"),
            "{}",
            err.message
        );
    }
}
