//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`, generated from the same method
//! schemas that route and check requests: read-only methods become `GET` operations whose query
//! parameters are the params schema's properties, mutating ones `POST` operations with the params
//! schema as the JSON request body; `200` carries the result schema and every failure the
//! `ErrorResponse` schema. Each schema's `$defs` are lifted into `components.schemas` as
//! `<Moniker><Method><Def>` and its `$ref`s rewritten to point there, so every reference resolves
//! inside the document.

use crate::routes::routable;
use crate::schema::resolve;
use koi_protocol::calls::StatusReport;
use koi_protocol::{ErrorObject, Manifest, MethodSpec};
use serde_json::{Map, Value, json};
use std::collections::HashSet;

/// Keywords whose values are data, not schemas: `$ref` inside them is not a reference.
const DATA_KEYWORDS: [&str; 5] = ["const", "enum", "default", "examples", "example"];

/// The OpenAPI 3.1 document for the plugins described by `manifests`.
pub fn openapi(manifests: &[Manifest]) -> Value {
    let mut components = Components::default();
    components.import_named("ErrorObject", &schema_of::<ErrorObject>());
    components.insert(
        "ErrorResponse",
        json!({
            "type": "object",
            "description": "Every failure: the JSON-RPC error object of the call.",
            "required": ["error"],
            "properties": {"error": {"$ref": "#/components/schemas/ErrorObject"}}
        }),
    );
    let status_report = components.import_named("StatusReport", &schema_of::<StatusReport>());

    let mut paths = Map::new();
    daemon_paths(&mut paths);
    let mut tags = vec![json!({"name": "daemon", "description": "The daemon itself."})];
    let mut seen = HashSet::new();
    for manifest in manifests {
        if !koi_protocol::manifest::is_valid_moniker(&manifest.name)
            || !seen.insert(manifest.name.as_str())
        {
            continue;
        }
        let moniker = manifest.name.as_str();
        tags.push(json!({"name": moniker, "description": manifest.summary}));
        paths.insert(
            format!("/v1/{moniker}/status"),
            json!({"get": {
                "tags": [moniker],
                "operationId": format!("{moniker}.status"),
                "summary": format!("The status of koi-{moniker}"),
                "responses": responses(status_report.clone(), &[404, 409, 422, 502, 503, 504]),
            }}),
        );
        for method in &manifest.methods {
            if !routable(&method.name)
                || method.name == koi_protocol::calls::STATUS
                || method.local_only
            {
                continue;
            }
            let (path, item) = operation(&mut components, moniker, method);
            paths.insert(path, item);
        }
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Koi daemon REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The local REST API of `koi daemon`. Every plugin method is at \
                /v1/<plugin>/<method>: read-only methods take GET with their params as query \
                parameters (repeat a key for a list), methods that change state take POST with a \
                JSON body (content-type: application/json). Success bodies are the method's result \
                exactly; failures are {\"error\": {\"code\", \"message\", \"data\"}} with the \
                JSON-RPC error of the call."
        },
        "tags": tags,
        "paths": paths,
        "components": {"schemas": components.schemas},
    })
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

fn daemon_paths(paths: &mut Map<String, Value>) {
    let get = |id: &str, summary: &str, ok: Value, errors: &[u16]| {
        json!({"get": {
            "tags": ["daemon"],
            "operationId": id,
            "summary": summary,
            "responses": responses(ok, errors),
        }})
    };
    paths.insert(
        "/healthz".into(),
        get(
            "healthz",
            "The daemon process is alive",
            json!({"type": "object", "properties": {"status": {"const": "alive"}}, "required": ["status"]}),
            &[],
        ),
    );
    paths.insert(
        "/readyz".into(),
        get(
            "readyz",
            "Every plugin has completed its handshake",
            json!({"type": "object", "properties": {"ready": {"const": true}}, "required": ["ready"]}),
            &[503],
        ),
    );
    paths.insert(
        "/v1/status".into(),
        get(
            "status",
            "The daemon's status and every plugin's",
            json!({}),
            &[502, 503, 504],
        ),
    );
    paths.insert(
        "/v1/openapi.json".into(),
        get("openapi", "This document", json!({"type": "object"}), &[]),
    );
}

/// The path and path item of one plugin method.
fn operation(components: &mut Components, moniker: &str, method: &MethodSpec) -> (String, Value) {
    let prefix = format!("{}{}", pascal(moniker), pascal(&method.name));
    let params = components.import(&format!("{prefix}Params"), &prefix, &method.params);
    let result = components.import(&format!("{prefix}Result"), &prefix, &method.result);

    let mut description = method.description.clone().unwrap_or_default();
    let mut note = |text: &str| {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(text);
    };
    if method.interactive {
        note(
            "Interactive: the method asks a person questions at a terminal, so over REST it \
             answers 409 when it needs an answer; run it with the koi CLI instead.",
        );
    }
    if method.long_running {
        note("Long-running: the method may not answer until it is cancelled.");
    }
    if method.stream_item.is_some() {
        note(
            "The method streams items on the command line; over REST only its result is returned.",
        );
    }

    let mut errors = vec![400, 404, 422, 502, 503, 504];
    if method.interactive {
        errors.push(409);
    }
    let mut op = json!({
        "tags": [moniker],
        "operationId": format!("{moniker}.{}", method.name),
        "summary": method.summary,
        "x-koi-mutating": method.mutating,
        "x-koi-interactive": method.interactive,
        "x-koi-long-running": method.long_running,
    });
    if !description.is_empty() {
        op["description"] = Value::String(description);
    }
    let verb = if method.mutating {
        errors.extend([408, 413, 415]);
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": params.root(&method.params)}},
        });
        "post"
    } else {
        op["parameters"] = Value::Array(query_parameters(&params, &method.params));
        "get"
    };
    op["responses"] = responses(result.root(&method.result), &errors);
    let mut item = Map::new();
    item.insert(verb.to_owned(), op);
    (
        format!("/v1/{moniker}/{}", method.name),
        Value::Object(item),
    )
}

/// One `in: query` parameter per property of the params schema.
fn query_parameters(rewriter: &Rewriter, schema: &Value) -> Vec<Value> {
    let object = resolve(schema, schema);
    let required: HashSet<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let types = crate::schema::Types::of(schema, property);
            let rewritten = rewriter.rewrite(property);
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(name.as_str()),
            });
            if types.object && !types.any {
                // Objects travel as JSON text in one query value.
                parameter["content"] = json!({"application/json": {"schema": rewritten}});
            } else {
                parameter["schema"] = rewritten;
                if types.array {
                    parameter["style"] = json!("form");
                    parameter["explode"] = json!(true);
                }
            }
            if let Some(text) = resolve(schema, property)
                .get("description")
                .and_then(Value::as_str)
            {
                parameter["description"] = json!(text);
            }
            parameter
        })
        .collect()
}

fn responses(ok: Value, errors: &[u16]) -> Value {
    let mut map = Map::new();
    map.insert(
        "200".into(),
        json!({"description": "Success.", "content": {"application/json": {"schema": ok}}}),
    );
    let mut sorted = errors.to_vec();
    sorted.sort_unstable();
    for status in sorted {
        map.insert(
            status.to_string(),
            json!({
                "description": error_description(status),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            }),
        );
    }
    Value::Object(map)
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => {
            "The params break the method's schema (`error.data.path` names the field), or the body is not JSON."
        }
        404 => "No such plugin or method is running in the daemon.",
        408 => "The request body was not received in time.",
        409 => "The method needs a person to answer at a terminal; run it with the koi CLI.",
        413 => "The request body is larger than the daemon accepts.",
        415 => "The request body is not declared as `content-type: application/json`.",
        422 => "The method failed; `error.data.hint` says what to do next.",
        502 => "The plugin or daemon answered something it should not have (a bug to report).",
        503 => "Not ready: the plugin is unavailable, still starting, or the call was cancelled.",
        504 => "The call timed out.",
        _ => "An error.",
    }
}

/// `my-tool` → `MyTool`, `list_things` → `ListThings`; only characters OpenAPI allows in component
/// names survive.
fn pascal(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `components.schemas` under construction.
#[derive(Default)]
struct Components {
    schemas: Map<String, Value>,
    reserved: HashSet<String>,
}

impl Components {
    fn insert(&mut self, name: &str, schema: Value) {
        self.reserved.insert(name.to_owned());
        self.schemas.insert(name.to_owned(), schema);
    }

    /// `preferred`, or `preferred2`, `preferred3`… if it is taken.
    fn reserve(&mut self, preferred: &str) -> String {
        let base = if preferred.is_empty() {
            "Schema"
        } else {
            preferred
        };
        let mut name = base.to_owned();
        let mut n = 2;
        while self.reserved.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        self.reserved.insert(name.clone());
        name
    }

    /// Imports a schema that is a component in its own right (`ErrorObject`): returns a reference
    /// to it.
    fn import_named(&mut self, name: &str, schema: &Value) -> Value {
        let rewriter = self.import(name, "", schema);
        if let Some(root) = &rewriter.root {
            return json!({ "$ref": root });
        }
        let root = rewriter.rewrite(&strip_root(schema));
        let name = self.reserve(name);
        self.schemas.insert(name.clone(), root);
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// Lifts `schema`'s `$defs` (and `definitions`) into components named `<prefix><Def>`; if
    /// something refers to the schema's root, the root becomes the component `root_name` too.
    fn import(&mut self, root_name: &str, prefix: &str, schema: &Value) -> Rewriter {
        let mut rewriter = Rewriter::default();
        let mut lifted = Vec::new();
        for container in ["$defs", "definitions"] {
            let Some(defs) = schema.get(container).and_then(Value::as_object) else {
                continue;
            };
            for (def, body) in defs {
                let name = self.reserve(&format!("{prefix}{}", sanitize(def)));
                rewriter.defs.push((
                    format!(
                        "#/{container}/{}",
                        def.replace('~', "~0").replace('/', "~1")
                    ),
                    format!("#/components/schemas/{name}"),
                ));
                lifted.push((name, body));
            }
        }
        let mut refers_to_root = false;
        visit_refs(schema, &mut |reference| {
            if reference.starts_with('#') && rewriter.def_target(reference).is_none() {
                refers_to_root = true;
            }
        });
        if refers_to_root {
            let name = self.reserve(root_name);
            rewriter.root = Some(format!("#/components/schemas/{name}"));
            let root = rewriter.rewrite(&strip_root(schema));
            self.schemas.insert(name, root);
        }
        for (name, body) in lifted {
            let body = rewriter.rewrite(body);
            self.schemas.insert(name, body);
        }
        rewriter
    }
}

/// A def name as a component-name fragment: `My Type<T>` → `My_Type_T_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The schema without its `$defs`, `definitions`, `$schema` and `$id`.
fn strip_root(schema: &Value) -> Value {
    let mut root = schema.clone();
    if let Some(object) = root.as_object_mut() {
        for key in ["$defs", "definitions", "$schema", "$id"] {
            object.remove(key);
        }
    }
    root
}

/// Rewrites the local references of one imported schema to point into `components.schemas`.
#[derive(Debug, Default)]
struct Rewriter {
    /// (`#/$defs/X`, `#/components/schemas/PrefixX`)
    defs: Vec<(String, String)>,
    /// Where the schema's root went, when something refers to it.
    root: Option<String>,
}

impl Rewriter {
    fn def_target(&self, reference: &str) -> Option<String> {
        self.defs.iter().find_map(|(from, to)| {
            let rest = reference.strip_prefix(from.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
        })
    }

    fn target(&self, reference: &str) -> Option<String> {
        if !reference.starts_with('#') {
            return None;
        }
        self.def_target(reference).or_else(|| {
            self.root
                .as_ref()
                .map(|root| format!("{root}{}", &reference[1..]))
        })
    }

    /// The schema to use where the imported schema's root belongs.
    fn root(&self, schema: &Value) -> Value {
        match &self.root {
            Some(root) => json!({"$ref": root}),
            None => self.rewrite(&strip_root(schema)),
        }
    }

    /// `value` with its references rewritten.
    fn rewrite(&self, value: &Value) -> Value {
        match value {
            Value::Object(object) => Value::Object(
                object
                    .iter()
                    .map(|(key, v)| {
                        let v = match (key.as_str(), v) {
                            ("$ref", Value::String(r)) => {
                                Value::String(self.target(r).unwrap_or_else(|| r.clone()))
                            }
                            (k, v) if DATA_KEYWORDS.contains(&k) => v.clone(),
                            (_, v) => self.rewrite(v),
                        };
                        (key.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.rewrite(v)).collect()),
            other => other.clone(),
        }
    }
}

/// Calls `f` with every `$ref` in `value` (outside data keywords).
fn visit_refs(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Object(object) => {
            for (key, v) in object {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => f(r),
                    (k, _) if DATA_KEYWORDS.contains(&k) => {}
                    _ => visit_refs(v, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| visit_refs(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koi_protocol::LegacyRoute;

    fn method(name: &str, mutating: bool, params: Value, result: Value) -> MethodSpec {
        MethodSpec {
            name: name.into(),
            summary: format!("{name} things"),
            description: None,
            params,
            result,
            cli: None,
            interactive: false,
            long_running: false,
            mutating,
            stream_item: None,
            timeout_ms: None,
            local_only: false,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "my-tool".into(),
            version: "1".into(),
            summary: "A tool".into(),
            description: None,
            methods: vec![
                method(
                    "list_things",
                    false,
                    json!({
                        "type": "object",
                        "$defs": {"Mode": {"enum": ["a", "b"]}},
                        "properties": {
                            "mode": {"$ref": "#/$defs/Mode"},
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "filter": {"type": "object"}
                        },
                        "required": ["mode"]
                    }),
                    json!({
                        "$schema": "https://json-schema.org/draft/2020-12/schema",
                        "type": "array",
                        "items": {"$ref": "#/$defs/Mode"},
                        "$defs": {"Mode": {"enum": ["a", "b", "c"]}}
                    }),
                ),
                method(
                    "tree",
                    true,
                    json!({
                        "type": "object",
                        "properties": {"child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}
                    }),
                    json!({"type": "null"}),
                ),
            ],
            publishes: vec![],
            subscribes: vec![],
            aliases: vec![],
            legacy_routes: vec![LegacyRoute {
                path: "/things".into(),
                method: "list_things".into(),
            }],
            shutdown_grace_ms: None,
        }
    }

    /// Every `$ref` in the document resolves inside it.
    fn assert_refs_resolve(doc: &Value) {
        let mut count = 0;
        visit_refs(doc, &mut |r| {
            count += 1;
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
        });
        assert!(count > 0);
    }

    #[test]
    fn defs_are_lifted_and_every_reference_resolves() {
        let doc = openapi(&[manifest()]);
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(!doc.to_string().contains("$defs"), "{doc:#}");
        assert_refs_resolve(&doc);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["MyToolListThingsMode"], json!({"enum": ["a", "b"]}));
        assert_eq!(
            schemas["MyToolListThingsMode2"],
            json!({"enum": ["a", "b", "c"]})
        );
        assert!(schemas["MyToolTreeParams"].is_object(), "{schemas:#}");
        assert!(schemas["ErrorObject"].is_object() && schemas["StatusReport"].is_object());
    }

    #[test]
    fn read_only_methods_are_get_with_query_parameters() {
        let doc = openapi(&[manifest()]);
        let item = &doc["paths"]["/v1/my-tool/list_things"];
        assert!(item.get("post").is_none());
        let parameters = item["get"]["parameters"].as_array().expect("parameters");
        let by_name = |n: &str| {
            parameters
                .iter()
                .find(|p| p["name"] == n)
                .unwrap_or_else(|| panic!("parameter {n}"))
        };
        assert_eq!(by_name("mode")["required"], true);
        assert_eq!(
            by_name("mode")["schema"]["$ref"],
            "#/components/schemas/MyToolListThingsMode"
        );
        assert_eq!(by_name("tags")["explode"], true);
        assert!(by_name("filter")["content"]["application/json"].is_object());
        assert!(item["get"]["responses"]["400"].is_object());
        assert!(item["get"]["responses"].get("413").is_none());
    }

    #[test]
    fn mutating_methods_are_post_with_a_json_body() {
        let doc = openapi(&[manifest()]);
        let item = &doc["paths"]["/v1/my-tool/tree"];
        assert!(item.get("get").is_none());
        let body = &item["post"]["requestBody"];
        assert_eq!(body["required"], true);
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/MyToolTreeParams"
        );
        assert!(item["post"]["responses"]["413"].is_object());
        assert!(doc["paths"]["/v1/my-tool/status"]["get"].is_object());
        assert!(
            doc["paths"].get("/things").is_none(),
            "legacy routes are not documented"
        );
    }

    #[test]
    fn names_are_pascal_case() {
        assert_eq!(pascal("my-tool"), "MyTool");
        assert_eq!(pascal("list_things"), "ListThings");
        assert_eq!(sanitize("Vec<T>"), "Vec_T_");
    }
}
