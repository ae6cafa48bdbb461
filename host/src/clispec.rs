//! Turns manifests into `clap` commands and parsed arguments back into JSON params.
//!
//! Every property of a method's params schema becomes an argument: positional if the manifest's
//! `cli.positional` lists it, otherwise `--kebab-case-name`. The JSON type decides the parsing:
//! strings as given, integers and numbers parsed, booleans as switches, arrays as repeatable flags
//! (or a trailing variadic positional), enums as fixed choices. Properties of object type cannot be
//! given on the command line. Help text comes from the schema's `description`s.

use crate::sanitize;
use clap::{Arg, ArgAction, ArgMatches, Command};
use koi_protocol::schema_read;
use koi_protocol::{Manifest, MethodSpec};
use serde_json::{Map, Value};

/// The JSON type of a params property, as far as the CLI cares.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Array(Box<Kind>),
    Unsupported,
}

#[derive(Debug, Clone)]
struct Property {
    name: String,
    kind: Kind,
    required: bool,
    help: Option<String>,
    choices: Option<Vec<String>>,
    default: Option<String>,
}

/// `schema` with local `$ref`s followed (shared reader), and `Option<T>` — `anyOf`/`oneOf`
/// `[T, null]` — taken as `T`, so its description, enum and type are found.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let current = schema_read::resolve(root, schema);
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = current.get(key) {
            let non_null: Vec<&Value> = branches
                .iter()
                .filter(|b| b.get("type") != Some(&Value::from("null")))
                .collect();
            if non_null.len() == 1 && non_null[0].get("const").is_none() {
                return schema_read::resolve(root, non_null[0]);
            }
        }
    }
    current
}

fn kind_of(root: &Value, schema: &Value) -> Kind {
    let schema = resolve(root, schema);
    if choices_of(schema).is_some() {
        return Kind::String;
    }
    let type_name = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "",
    };
    match type_name {
        "string" => Kind::String,
        "integer" => Kind::Integer,
        "number" => Kind::Number,
        "boolean" => Kind::Boolean,
        "array" => match schema.get("items") {
            Some(items) => match kind_of(root, items) {
                Kind::Array(_) | Kind::Unsupported => Kind::Unsupported,
                inner => Kind::Array(Box::new(inner)),
            },
            None => Kind::Unsupported,
        },
        _ => Kind::Unsupported,
    }
}

fn choices_of(schema: &Value) -> Option<Vec<String>> {
    if let Some(Value::Array(values)) = schema.get("enum") {
        return Some(
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        );
    }
    let branches = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))?
        .as_array()?;
    let consts: Vec<String> = branches
        .iter()
        .filter_map(|b| b.get("const")?.as_str().map(str::to_owned))
        .collect();
    (consts.len() == branches.len() && !consts.is_empty()).then_some(consts)
}

fn properties(params: &Value) -> Vec<Property> {
    let required: Vec<&str> = params
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = params.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let resolved = resolve(params, schema);
            Property {
                name: name.clone(),
                kind: kind_of(params, schema),
                required: required.contains(&name.as_str()),
                help: schema
                    .get("description")
                    .or_else(|| resolved.get("description"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                choices: choices_of(resolved),
                // An empty default (`[]`, `{}`, `""`) is no default worth showing in help.
                default: schema
                    .get("default")
                    .filter(|d| {
                        !(d.is_null()
                            || d.as_array().is_some_and(Vec::is_empty)
                            || d.as_object().is_some_and(Map::is_empty)
                            || d.as_str().is_some_and(str::is_empty))
                    })
                    .map(|d| match d {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }),
            }
        })
        .collect()
}

/// The `clap` command for one verb.
pub fn verb_command(spec: &MethodSpec) -> Command {
    // Help text comes from the plugin: control characters are escaped (`crate::sanitize`).
    let summary = sanitize::line(&spec.summary).into_owned();
    let mut command = Command::new(spec.name.clone()).about(summary.clone());
    if let Some(description) = &spec.description {
        command = command.long_about(format!("{summary}\n\n{}", sanitize::text(description)));
    }
    let cli = spec.cli.clone().unwrap_or_default();
    if !cli.examples.is_empty() {
        let examples: Vec<String> = cli.examples.iter().map(|e| format!("  {e}")).collect();
        command = command.after_help(format!("Examples:\n{}", examples.join("\n")));
    }
    let props = properties(&spec.params);
    for (index, field) in cli.positional.iter().enumerate() {
        let Some(p) = props.iter().find(|p| &p.name == field) else {
            continue;
        };
        let mut arg = Arg::new(p.name.clone())
            .value_name(p.name.to_uppercase())
            .index(index + 1)
            .required(p.required);
        if let Kind::Array(_) = p.kind {
            arg = arg.action(ArgAction::Append).num_args(1..);
        }
        command = command.arg(decorate(arg, p));
    }
    for p in props
        .iter()
        .filter(|p| !cli.positional.contains(&p.name) && p.kind != Kind::Unsupported)
    {
        let mut arg = Arg::new(p.name.clone())
            .long(p.name.replace('_', "-"))
            .required(p.required);
        if let Some(letter) = cli.short.get(&p.name) {
            arg = arg.short(*letter);
        }
        arg = match &p.kind {
            Kind::Boolean => arg.action(ArgAction::SetTrue),
            Kind::Array(_) => arg.action(ArgAction::Append).value_name(value_name(p)),
            _ => arg.action(ArgAction::Set).value_name(value_name(p)),
        };
        command = command.arg(decorate(arg, p));
    }
    command
}

fn value_name(p: &Property) -> String {
    match p.kind {
        Kind::Integer | Kind::Number => "N".to_owned(),
        _ => p.name.to_uppercase().replace('_', "-"),
    }
}

fn decorate(mut arg: Arg, p: &Property) -> Arg {
    let mut help = p.help.clone().unwrap_or_default();
    if let Some(default) = &p.default {
        if p.kind != Kind::Boolean {
            help.push_str(&format!(" [default: {default}]"));
        }
    }
    if !help.is_empty() {
        arg = arg.help(sanitize::text(help.trim()).into_owned());
    }
    if let Some(choices) = &p.choices {
        arg = arg.value_parser(clap::builder::PossibleValuesParser::new(choices.clone()));
    }
    arg
}

/// The `clap` command for a plugin: `koi <moniker>` with one subcommand per CLI verb.
pub fn plugin_command(manifest: &Manifest) -> Command {
    let mut command = Command::new(manifest.name.clone())
        .about(sanitize::line(&manifest.summary).into_owned())
        .subcommand_required(true)
        .arg_required_else_help(true)
        .disable_help_subcommand(true);
    if let Some(description) = &manifest.description {
        command = command.long_about(format!(
            "{}\n\n{}",
            sanitize::line(&manifest.summary),
            sanitize::text(description)
        ));
    }
    for spec in manifest.methods.iter().filter(|m| m.cli.is_some()) {
        command = command.subcommand(verb_command(spec));
    }
    // Every plugin answers the protocol's `status`, so every plugin has this verb.
    command.subcommand(
        Command::new(STATUS_VERB)
            .about("Show this plugin's state and details (its line in `koi status`)"),
    )
}

/// The verb every plugin gets for its protocol `status` method.
pub const STATUS_VERB: &str = "status";

/// Builds the params object from parsed arguments, or says which argument is wrong.
pub fn params_from_matches(spec: &MethodSpec, matches: &ArgMatches) -> Result<Value, String> {
    let mut params = Map::new();
    for p in properties(&spec.params) {
        if p.kind == Kind::Unsupported || matches.try_get_raw(&p.name).ok().flatten().is_none() {
            continue;
        }
        let label = flag_label(spec, &p.name);
        let value = match &p.kind {
            Kind::Boolean => {
                if !matches.get_flag(&p.name) {
                    continue;
                }
                Value::Bool(true)
            }
            Kind::Array(inner) => {
                let raw: Vec<String> = matches
                    .get_many::<String>(&p.name)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default();
                Value::Array(
                    raw.iter()
                        .map(|r| convert(inner, r, &label))
                        .collect::<Result<_, _>>()?,
                )
            }
            kind => match matches.get_one::<String>(&p.name) {
                Some(raw) => convert(kind, raw, &label)?,
                None => continue,
            },
        };
        params.insert(p.name.clone(), value);
    }
    Ok(Value::Object(params))
}

/// How argument `name` of `spec` is written on the command line: `--kebab-name` or `<NAME>`.
pub(crate) fn flag_label(spec: &MethodSpec, name: &str) -> String {
    let positional = spec
        .cli
        .as_ref()
        .is_some_and(|c| c.positional.iter().any(|p| p == name));
    if positional {
        format!("<{}>", name.to_uppercase())
    } else {
        format!("--{}", name.replace('_', "-"))
    }
}

fn convert(kind: &Kind, raw: &str, label: &str) -> Result<Value, String> {
    match kind {
        Kind::Integer => raw
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<u64>().map(Value::from))
            .map_err(|_| format!("invalid value '{raw}' for {label}: expected a whole number")),
        Kind::Number => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("invalid value '{raw}' for {label}: expected a number")),
        Kind::Boolean => match raw {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "invalid value '{raw}' for {label}: expected true or false"
            )),
        },
        _ => Ok(Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use koi_protocol::CliSpec;
    use serde_json::json;

    fn spec() -> MethodSpec {
        MethodSpec {
            name: "announce".into(),
            summary: "Announce".into(),
            description: None,
            params: json!({
                "type": "object",
                "required": ["name", "port"],
                "properties": {
                    "name": {"type": "string", "description": "Instance name"},
                    "port": {"type": "integer", "minimum": 1},
                    "txt": {"type": "array", "items": {"type": "string"}},
                    "verbose_log": {"type": "boolean", "default": false},
                    "ratio": {"type": ["number", "null"]},
                    "proto": {"$ref": "#/$defs/Proto"},
                    "nested": {"type": "object"}
                },
                "$defs": {"Proto": {"type": "string", "enum": ["tcp", "udp"]}}
            }),
            result: json!({}),
            cli: Some(CliSpec {
                positional: vec!["name".into(), "port".into()],
                ..Default::default()
            }),
            interactive: false,
            long_running: false,
            mutating: true,
            stream_item: None,
            timeout_ms: None,
            local_only: false,
        }
    }

    fn parse(args: &[&str]) -> Result<Value, String> {
        let spec = spec();
        let matches = verb_command(&spec)
            .try_get_matches_from(std::iter::once("announce").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        params_from_matches(&spec, &matches)
    }

    #[test]
    fn converts_each_kind() {
        let v = parse(&[
            "web",
            "8080",
            "--txt",
            "a=1",
            "--txt",
            "b=2",
            "--verbose-log",
            "--ratio",
            "0.5",
            "--proto",
            "udp",
        ])
        .expect("valid");
        assert_eq!(
            v,
            json!({"name": "web", "port": 8080, "txt": ["a=1", "b=2"], "verbose_log": true, "ratio": 0.5, "proto": "udp"})
        );
        assert_eq!(
            parse(&["web", "80"]).expect("minimal"),
            json!({"name": "web", "port": 80})
        );
    }

    #[test]
    fn bad_values_name_the_argument() {
        let e = parse(&["web", "eighty"]).expect_err("not a number");
        assert!(e.contains("<PORT>") && e.contains("whole number"), "{e}");
        assert!(parse(&["web", "80", "--proto", "sctp"]).is_err());
        assert!(parse(&["web"]).is_err());
        assert!(
            parse(&["web", "80", "--nested", "{}"]).is_err(),
            "object params are not on the CLI"
        );
    }
}
