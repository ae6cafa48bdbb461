//! Display labels for result fields, read from the method's result schema (docs/plugins.md,
//! "Display labels"). A field the schema names as a property gets its `title` when the plugin
//! wrote one, else a humanised name (`ca_fingerprint` → `CA fingerprint`, with the known acronyms
//! upper-cased). A key of a map the schema declares with `additionalProperties` is data (a TXT
//! key, a host name) and is shown exactly as it is. Without any schema for the value the host
//! cannot tell, and humanises as before.

use koi_protocol::schema_read;
use serde_json::Value;

/// Words shown upper-case (or in their usual case) wherever they appear in a humanised name.
const ACRONYMS: &[(&str, &str)] = &[
    ("ca", "CA"),
    ("uri", "URI"),
    ("url", "URL"),
    ("dns", "DNS"),
    ("ip", "IP"),
    ("ips", "IPs"),
    ("txt", "TXT"),
    ("tls", "TLS"),
    ("id", "ID"),
    ("mdns", "mDNS"),
    ("ttl", "TTL"),
    ("totp", "TOTP"),
    ("api", "API"),
    ("pid", "PID"),
    ("uid", "UID"),
    ("otpauth", "otpauth"),
];

/// `snake_case_key` → `Snake case key`, with known acronyms upper-cased (`ca_fingerprint` →
/// `CA fingerprint`, `dns_names` → `DNS names`). Not escaped: callers escape.
pub fn humanize(key: &str) -> String {
    let words: Vec<String> = key
        .split(['_', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            ACRONYMS
                .iter()
                .find(|(lower, _)| w.eq_ignore_ascii_case(lower))
                .map_or_else(|| w.to_owned(), |(_, shown)| (*shown).to_owned())
        })
        .collect();
    let joined = words.join(" ");
    let mut chars = joined.chars();
    match chars.next() {
        // An acronym keeps its own case (`otpauth URI`, `mDNS name`); a plain word is capitalised.
        Some(first) if !ACRONYMS.iter().any(|(_, s)| joined.starts_with(s)) => {
            first.to_uppercase().chain(chars).collect()
        }
        Some(_) => joined,
        None => key.to_owned(),
    }
}

/// Where a value sits in its schema, as far as labels are concerned.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// No schema says what this value is: keys are humanised (the behaviour before schemas).
    Unknown,
    /// `schema` inside the document `root`.
    Known { root: &'a Value, schema: &'a Value },
}

/// The label of one key of an object, and the shape of its value.
pub struct Field<'a> {
    /// What to print before the value (not yet escaped).
    pub label: String,
    /// Whether the key is data (shown as it is) rather than a field name.
    pub data: bool,
    /// The shape of the value under the key.
    pub shape: Shape<'a>,
}

impl<'a> Shape<'a> {
    /// The shape of a whole result whose schema is `schema` (`None` or `{}`: unknown).
    pub fn of(schema: Option<&'a Value>) -> Self {
        match schema {
            Some(s) if s.as_object().is_some_and(|m| !m.is_empty()) => {
                Shape::Known { root: s, schema: s }
            }
            _ => Shape::Unknown,
        }
    }

    /// The shape of the items of an array.
    pub fn items(self) -> Self {
        let Shape::Known { root, schema } = self else {
            return Shape::Unknown;
        };
        match branches(root, schema)
            .into_iter()
            .find_map(|s| s.get("items"))
        {
            Some(items) => Shape::Known {
                root,
                schema: items,
            },
            None => Shape::Unknown,
        }
    }

    /// The label and shape of `key` in an object of this shape.
    pub fn field(self, key: &str) -> Field<'a> {
        let unknown = |data: bool| Field {
            label: if data { key.to_owned() } else { humanize(key) },
            data,
            shape: Shape::Unknown,
        };
        let Shape::Known { root, schema } = self else {
            return unknown(false);
        };
        let parts = branches(root, schema);
        if let Some(property) = parts
            .iter()
            .find_map(|s| s.get("properties").and_then(|p| p.get(key)))
        {
            // Only the property's own `title`: a referenced definition's title is a type name.
            let title = property
                .get("title")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty());
            return Field {
                label: title.map_or_else(|| humanize(key), str::to_owned),
                data: false,
                shape: Shape::Known {
                    root,
                    schema: property,
                },
            };
        }
        if let Some(values) = parts
            .iter()
            .find_map(|s| s.get("additionalProperties").filter(|a| a.is_object()))
        {
            return Field {
                label: key.to_owned(),
                data: true,
                shape: Shape::Known {
                    root,
                    schema: values,
                },
            };
        }
        let described = parts
            .iter()
            .any(|s| s.get("properties").is_some() || s.get("additionalProperties").is_some());
        // A key the schema does not name in an object it describes is data too.
        unknown(described)
    }
}

/// `schema` resolved, with the branches of `allOf`/`anyOf`/`oneOf` (an `Option<T>`, a flattened
/// struct, an enum of structs) listed after it, each resolved.
fn branches<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    let mut queue = vec![schema];
    while let Some(next) = queue.pop() {
        if out.len() > 32 {
            break;
        }
        let resolved = schema_read::resolve(root, next);
        out.push(resolved);
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(list)) = resolved.get(key) {
                queue.extend(list.iter());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acronyms_and_plain_words() {
        assert_eq!(humanize("ca_fingerprint"), "CA fingerprint");
        assert_eq!(humanize("otpauth_uri"), "otpauth URI");
        assert_eq!(humanize("dns_names"), "DNS names");
        assert_eq!(humanize("mdns_name"), "mDNS name");
        assert_eq!(humanize("count_total"), "Count total");
        assert_eq!(humanize("ttl"), "TTL");
    }

    #[test]
    fn titles_properties_and_data_keys() {
        let schema = json!({
            "type": "object",
            "properties": {
                "uri": {"type": "string", "title": "Enrollment link"},
                "txt": {"type": "object", "additionalProperties": {"type": "string"}},
                "inner": {"$ref": "#/$defs/Inner"}
            },
            "$defs": {"Inner": {"title": "Inner", "anyOf": [{"type": "object", "properties": {"ca_name": {"type": "string"}}}, {"type": "null"}]}}
        });
        let shape = Shape::of(Some(&schema));
        assert_eq!(shape.field("uri").label, "Enrollment link");
        let txt = shape.field("txt");
        assert_eq!(txt.label, "TXT");
        let path = txt.shape.field("path");
        assert!(path.data);
        assert_eq!(path.label, "path");
        let inner = shape.field("inner");
        assert_eq!(
            inner.label, "Inner",
            "humanised key, not the definition's title"
        );
        assert_eq!(inner.shape.field("ca_name").label, "CA name");
        assert_eq!(shape.field("other").label, "other");
        assert_eq!(Shape::of(None).field("other").label, "Other");
    }
}
