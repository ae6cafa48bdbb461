//! Query strings to params: `GET /v1/<moniker>/<method>?port=80&tag=a&tag=b` becomes
//! `{"port": 80, "tag": ["a", "b"]}`, each value converted to the JSON type that the property
//! declares in the method's params schema (integer, number, boolean, string, arrays by repeating the
//! key; `$ref` into `$defs`, `["T","null"]` and `anyOf [T, null]` are understood). Properties the
//! schema does not describe stay strings; the schema check that follows reports them if they are
//! not allowed.

use crate::schema::{Types, items, pointer_segment, resolve};
use serde_json::{Map, Number, Value};

/// Raw values longer than this are cut in error messages.
const SHOWN_VALUE_CHARS: usize = 64;

/// A query value that does not fit its property's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryError {
    /// The failing field as a JSON Pointer (`/port`, `/tags/1`).
    pub path: String,
    /// What is wrong, naming the parameter and the value.
    pub message: String,
}

/// Converts `query` into a params object following `schema`.
pub(crate) fn params_from_query(schema: &Value, query: Option<&str>) -> Result<Value, QueryError> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match grouped.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value.into_owned()),
            None => grouped.push((key.into_owned(), vec![value.into_owned()])),
        }
    }
    let object = resolve(schema, schema);
    let properties = object.get("properties").and_then(Value::as_object);
    let additional = object.get("additionalProperties").filter(|a| a.is_object());
    let mut params = Map::new();
    for (key, raws) in grouped {
        let property = properties.and_then(|p| p.get(&key)).or(additional);
        let value = match property {
            Some(property) => convert(schema, property, &key, &raws)?,
            None => untyped(raws),
        };
        params.insert(key, value);
    }
    Ok(Value::Object(params))
}

/// Values of a parameter the schema does not describe: a string, or a list of strings.
fn untyped(mut raws: Vec<String>) -> Value {
    if raws.len() == 1 {
        Value::String(raws.remove(0))
    } else {
        Value::Array(raws.into_iter().map(Value::String).collect())
    }
}

fn convert(
    root: &Value,
    property: &Value,
    key: &str,
    raws: &[String],
) -> Result<Value, QueryError> {
    let types = Types::of(root, property);
    let path = pointer_segment(key);
    if types.array && (raws.len() > 1 || !types.has_scalar()) {
        let item_types = match items(root, property) {
            Some(item) => Types::of(root, item),
            None => Types {
                any: true,
                ..Types::default()
            },
        };
        return raws
            .iter()
            .enumerate()
            .map(|(i, raw)| scalar(&item_types, raw, key, &format!("{path}/{i}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    match raws {
        [raw] => scalar(&types, raw, key, &path),
        _ => Err(QueryError {
            message: format!(
                "the query parameter `{key}` was given {} times, but it takes one value",
                raws.len()
            ),
            path,
        }),
    }
}

fn scalar(types: &Types, raw: &str, key: &str, path: &str) -> Result<Value, QueryError> {
    if types.any {
        return Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())));
    }
    if types.null && !types.string && (raw.is_empty() || raw == "null") {
        return Ok(Value::Null);
    }
    if types.integer {
        if let Some(value) = integer(raw) {
            return Ok(value);
        }
    }
    if types.number {
        if let Ok(number) = serde_json::from_str::<Number>(raw) {
            return Ok(Value::Number(number));
        }
    }
    if types.boolean {
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "" => return Ok(Value::Bool(true)),
            "false" | "0" => return Ok(Value::Bool(false)),
            _ => {}
        }
    }
    if types.object || types.array {
        match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) if types.object => return Ok(v),
            Ok(v @ Value::Array(_)) if types.array => return Ok(v),
            _ => {}
        }
    }
    if types.string {
        return Ok(Value::String(raw.to_owned()));
    }
    Err(QueryError {
        path: path.to_owned(),
        message: format!(
            "the query parameter `{key}` must be {}, not `{}`",
            types.describe(),
            shown(raw)
        ),
    })
}

/// An integer written in decimal (`80`, `-3`, `1e3`); a whole value too large for 64 bits stays a
/// floating-point number, which JSON Schema still counts as an integer.
fn integer(raw: &str) -> Option<Value> {
    let number = serde_json::from_str::<Number>(raw).ok()?;
    if number.is_i64() || number.is_u64() {
        return Some(Value::Number(number));
    }
    let float = number.as_f64()?;
    if !float.is_finite() || float.fract() != 0.0 {
        return None;
    }
    // i64::MIN and i64::MAX + 1 are both exactly representable as f64.
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&float) {
        return Some(Value::from(float as i64));
    }
    Some(Value::Number(number))
}

fn shown(raw: &str) -> String {
    if raw.chars().count() <= SHOWN_VALUE_CHARS {
        raw.to_owned()
    } else {
        let cut: String = raw.chars().take(SHOWN_VALUE_CHARS).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "$defs": {"Mode": {"type": "string", "enum": ["fast", "slow"]}},
            "properties": {
                "count": {"type": "integer", "minimum": 1},
                "ratio": {"type": "number"},
                "verbose": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "ports": {"type": "array", "items": {"type": "integer"}},
                "mode": {"$ref": "#/$defs/Mode"},
                "limit": {"type": ["integer", "null"]},
                "level": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "name": {"type": "string"},
                "filter": {"type": "object"}
            }
        })
    }

    fn convert(query: &str) -> Result<Value, QueryError> {
        params_from_query(&schema(), Some(query))
    }

    #[test]
    fn converts_each_declared_type() {
        assert_eq!(
            convert("count=3&ratio=0.5&verbose=true&tags=a&tags=b&ports=80&mode=fast&limit=7&level=&name=42")
                .expect("valid"),
            json!({"count": 3, "ratio": 0.5, "verbose": true, "tags": ["a", "b"], "ports": [80],
                   "mode": "fast", "limit": 7, "level": null, "name": "42"})
        );
    }

    #[test]
    fn single_array_value_is_a_list_and_flags_default_true() {
        assert_eq!(
            convert("tags=x&verbose").expect("valid"),
            json!({"tags": ["x"], "verbose": true})
        );
        assert_eq!(
            convert("verbose=0").expect("valid"),
            json!({"verbose": false})
        );
    }

    #[test]
    fn percent_encoding_and_plus_are_decoded() {
        assert_eq!(
            convert("name=a+b%2Fc&filter=%7B%22x%22%3A1%7D").expect("valid"),
            json!({"name": "a b/c", "filter": {"x": 1}})
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = convert("count=abc").expect_err("not an integer");
        assert_eq!(e.path, "/count");
        assert!(
            e.message.contains("`count`") && e.message.contains("an integer"),
            "{}",
            e.message
        );
        assert_eq!(
            convert("ports=1&ports=x").expect_err("item").path,
            "/ports/1"
        );
        assert_eq!(convert("verbose=maybe").expect_err("bool").path, "/verbose");
        assert_eq!(convert("count=1.5").expect_err("fraction").path, "/count");
        assert_eq!(
            convert("count=1&count=2").expect_err("twice").path,
            "/count"
        );
    }

    #[test]
    fn large_and_exponent_integers() {
        assert_eq!(convert("count=1e3").expect("int"), json!({"count": 1000}));
        let big = convert("count=100000000000000000000").expect("big");
        assert_eq!(big["count"].as_f64(), Some(1e20));
    }

    #[test]
    fn unknown_keys_stay_strings() {
        assert_eq!(
            convert("zzz=1&zzz=2&yyy=3").expect("passes through"),
            json!({"zzz": ["1", "2"], "yyy": "3"})
        );
        assert_eq!(
            params_from_query(&json!(true), None).expect("empty"),
            json!({})
        );
    }

    #[test]
    fn additional_properties_schema_types_unknown_keys() {
        let schema = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert_eq!(
            params_from_query(&schema, Some("a=1")).expect("int"),
            json!({"a": 1})
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let e = convert(&format!("count={}", "x".repeat(1000))).expect_err("bad");
        assert!(e.message.len() < 200, "{}", e.message);
    }
}
