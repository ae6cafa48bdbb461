//! Reading the plugins' JSON Schemas without a full JSON-Schema engine: following local `$ref`s
//! (into `$defs` or anywhere else in the same document) and working out which JSON types a
//! property accepts, with `["T", "null"]` and `anyOf [T, null]` counting as `T`. The CLI (turning
//! arguments into params), the REST API (query strings, OpenAPI) share it, so both read a
//! manifest's schemas the same way; validation itself is `jsonschema`'s job in the host.

use serde_json::Value;

/// How many `$ref`s or combinators are followed before giving up (a cycle, or absurd nesting).
const MAX_DEPTH: usize = 16;

/// `schema` with local `$ref`s followed, within the document `root`.
///
/// A `$ref` that is not local, or does not resolve, leaves the schema as it is. A lone
/// `allOf: [S]` (an older schemars style for references with a description) is followed too.
pub fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..MAX_DEPTH {
        if let Some(target) = current
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| local_target(root, r))
        {
            current = target;
            continue;
        }
        match current.get("allOf").and_then(Value::as_array) {
            Some(all) if all.len() == 1 && current.get("type").is_none() => current = &all[0],
            _ => break,
        }
    }
    current
}

/// The schema a local reference (`#`, `#/$defs/X`, `#/properties/a`) points at.
fn local_target<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

/// The JSON types a schema accepts, as far as a query string is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Types {
    /// Some branch puts no constraint on the type.
    pub any: bool,
    pub null: bool,
    pub boolean: bool,
    pub integer: bool,
    pub number: bool,
    pub string: bool,
    pub array: bool,
    pub object: bool,
}

impl Types {
    /// The types `schema` (inside the document `root`) accepts.
    pub fn of(root: &Value, schema: &Value) -> Types {
        let mut types = Types::default();
        types.collect(root, schema, 0);
        types
    }

    /// Whether some type other than `array` and `null` is accepted.
    pub fn has_scalar(&self) -> bool {
        self.any || self.boolean || self.integer || self.number || self.string || self.object
    }

    fn collect(&mut self, root: &Value, schema: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            self.any = true;
            return;
        }
        let schema = resolve(root, schema);
        let Some(object) = schema.as_object() else {
            // `true` accepts anything; `false` accepts nothing, which validation will report.
            if schema.as_bool() == Some(true) {
                self.any = true;
            }
            return;
        };
        if let Some(kind) = object.get("type") {
            match kind {
                Value::String(name) => self.add(name),
                Value::Array(names) => names.iter().filter_map(Value::as_str).for_each(|n| {
                    self.add(n);
                }),
                _ => self.any = true,
            }
        } else if let Some(value) = object.get("const") {
            self.add_value(value);
        } else if let Some(values) = object.get("enum").and_then(Value::as_array) {
            values.iter().for_each(|v| self.add_value(v));
        } else if let Some(branches) = object
            .get("anyOf")
            .or_else(|| object.get("oneOf"))
            .and_then(Value::as_array)
        {
            for branch in branches {
                self.collect(root, branch, depth + 1);
            }
        } else if let Some(first) = object
            .get("allOf")
            .and_then(Value::as_array)
            .and_then(|all| all.first())
        {
            self.collect(root, first, depth + 1);
        } else {
            self.any = true;
        }
    }

    fn add(&mut self, name: &str) {
        match name {
            "null" => self.null = true,
            "boolean" => self.boolean = true,
            "integer" => self.integer = true,
            "number" => self.number = true,
            "string" => self.string = true,
            "array" => self.array = true,
            "object" => self.object = true,
            _ => self.any = true,
        }
    }

    fn add_value(&mut self, value: &Value) {
        match value {
            Value::Null => self.null = true,
            Value::Bool(_) => self.boolean = true,
            Value::Number(n) if n.is_f64() => self.number = true,
            Value::Number(_) => self.integer = true,
            Value::String(_) => self.string = true,
            Value::Array(_) => self.array = true,
            Value::Object(_) => self.object = true,
        }
    }

    /// "an integer or null", for error messages.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.integer, "an integer"),
            (self.number, "a number"),
            (self.boolean, "true or false"),
            (self.string, "a string"),
            (self.array, "a list"),
            (self.object, "a JSON object"),
            (self.null, "null"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if names.is_empty() {
            "nothing (the schema accepts no value)".to_owned()
        } else {
            names.join(" or ")
        }
    }
}

/// The schema of an array's items: `items`, or the `items` of the first `anyOf`/`oneOf` branch
/// that has one.
pub fn items<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    let schema = resolve(root, schema);
    if let Some(items) = schema
        .get("items")
        .filter(|i| i.is_object() || i.is_boolean())
    {
        return Some(items);
    }
    schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)?
        .iter()
        .find_map(|branch| {
            resolve(root, branch)
                .get("items")
                .filter(|i| i.is_object() || i.is_boolean())
        })
}

/// `name` as one JSON Pointer segment, with its leading `/`.
pub fn pointer_segment(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nullable_forms_count_as_their_type() {
        let root = json!({
            "$defs": {"Mode": {"type": "string", "enum": ["a", "b"]}},
            "properties": {
                "a": {"type": ["integer", "null"]},
                "b": {"anyOf": [{"$ref": "#/$defs/Mode"}, {"type": "null"}]},
                "c": {"enum": [1, 2]},
                "d": {},
                "e": {"allOf": [{"$ref": "#/$defs/Mode"}]}
            }
        });
        let t = |name: &str| Types::of(&root, &root["properties"][name]);
        assert!(t("a").integer && t("a").null && !t("a").string);
        assert!(t("b").string && t("b").null && !t("b").any);
        assert!(t("c").integer && !t("c").string);
        assert!(t("d").any);
        assert!(t("e").string);
    }

    #[test]
    fn reference_cycles_end() {
        let root = json!({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"});
        let _ = resolve(&root, &root);
        assert!(Types::of(&root, &root).any);
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(pointer_segment("a/b~c"), "/a~1b~0c");
    }
}
