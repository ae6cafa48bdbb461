//! `HostServices`: what the host does for plugins. A connection hands every request and
//! notification a plugin sends (`host/prompt`, `host/call`, `host/publish`, `$/progress`,
//! `host/show`, `$/item`, ...) to an implementation of this trait, after checking the payloads it
//! can check itself. The one-shot CLI session implements it; the daemon will too.

use crate::connection::Connection;
use koi_protocol::{ErrorObject, codes};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Handles what plugins ask of the host.
pub trait HostServices: Send + Sync + 'static {
    /// A plugin → host request; the answer goes back to the plugin. Called on the connection's
    /// reader, in the order the plugin sent its requests, so it must not block: work that must
    /// keep that order (`host/publish`: queuing the event for subscribers) is done before the
    /// future is returned; work that waits belongs in the future, which runs in its own task.
    fn request(
        &self,
        from: Connection,
        method: String,
        params: Value,
    ) -> BoxFuture<Result<Value, ErrorObject>>;
    /// A plugin → host notification.
    fn notification(&self, from: &Connection, method: &str, params: Value);
}

/// The error a plugin's `host/call` gets back, blamed on that plugin when it is about what the
/// plugin sent (params the callee's schema or the callee itself refused, a method it does not
/// have): the message names the calling plugin and `data.caller` holds its moniker, which makes
/// `koi` exit 3 (a plugin bug) rather than 2 ("check the arguments": the user's). An error that
/// already names a caller (a deeper `host/call`) keeps it.
pub fn blame_caller(caller: &str, callee: &str, method: &str, mut e: ErrorObject) -> ErrorObject {
    let data = e.data.as_ref();
    let already_blamed = data.and_then(|d| d.get("caller")).is_some();
    let about_the_call = match e.code {
        codes::INVALID_PARAMS | codes::METHOD_NOT_FOUND => true,
        codes::SCHEMA_VIOLATION => {
            data.and_then(|d| d.get("payload")).and_then(Value::as_str) == Some("params")
        }
        _ => false,
    };
    if already_blamed || !about_the_call {
        return e;
    }
    e.message = format!(
        "koi-{caller} made an invalid call to koi-{callee} `{method}`: {}",
        e.message
    );
    e.set_data_field("caller", Value::String(caller.to_owned()));
    e.with_hint(format!(
        "This is a bug in koi-{caller}, not in your command: report it to its author."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(code: i64, data: Option<Value>) -> ErrorObject {
        let mut e = ErrorObject::new(code, "refused");
        e.data = data;
        e
    }

    #[test]
    fn refusals_of_what_the_caller_sent_are_blamed_on_it_once() {
        let params = Some(json!({"payload": "params", "path": "/port"}));
        let blamed = blame_caller("a", "b", "m", error(codes::SCHEMA_VIOLATION, params));
        assert_eq!(blamed.code, codes::SCHEMA_VIOLATION);
        assert_eq!(
            blamed.message,
            "koi-a made an invalid call to koi-b `m`: refused"
        );
        assert_eq!(
            blamed.data.as_ref().map(|d| &d["caller"]),
            Some(&json!("a"))
        );
        // A deeper caller keeps the blame.
        let again = blame_caller("z", "a", "n", blamed.clone());
        assert_eq!(again, blamed);
        for code in [codes::INVALID_PARAMS, codes::METHOD_NOT_FOUND] {
            assert!(
                blame_caller("a", "b", "m", error(code, None))
                    .data
                    .is_some()
            );
        }
        // Failures that are not about what the caller sent stay as they are.
        for e in [
            error(1, None),
            error(codes::PLUGIN_UNAVAILABLE, None),
            error(codes::SCHEMA_VIOLATION, Some(json!({"payload": "result"}))),
        ] {
            assert_eq!(blame_caller("a", "b", "m", e.clone()), e);
        }
    }
}
