//! Secret fields and how traces and logs hide them.
//!
//! A property is secret when its schema carries `"x-koi-secret": true`, or when its name is one of
//! [`ALWAYS_SECRET_NAMES`] (a safety net for schemas that forgot the marker). Redaction replaces the
//! value, whatever its type, with the string [`REDACTED`]. It is applied to every traced frame.
//! The answers to a few host calls ([`SECRET_RESULT_METHODS`]) are secret as a whole.

use serde_json::Value;
use std::collections::BTreeSet;

/// The schema keyword that marks a property as secret.
pub const SECRET_KEYWORD: &str = "x-koi-secret";
/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Property names that are redacted whatever the schema says.
pub const ALWAYS_SECRET_NAMES: &[&str] = &[
    "passphrase",
    "password",
    "secret",
    "totp_secret",
    "totp_code",
    "code",
    "private_key",
    "key_pem",
    "otpauth_uri",
];

/// Host calls whose whole result is secret: traces show it as [`REDACTED`].
pub const SECRET_RESULT_METHODS: &[&str] = &[crate::calls::SECRET, crate::calls::KEYSTROKES];

/// Whether the answer to the host call `method` is secret as a whole.
pub fn result_is_secret(method: &str) -> bool {
    SECRET_RESULT_METHODS.contains(&method)
}

/// The names of every property marked secret anywhere in `schema` (including `$defs`).
pub fn secret_property_names(schema: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect(schema, &mut names);
    names
}

fn collect(schema: &Value, names: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    if prop.get(SECRET_KEYWORD).and_then(Value::as_bool) == Some(true) {
                        names.insert(name.clone());
                    }
                }
            }
            for value in map.values() {
                collect(value, names);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, names)),
        _ => {}
    }
}

/// Replaces, anywhere in `value`, the value of every key named in `names` or in
/// [`ALWAYS_SECRET_NAMES`] with [`REDACTED`].
pub fn redact(value: &mut Value, names: &BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if names.contains(key) || ALWAYS_SECRET_NAMES.contains(&key.as_str()) {
                    *v = Value::String(REDACTED.to_owned());
                } else {
                    redact(v, names);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, names)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marked_and_conventional_names_are_redacted_at_any_depth() {
        let schema = json!({
            "properties": {"pin": {"type": "string", "x-koi-secret": true}},
            "$defs": {"Inner": {"properties": {"token": {"x-koi-secret": true}}}}
        });
        let names = secret_property_names(&schema);
        assert_eq!(names.iter().cloned().collect::<Vec<_>>(), ["pin", "token"]);
        let mut v =
            json!({"pin": "1234", "list": [{"token": {"a": 1}}], "passphrase": "p", "keep": "k"});
        redact(&mut v, &names);
        assert_eq!(
            v,
            json!({"pin": REDACTED, "list": [{"token": REDACTED}], "passphrase": REDACTED, "keep": "k"})
        );
    }

    #[test]
    fn secret_and_keystroke_answers_are_secret_as_a_whole() {
        assert!(result_is_secret(crate::calls::SECRET));
        assert!(result_is_secret(crate::calls::KEYSTROKES));
        assert!(!result_is_secret(crate::calls::PROMPT));
        let schema = serde_json::to_value(schemars::schema_for!(crate::calls::KeystrokesResult))
            .expect("schema");
        assert!(secret_property_names(&schema).contains("keystrokes"));
    }
}
