//! The plugin manifest: everything the host needs to offer a plugin's verbs on the command line,
//! check its messages and route its events, without knowing anything about what the plugin does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a plugin provides, returned in the `initialize` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Manifest {
    /// The moniker: `mdns` for `koi-mdns`. Lower-case letters, digits and `-`.
    pub name: String,
    /// The plugin's release version.
    pub version: String,
    /// One line for `koi help`.
    pub summary: String,
    /// Longer help for `koi help <moniker>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The methods the plugin answers, besides `initialize`, `status` and `shutdown`.
    #[serde(default)]
    pub methods: Vec<MethodSpec>,
    /// Events the plugin publishes, with payload schemas.
    #[serde(default)]
    pub publishes: Vec<EventSpec>,
    /// Event topics the plugin wants delivered (exact names, or a prefix ending in `*`).
    #[serde(default)]
    pub subscribes: Vec<String>,
    /// Deprecated root-level commands (`koi discover`) that map to one of this plugin's methods.
    #[serde(default)]
    pub aliases: Vec<RootAlias>,
    /// Pre-namespacing REST paths (`/discover`) that the daemon's API redirects (301) to
    /// `/v1/<moniker>/<method>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_routes: Vec<LegacyRoute>,
    /// How long the plugin needs between `shutdown` and exiting, in milliseconds, to let its
    /// services drain (connections, sockets, checks in flight). The host waits this long (capped
    /// at [`MAX_SHUTDOWN_GRACE_MS`]) plus its usual step before it sends SIGTERM. Absent: the
    /// host's default step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_ms: Option<u64>,
}

/// The longest shutdown grace a plugin may ask for (`Manifest::shutdown_grace_ms`): 30 s, which
/// keeps `koi daemon` inside systemd's default 90 s stop timeout with every plugin draining.
pub const MAX_SHUTDOWN_GRACE_MS: u64 = 30_000;

impl Manifest {
    /// The method spec named `name`.
    pub fn method(&self, name: &str) -> Option<&MethodSpec> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The event spec for `topic`.
    pub fn event(&self, topic: &str) -> Option<&EventSpec> {
        self.publishes.iter().find(|e| e.topic == topic)
    }

    /// The first reason this manifest cannot be served, with the JSON Pointer of the offending
    /// field inside the manifest (`/methods/1/name`), or `None`. Method names are checked here
    /// because the schema cannot say which names the protocol reserves or that names are unique
    /// (docs/protocol.md §6).
    pub fn first_problem(&self) -> Option<(String, String)> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, method) in self.methods.iter().enumerate() {
            let path = format!("/methods/{i}/name");
            if let Some(problem) = method_name_problem(&method.name) {
                return Some((path, problem));
            }
            if !seen.insert(method.name.as_str()) {
                return Some((
                    path,
                    format!(
                        "`{}` is declared twice; method names must be unique",
                        method.name
                    ),
                ));
            }
        }
        for (i, alias) in self.aliases.iter().enumerate() {
            if self.method(&alias.method).is_none() {
                return Some((
                    format!("/aliases/{i}/method"),
                    format!(
                        "the alias `{}` runs `{}`, which is not among the declared methods",
                        alias.name, alias.method
                    ),
                ));
            }
        }
        None
    }

    /// Whether this plugin subscribed to `topic`.
    pub fn subscribes_to(&self, topic: &str) -> bool {
        self.subscribes
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => pattern == topic,
            })
    }
}

/// One method: its schemas, its command-line shape and how it behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MethodSpec {
    /// The JSON-RPC method name, also the CLI verb (`discover`).
    pub name: String,
    /// One line for help output.
    pub summary: String,
    /// Longer help text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of `params` (an object schema).
    pub params: Value,
    /// JSON Schema of the result.
    pub result: Value,
    /// How the verb appears on the command line; absent for methods only other plugins call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<CliSpec>,
    /// The method asks the user questions through `host/prompt` and friends.
    #[serde(default)]
    pub interactive: bool,
    /// The method may run indefinitely (until cancelled); no request timeout applies.
    #[serde(default)]
    pub long_running: bool,
    /// The method changes state (REST exposes it as POST; read-only methods as GET).
    #[serde(default)]
    pub mutating: bool,
    /// JSON Schema of the items the method streams with `$/item`; absent if it does not stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_item: Option<Value>,
    /// A per-method inactivity timeout in milliseconds, overriding the host default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Served only to callers the host has authenticated as the daemon's own user — the CLI
    /// (over the peer-checked control socket) and other plugins — and never over the REST API,
    /// which has no authentication. For methods that sign, write files or change trust.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// The command-line shape of a verb. Every property of the params schema that is not positional
/// becomes a `--flag` (snake_case names become kebab-case); booleans are switches, arrays repeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CliSpec {
    /// Params properties taken positionally, in order.
    #[serde(default)]
    pub positional: Vec<String>,
    /// Single-letter short flags: property name → letter.
    #[serde(default)]
    pub short: std::collections::BTreeMap<String, char>,
    /// Example command lines shown in help.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// An event a plugin publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventSpec {
    /// Dotted topic, starting with the moniker: `mdns.service.appeared`.
    pub topic: String,
    /// What the event means.
    pub summary: String,
    /// JSON Schema of the payload.
    pub payload: Value,
}

/// A deprecated root-level command kept for compatibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RootAlias {
    /// The root word (`discover`).
    pub name: String,
    /// The method it runs (`discover`).
    pub method: String,
    /// Printed on stderr each time the alias is used.
    pub warning: String,
}

/// A REST path kept for compatibility, answered with a redirect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LegacyRoute {
    /// The old path, starting with `/` (`/discover`).
    pub path: String,
    /// The method it now maps to (`discover`, or `status` for the plugin's status).
    pub method: String,
}

/// Method names the protocol itself uses: a plugin answers them but never declares them.
pub const RESERVED_METHOD_NAMES: &[&str] = &[
    crate::calls::INITIALIZE,
    crate::calls::STATUS,
    crate::calls::SHUTDOWN,
];

/// The longest method name accepted.
pub const MAX_METHOD_NAME_CHARS: usize = 64;

/// Why `name` cannot be a declared method name, or `None` if it can. A method name is a JSON-RPC
/// method, a CLI verb and a REST path segment at once, so it is lower-case ASCII letters, digits,
/// `-` and `_`, starting with a letter, at most [`MAX_METHOD_NAME_CHARS`] long, and not one of
/// [`RESERVED_METHOD_NAMES`] (`host/...` and `$/...` fail the character rule: they are the
/// protocol's own namespaces).
pub fn method_name_problem(name: &str) -> Option<String> {
    if RESERVED_METHOD_NAMES.contains(&name) {
        return Some(format!(
            "`{name}` is a method every plugin answers (docs/protocol.md §7); it must not be declared"
        ));
    }
    if name.starts_with("host/") || name.starts_with("$/") {
        return Some(format!(
            "`{name}` is in the protocol's own namespace (`host/...` and `$/...` are reserved)"
        ));
    }
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_METHOD_NAME_CHARS
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'));
    (!valid).then(|| {
        format!(
            "{} is not a valid method name: use lower-case ASCII letters, digits, `-` and `_`, starting with a letter, at most {MAX_METHOD_NAME_CHARS} characters",
            serde_json::Value::String(name.to_owned())
        )
    })
}

/// Whether `name` is a valid moniker: starts with a lower-case letter, then lower-case letters,
/// digits and single hyphens; at most 32 characters.
pub fn is_valid_moniker(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && !name.ends_with('-')
        && !name.contains("--")
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monikers() {
        for ok in ["mdns", "certmesh", "a", "my-tool2"] {
            assert!(is_valid_moniker(ok), "{ok}");
        }
        for bad in ["", "Mdns", "2fa", "x.py", "a--b", "b-", "x_y"] {
            assert!(!is_valid_moniker(bad), "{bad}");
        }
    }

    #[test]
    fn method_names() {
        for ok in ["greet", "rotate-secret", "open_enrollment", "a1"] {
            assert_eq!(method_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "initialize",
            "status",
            "shutdown",
            "host/x",
            "$/cancel",
            "Bad Name",
            "",
            "Greet",
            "1x",
            "a.b",
        ] {
            assert!(method_name_problem(bad).is_some(), "{bad}");
        }
        assert!(method_name_problem(&"a".repeat(MAX_METHOD_NAME_CHARS + 1)).is_some());
    }

    #[test]
    fn subscription_patterns() {
        let m = Manifest {
            name: "dns".into(),
            version: "1".into(),
            summary: String::new(),
            description: None,
            methods: vec![],
            publishes: vec![],
            subscribes: vec!["mdns.service.*".into(), "cert.renewed".into()],
            aliases: vec![],
            legacy_routes: vec![],
            shutdown_grace_ms: None,
        };
        assert!(m.subscribes_to("mdns.service.appeared"));
        assert!(m.subscribes_to("cert.renewed"));
        assert!(!m.subscribes_to("cert.renewed.x"));
        assert!(!m.subscribes_to("mdns.other"));
    }
}
