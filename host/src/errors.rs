//! How the CLI tells the user a command failed, beyond the one-paragraph `error:` text of
//! [`crate::app::report`]: errors as JSON under `--json` (`{"error":{"code","message","plugin",
//! "next"}}` on stderr, same exit codes), a missing plugin named with where koi looked, a schema
//! violation in the user's own arguments said in their terms (`--port must be 1–65535`), and a
//! daemon that died mid-command (what may have happened, and how to check).

use crate::sanitize;
use koi_protocol::{ErrorObject, MethodSpec, codes};
use serde_json::{Value, json};
use std::io::Write;

/// Prints `e` as one JSON object on stderr (`--json`): the JSON-RPC `code`, the `message`, the
/// `plugin` it concerns (or null) and the `next` step (or null); `path` for a schema violation.
pub fn print_json(plugin: Option<&str>, e: &ErrorObject) {
    let path = e
        .data
        .as_ref()
        .and_then(|d| d.get("path"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut error = json!({
        "code": e.code,
        "message": e.message,
        "plugin": plugin,
        "next": e.hint(),
    });
    if !path.is_null() {
        error["path"] = path;
    }
    let line = sanitize::json(&json!({ "error": error }));
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// A command-line usage error (from `clap` or the argument conversion) as an [`ErrorObject`], for
/// `--json`: the first line of the text without its `error:` prefix, with the help command next.
pub fn usage(text: &str, help: &str) -> ErrorObject {
    let message = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid command line");
    let message = message.strip_prefix("error: ").unwrap_or(message);
    ErrorObject::new(codes::INVALID_PARAMS, message.to_owned()).with_hint(format!("Run `{help}`."))
}

/// `koi <word> …` where `<word>` is neither a command nor an installed plugin: says that no
/// `koi-<word>` was found, lists where koi looked, and suggests a command only when one is close.
pub fn not_installed(word: &str, dirs: &[std::path::PathBuf], root: &clap::Command) -> ErrorObject {
    let commands: Vec<String> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect();
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let suggestion = closest(word, &commands)
        .map(|c| format!(" Did you mean `koi {c}`?"))
        .unwrap_or_default();
    ErrorObject::new(
        codes::METHOD_NOT_FOUND,
        format!(
            "not a koi command, and no plugin provides it: no executable koi-{word} in {}",
            if looked.is_empty() {
                "any plugin directory".to_owned()
            } else {
                looked.join(", ")
            }
        ),
    )
    .with_hint(format!(
        "Install koi-{word} into one of those directories (or set KOI_PLUGIN_PATH), or run `koi --help` \
         for the commands there are.{suggestion}"
    ))
}

/// The command in `commands` a typo of `word` most likely meant, if any is close: one edit away
/// for short words, a third of the length for longer ones; ties go to the more similar one
/// (`helo` → `hello`, not `help`).
fn closest<'a>(word: &str, commands: &'a [String]) -> Option<&'a String> {
    let allowed = (word.chars().count() / 3).max(1);
    commands
        .iter()
        .map(|c| {
            (
                strsim::levenshtein(word, c),
                strsim::jaro_winkler(word, c),
                c,
            )
        })
        .filter(|(d, _, _)| *d <= allowed)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

/// A failed call's error as the user should read it: a daemon that closed the connection while
/// the call ran ([`daemon_died`]), or a violation of the params schema by the user's own
/// arguments ([`explain_params_violation`]); any other error unchanged.
pub fn for_call(
    e: ErrorObject,
    daemon_gone: bool,
    moniker: &str,
    verb: &str,
    spec: Option<&MethodSpec>,
    verbose: bool,
) -> ErrorObject {
    match spec {
        _ if daemon_gone => daemon_died(moniker, verb, spec.is_none_or(|s| s.mutating)),
        Some(spec) => explain_params_violation(moniker, spec, e, verbose),
        None => e,
    }
}

/// A violation of `spec`'s params schema by the user's own arguments, in the user's words: the
/// argument as typed on the command line (`--port`, `<SECONDS>`) and what it must be
/// (`--port must be 1–65535`). The JSON Pointer stays in `data.path` and, with `-v`, in the text.
/// Anything else (a violation by a plugin, an unknown path) is returned unchanged.
pub fn explain_params_violation(
    moniker: &str,
    spec: &MethodSpec,
    e: ErrorObject,
    verbose: bool,
) -> ErrorObject {
    let data = e.data.as_ref();
    let field_of = |key: &str| data.and_then(|d| d.get(key)).and_then(Value::as_str);
    // Only this verb's own params: a violation inside a call one plugin made to another keeps
    // its full text (it names the plugins and the path).
    let is_params = e.code == codes::SCHEMA_VIOLATION
        && field_of("payload") == Some("params")
        && field_of("plugin") == Some(moniker)
        && field_of("name") == Some(spec.name.as_str());
    let path = data.and_then(|d| d.get("path")).and_then(Value::as_str);
    let Some(field) = path
        .filter(|_| is_params)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.split('/').next())
        .filter(|f| !f.is_empty())
    else {
        return e;
    };
    let Some(schema) = spec.params.get("properties").and_then(|p| p.get(field)) else {
        return e;
    };
    let schema = koi_protocol::schema_read::resolve(&spec.params, schema);
    let label = crate::clispec::flag_label(spec, field);
    let must = requirement(schema);
    let mut message = format!("{label} {must}");
    if verbose {
        message.push_str(&format!(
            " (params schema of `{}` at {})",
            spec.name,
            path.unwrap_or("/")
        ));
    }
    let mut out = ErrorObject::new(e.code, message);
    out.data = e.data.clone();
    out.with_hint(format!(
        "Run `koi {moniker} {} --help` for what each argument takes.",
        spec.name
    ))
}

/// What a value of `schema` must be, in words.
fn requirement(schema: &Value) -> String {
    let number = |k: &str| schema.get(k).and_then(Value::as_f64);
    let int = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            v.to_string()
        }
    };
    if let Some(Value::Array(values)) = schema.get("enum") {
        let shown: Vec<String> = values
            .iter()
            .map(|v| sanitize::json(v).replace('"', ""))
            .collect();
        return format!("must be one of {}", shown.join(", "));
    }
    match (number("minimum"), number("maximum")) {
        (Some(min), Some(max)) => return format!("must be {}–{}", int(min), int(max)),
        (Some(min), None) => return format!("must be at least {}", int(min)),
        (None, Some(max)) => return format!("must be at most {}", int(max)),
        (None, None) => {}
    }
    match (number("minLength"), number("maxLength")) {
        (Some(min), Some(max)) => {
            return format!("must be {}–{} characters long", int(min), int(max));
        }
        (Some(min), None) => return format!("must be at least {} characters long", int(min)),
        (None, Some(max)) => return format!("must be at most {} characters long", int(max)),
        (None, None) => {}
    }
    if schema.get("pattern").is_some() {
        return "does not have the expected form".to_owned();
    }
    "is not a value this command accepts".to_owned()
}

/// The error for a command whose `koi daemon` connection closed before the answer came: what may
/// have happened to the operation and how to check.
pub fn daemon_died(moniker: &str, verb: &str, mutating: bool) -> ErrorObject {
    let fate = if mutating {
        "it may or may not have completed before the daemon stopped"
    } else {
        "it changes nothing, so running it again is safe"
    };
    ErrorObject::new(
        codes::PLUGIN_UNAVAILABLE,
        format!("koi daemon stopped while `koi {moniker} {verb}` was running: {fate}"),
    )
    .with_hint(format!(
        "Run `koi status` to see whether the daemon is back (without it, commands run the plugin \
         directly), then `koi {moniker} status` to check what koi-{moniker} did."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_verbs_own_params_are_reworded() {
        let spec: MethodSpec = serde_json::from_value(json!({
            "name": "port", "summary": "s", "result": {},
            "params": {"type": "object", "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
            "cli": {"positional": [], "short": {}, "examples": []}
        }))
        .expect("spec");
        let violation = |plugin: &str, name: &str| {
            let mut e = ErrorObject::new(
                codes::SCHEMA_VIOLATION,
                "the params … breaks its declared schema at /port",
            );
            for (k, v) in [
                ("payload", "params"),
                ("path", "/port"),
                ("plugin", plugin),
                ("name", name),
            ] {
                e.set_data_field(k, json!(v));
            }
            e
        };
        let own = explain_params_violation("awkward", &spec, violation("awkward", "port"), false);
        assert_eq!(own.message, "--port must be 1–65535");
        let nested =
            explain_params_violation("awkward", &spec, violation("mdns", "announce"), false);
        assert!(
            nested.message.contains("declared schema at /port"),
            "{}",
            nested.message
        );
    }

    #[test]
    fn requirements_in_words() {
        assert_eq!(
            requirement(&json!({"type": "integer", "minimum": 1, "maximum": 65535})),
            "must be 1–65535"
        );
        assert_eq!(
            requirement(&json!({"enum": ["tcp", "udp"]})),
            "must be one of tcp, udp"
        );
        assert_eq!(
            requirement(&json!({"maxLength": 63})),
            "must be at most 63 characters long"
        );
    }

    #[test]
    fn suggestions_only_when_close() {
        let commands = vec![
            "mdns".to_owned(),
            "status".to_owned(),
            "certmesh".to_owned(),
        ];
        assert_eq!(
            closest("statu", &commands).map(String::as_str),
            Some("status")
        );
        assert_eq!(
            closest("certmsh", &commands).map(String::as_str),
            Some("certmesh")
        );
        assert_eq!(closest("wifi", &commands), None);
        let commands = vec!["help".to_owned(), "hello".to_owned()];
        assert_eq!(
            closest("helo", &commands).map(String::as_str),
            Some("hello")
        );
    }
}
