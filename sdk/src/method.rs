//! `Method`: one typed async handler plus everything the manifest says about it.
//!
//! The params and result types produce the JSON Schemas (via `schemars`), so the declared schema and
//! the code can never disagree. Builder calls add the CLI shape and behaviour flags.

use crate::{Context, MethodError};
use koi_protocol::{CliSpec, ErrorObject, MethodSpec, codes};
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type Handler =
    Arc<dyn Fn(Context, Value) -> BoxFuture<Result<Value, ErrorObject>> + Send + Sync>;

/// Params for a method that takes none. Its schema is an empty object.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// The JSON Schema of `T`, as a JSON value. Integer properties get the bounds of their Rust type
/// (`format: uint32` → `minimum: 0, maximum: 4294967295`), so the host refuses what the plugin
/// could not deserialise instead of passing it on.
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut schema = schemars::schema_for!(T).to_value();
    bound_integers(&mut schema);
    schema
}

fn bound_integers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let range: Option<(i128, i128)> = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((0, u8::MAX.into())),
                Some("uint16") => Some((0, u16::MAX.into())),
                Some("uint32") => Some((0, u32::MAX.into())),
                Some("uint64" | "uint") => Some((0, u64::MAX.into())),
                Some("int8") => Some((i8::MIN.into(), i8::MAX.into())),
                Some("int16") => Some((i16::MIN.into(), i16::MAX.into())),
                Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                Some("int64" | "int") => Some((i64::MIN.into(), i64::MAX.into())),
                _ => None,
            };
            if let Some((min, max)) = range {
                let number =
                    |n: i128| serde_json::Number::from_i128(n).map_or(Value::Null, Value::Number);
                map.entry("minimum").or_insert_with(|| number(min));
                map.entry("maximum").or_insert_with(|| number(max));
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// A plugin method: name, schemas, CLI shape, behaviour, and the handler.
pub struct Method {
    pub(crate) spec: MethodSpec,
    pub(crate) handler: Handler,
    pub(crate) handles_cancellation: bool,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Method {
    /// A method named `name` (also its CLI verb) answered by `handler`.
    ///
    /// `P` is deserialised from the params (absent params count as `{}`); the handler's `Ok` value
    /// is the result. Both types' schemas go into the manifest.
    pub fn new<P, R, F, Fut>(name: &str, summary: &str, handler: F) -> Self
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + 'static,
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, MethodError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |ctx: Context, params: Value| {
            let handler = handler.clone();
            Box::pin(async move {
                let params = if params.is_null() {
                    Value::Object(Default::default())
                } else {
                    params
                };
                let params: P = serde_json::from_value(params).map_err(|e| {
                    ErrorObject::new(codes::INVALID_PARAMS, format!("invalid params: {e}"))
                })?;
                let result = handler(ctx, params)
                    .await
                    .map_err(MethodError::into_error_object)?;
                serde_json::to_value(result).map_err(|e| {
                    ErrorObject::new(
                        codes::INTERNAL_ERROR,
                        format!("result not serialisable: {e}"),
                    )
                })
            }) as BoxFuture<_>
        });
        Self {
            spec: MethodSpec {
                name: name.to_owned(),
                summary: summary.to_owned(),
                description: None,
                params: schema_of::<P>(),
                result: schema_of::<R>(),
                cli: Some(CliSpec::default()),
                interactive: false,
                long_running: false,
                mutating: false,
                stream_item: None,
                timeout_ms: None,
                local_only: false,
            },
            handler: erased,
            handles_cancellation: false,
        }
    }

    /// A method whose handler is synchronous by nature (CPU-heavy, or blocking on files or locks):
    /// `handler` runs on tokio's blocking thread pool, never on a protocol worker, so the plugin
    /// keeps answering `status` and pings while it runs (docs/plugins.md, "Never block the
    /// protocol loop"). A panic in `handler` becomes an internal method error naming the method,
    /// as with [`Context::blocking`]. Cancelling the call answers the host at once, but the
    /// thread runs `handler` to its end; check [`Context::is_cancelled`] in long loops.
    pub fn blocking<P, R, F>(name: &str, summary: &str, handler: F) -> Self
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(Context, P) -> Result<R, MethodError> + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let what: Arc<str> = Arc::from(format!("`{name}`"));
        Self::new(name, summary, move |ctx: Context, params: P| {
            let handler = handler.clone();
            let what = what.clone();
            async move { crate::context::run_blocking(&what, move || handler(ctx, params)).await }
        })
    }

    /// Longer help text.
    pub fn description(mut self, text: &str) -> Self {
        self.spec.description = Some(text.to_owned());
        self
    }

    /// Params properties taken as positional arguments, in order.
    pub fn positional<I: IntoIterator<Item = &'static str>>(mut self, fields: I) -> Self {
        self.cli_mut().positional = fields.into_iter().map(str::to_owned).collect();
        self
    }

    /// A one-letter short flag for a params property.
    pub fn short(mut self, field: &str, letter: char) -> Self {
        self.cli_mut().short.insert(field.to_owned(), letter);
        self
    }

    /// An example command line for help output.
    pub fn example(mut self, line: &str) -> Self {
        self.cli_mut().examples.push(line.to_owned());
        self
    }

    /// Not a CLI verb: only other plugins (and the REST API) call it.
    pub fn not_on_cli(mut self) -> Self {
        self.spec.cli = None;
        self
    }

    /// The method asks the user questions.
    pub fn interactive(mut self) -> Self {
        self.spec.interactive = true;
        self
    }

    /// The method may run until cancelled; no request timeout applies.
    pub fn long_running(mut self) -> Self {
        self.spec.long_running = true;
        self
    }

    /// Serves the method only to the CLI and other plugins, never over the unauthenticated REST
    /// API (for methods that sign, write files or change trust).
    pub fn local_only(mut self) -> Self {
        self.spec.local_only = true;
        self
    }

    /// The method changes state.
    pub fn mutating(mut self) -> Self {
        self.spec.mutating = true;
        self
    }

    /// A custom inactivity timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The method streams items of type `T` with [`Context::emit`].
    pub fn streams<T: JsonSchema>(mut self) -> Self {
        self.spec.stream_item = Some(schema_of::<T>());
        self
    }

    /// The handler watches [`Context::cancelled`] itself and finishes cleanly (for example sending
    /// goodbye packets). Without this, a cancelled handler is dropped at once.
    pub fn handles_cancellation(mut self) -> Self {
        self.handles_cancellation = true;
        self
    }

    /// The manifest entry.
    pub fn spec(&self) -> &MethodSpec {
        &self.spec
    }

    fn cli_mut(&mut self) -> &mut CliSpec {
        self.spec.cli.get_or_insert_with(CliSpec::default)
    }
}
