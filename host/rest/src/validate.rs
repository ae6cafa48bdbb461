//! Checking params against a method's params schema before calling the daemon, so a bad request is
//! a 400 naming the failing field (`data.path`, a JSON Pointer) without a round trip to the plugin.
//! Validators are compiled once per plugin method and schema, and cached.

use crate::schema::pointer_segment;
use jsonschema::error::ValidationErrorKind;
use koi_protocol::{ErrorObject, codes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Past this many cached validators the cache starts over (plugins restarted with new manifests).
const MAX_CACHED: usize = 1024;

/// Why params could not be accepted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParamsProblem {
    /// The params break the schema; the error is ready to send (400).
    Invalid(ErrorObject),
    /// The plugin's schema itself is not a valid JSON Schema (502).
    BadSchema(ErrorObject),
}

type Key = (String, String);

/// Compiled params validators, keyed by plugin and method.
#[derive(Default)]
pub(crate) struct Validators {
    cache: Mutex<HashMap<Key, (Value, Arc<jsonschema::Validator>)>>,
}

impl Validators {
    /// Checks `params` for `plugin`'s `method` against `schema`.
    pub(crate) fn check(
        &self,
        plugin: &str,
        method: &str,
        schema: &Value,
        params: &Value,
    ) -> Result<(), ParamsProblem> {
        let validator = self.validator(plugin, method, schema)?;
        let Some(error) = validator.iter_errors(params).next() else {
            return Ok(());
        };
        let mut path = error.instance_path().to_string();
        match error.kind() {
            ValidationErrorKind::Required { property } => {
                if let Some(name) = property.as_str() {
                    path.push_str(&pointer_segment(name));
                }
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                if let Some(name) = unexpected.first() {
                    path.push_str(&pointer_segment(name));
                }
            }
            _ => {}
        }
        if path.is_empty() {
            path.push('/');
        }
        let message =
            format!("the params for `{plugin} {method}` break its schema at {path}: {error}");
        Err(ParamsProblem::Invalid(params_error(
            plugin, method, path, message,
        )))
    }

    fn validator(
        &self,
        plugin: &str,
        method: &str,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, ParamsProblem> {
        let key = (plugin.to_owned(), method.to_owned());
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((cached_schema, validator)) = cache.get(&key) {
                if cached_schema == schema {
                    return Ok(validator.clone());
                }
            }
        }
        let validator = jsonschema::validator_for(schema).map_err(|e| {
            ParamsProblem::BadSchema(
                ErrorObject::new(
                    codes::SCHEMA_VIOLATION,
                    format!(
                        "koi-{plugin} declares an invalid params schema for `{method}`, so the \
                         request cannot be checked: {e}"
                    ),
                )
                .with_hint("This is a bug in the plugin: report it to its author."),
            )
        })?;
        let validator = Arc::new(validator);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (schema.clone(), validator.clone()));
        Ok(validator)
    }
}

/// A `-32002` params violation at `path` (a JSON Pointer), in the shape the daemon uses.
pub(crate) fn params_error(
    plugin: &str,
    method: &str,
    path: String,
    message: String,
) -> ErrorObject {
    let mut object = ErrorObject::new(codes::SCHEMA_VIOLATION, message);
    object.set_data_field("path", Value::String(path));
    object.set_data_field("plugin", Value::String(plugin.to_owned()));
    object.set_data_field("name", Value::String(method.to_owned()));
    object.set_data_field("payload", Value::String("params".to_owned()));
    object.with_hint(format!(
        "GET /v1/openapi.json describes the parameters of /v1/{plugin}/{method}."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path_of(problem: ParamsProblem) -> Value {
        match problem {
            ParamsProblem::Invalid(e) => e.data.expect("data")["path"].clone(),
            ParamsProblem::BadSchema(e) => panic!("unexpected bad schema: {e}"),
        }
    }

    #[test]
    fn violations_name_the_field() {
        let v = Validators::default();
        let schema = json!({
            "type": "object",
            "properties": {"port": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": false
        });
        assert!(
            v.check("p", "m", &schema, &json!({"name": "a", "port": 1}))
                .is_ok()
        );
        let e = v.check("p", "m", &schema, &json!({"name": "a", "port": 0}));
        assert_eq!(path_of(e.expect_err("minimum")), json!("/port"));
        let e = v.check("p", "m", &schema, &json!({}));
        assert_eq!(path_of(e.expect_err("required")), json!("/name"));
        let e = v.check("p", "m", &schema, &json!({"name": "a", "extra": 1}));
        assert_eq!(path_of(e.expect_err("additional")), json!("/extra"));
        let e = v.check("p", "m", &schema, &json!([]));
        assert_eq!(path_of(e.expect_err("type")), json!("/"));
    }

    #[test]
    fn a_changed_schema_is_recompiled() {
        let v = Validators::default();
        let strict = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let loose = json!({"type": "object"});
        assert!(v.check("p", "m", &strict, &json!({"a": "x"})).is_err());
        assert!(v.check("p", "m", &loose, &json!({"a": "x"})).is_ok());
    }

    #[test]
    fn an_invalid_schema_is_reported() {
        let v = Validators::default();
        let result = v.check("p", "m", &json!({"type": 12}), &json!({}));
        assert!(matches!(result, Err(ParamsProblem::BadSchema(_))));
    }
}
