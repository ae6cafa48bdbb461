//! What comes from a plugin process, for [`super::Connection`]: the reader task (frames from
//! stdout: responses matched to pending calls, the plugin's own requests, checked and handed to
//! [`crate::services::HostServices`], and notifications such as `$/item`, checked against the
//! method's `stream_item` schema) and the stderr relay (each line into the host's log, the last
//! few kept for crash reports).

use super::{Connection, Inner, schema_error, unavailable};
use crate::schema::{PayloadKind, lock};
use crate::trace::{self, Direction};
use koi_protocol::calls::{self, ItemParams};
use koi_protocol::context::host_events;
use koi_protocol::frame::{FrameError, read_frame};
use koi_protocol::redact::result_is_secret;
use koi_protocol::{ErrorObject, Id, Message, codes};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::io::BufReader;

/// How many stderr lines are kept for crash reports.
const STDERR_TAIL_LINES: usize = 8;
/// Longest stderr line kept, in bytes.
const STDERR_LINE_LIMIT: usize = 64 * 1024;

pub(super) async fn read_loop(
    inner: Arc<Inner>,
    stdout: tokio::process::ChildStdout,
    done: Arc<tokio::sync::Notify>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::with_capacity(4096);
    loop {
        match read_frame(&mut reader, &mut buf, inner.max_frame).await {
            Ok(true) => {}
            Ok(false) | Err(FrameError::Io(_)) => break,
            Err(FrameError::TooLarge { size, limit }) => {
                inner.break_connection(format!(
                    "koi-{} sent a frame of at least {size} bytes, over the {limit}-byte limit (set KOI_MAX_FRAME_BYTES to change it); the connection was closed",
                    inner.moniker
                ));
                break;
            }
        }
        if inner.handshake_done.load(Ordering::Acquire) {
            trace::frame(
                &inner.moniker,
                Direction::FromPlugin,
                &buf,
                inner.secret_names(),
                false,
            );
        } else {
            trace::handshake_answer(&inner.moniker, &buf);
        }
        let message = match Message::parse(&buf) {
            Ok(m) => m,
            Err(e) => {
                let sample: String = String::from_utf8_lossy(&buf).chars().take(120).collect();
                let sample = crate::sanitize::line(&sample).into_owned();
                if !inner.handshake_done.load(Ordering::Acquire) {
                    inner.break_connection(format!(
                        "koi-{} ({}) wrote non-protocol output to stdout before the handshake: \"{sample}\" ({e}). stdout is reserved for JSON-RPC frames; plugins must log to stderr",
                        inner.moniker,
                        inner.path.display()
                    ));
                    break;
                }
                inner.stray_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %inner.moniker, "stray non-protocol output on stdout (ignored): \"{sample}\"");
                continue;
            }
        };
        handle_message(&inner, message);
    }
    done.notify_one();
}

fn handle_message(inner: &Arc<Inner>, message: Message) {
    match message {
        Message::Response {
            id: Id::Number(id),
            outcome,
        } => {
            if let Some(call) = lock(&inner.pending).remove(&id) {
                let _ = call.reply.send(outcome);
            } else if matches!(&outcome, Err(e) if e.code == codes::REQUEST_CANCELLED) {
                // The expected answer to a `$/cancel` for a call the host stopped waiting for.
                tracing::debug!(plugin = %inner.moniker, id, "late answer to a cancelled request");
            } else {
                tracing::debug!(plugin = %inner.moniker, id, "answer to a request the host stopped waiting for (ignored)");
            }
        }
        Message::Response { id, .. } => {
            tracing::warn!(plugin = %inner.moniker, %id, "response to an unknown request id (ignored)");
        }
        Message::Request { id, method, params } => {
            let request = params
                .get("request")
                .and_then(|r| serde_json::from_value::<Id>(r.clone()).ok());
            if let Some(request) = &request {
                inner.bump_activity(request);
            }
            if let Err(e) = check_plugin_request(inner, &method, &params) {
                inner.send_response(id, Err(e), false);
                return;
            }
            let Some(services) = inner.services.upgrade() else {
                inner.send_response(id, Err(unavailable("the host is shutting down")), false);
                return;
            };
            let secret = result_is_secret(&method);
            let connection = Connection {
                inner: inner.clone(),
            };
            // Called here, on the reader, so that what `request` does before it returns its
            // future (queuing a `host/publish` for subscribers) happens in frame order: one
            // publisher's events reach every subscriber's queue in the order it sent them, even
            // when it sends the next before the answer to the last.
            let answer = services.request(connection.clone(), method, params);
            tokio::spawn(async move {
                let outcome = match &request {
                    // The plugin is waiting for the host (often for a person), not idle.
                    Some(request) => connection.inner.keep_alive(request, answer).await,
                    None => answer.await,
                };
                connection.inner.send_response(id, outcome, secret);
            });
        }
        Message::Notification { method, params } => {
            let request = params
                .get("request")
                .and_then(|r| serde_json::from_value::<Id>(r.clone()).ok());
            if let Some(request) = &request {
                inner.bump_activity(request);
            }
            if method == calls::ITEM {
                if let Err(e) = check_item(inner, &params) {
                    tracing::error!(plugin = %inner.moniker, "{}", e.message);
                    if let Some(Id::Number(n)) = request {
                        if let Some(call) = lock(&inner.pending).remove(&n) {
                            let _ = call.reply.send(Err(e));
                        }
                        Connection {
                            inner: inner.clone(),
                        }
                        .cancel(n);
                    }
                    return;
                }
            }
            if let Some(services) = inner.services.upgrade() {
                services.notification(
                    &Connection {
                        inner: inner.clone(),
                    },
                    &method,
                    params,
                );
            }
        }
    }
}

/// Checks what a plugin asks of the host before it is acted on: published events must be declared,
/// match their schema, and not use the host's own `host.` topics.
fn check_plugin_request(inner: &Inner, method: &str, params: &Value) -> Result<(), ErrorObject> {
    if method != calls::PUBLISH {
        return Ok(());
    }
    // Borrowed, not deserialised into `PublishParams`: that would copy every payload once more.
    let (Some(topic), Some(payload)) = (
        params.get("topic").and_then(Value::as_str),
        params.get("payload"),
    ) else {
        return Err(ErrorObject::new(
            codes::INVALID_PARAMS,
            "invalid host/publish params: `topic` (a string) and `payload` are required",
        ));
    };
    if topic.starts_with(host_events::PREFIX) {
        return Err(schema_error(format!(
            "koi-{} published `{}`, but topics under `{}` are the host's own",
            inner.moniker,
            topic,
            host_events::PREFIX
        )));
    }
    let manifest = inner
        .manifest
        .get()
        .ok_or_else(|| unavailable("publish before the handshake"))?;
    let spec = manifest.event(topic).ok_or_else(|| {
        schema_error(format!(
            "koi-{} published `{}`, which its manifest does not declare in `publishes`",
            inner.moniker, topic
        ))
    })?;
    inner.validators.check(
        &inner.moniker,
        PayloadKind::Event,
        topic,
        &spec.payload,
        payload,
    )
}

fn check_item(inner: &Inner, params: &Value) -> Result<(), ErrorObject> {
    let item: ItemParams = serde_json::from_value(params.clone())
        .map_err(|e| schema_error(format!("koi-{} sent an invalid $/item: {e}", inner.moniker)))?;
    let Id::Number(n) = item.request else {
        return Ok(());
    };
    let Some(method) = lock(&inner.pending).get(&n).map(|c| c.method.clone()) else {
        return Ok(());
    };
    let manifest = inner
        .manifest
        .get()
        .ok_or_else(|| unavailable("item before the handshake"))?;
    let Some(schema) = manifest.method(&method).and_then(|m| m.stream_item.clone()) else {
        return Err(schema_error(format!(
            "koi-{} streamed an item for `{method}`, which does not declare `stream_item`",
            inner.moniker
        )));
    };
    inner.validators.check(
        &inner.moniker,
        PayloadKind::Item,
        &method,
        &schema,
        &item.item,
    )
}

pub(super) async fn stderr_loop(inner: Weak<Inner>, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        match read_frame(&mut reader, &mut buf, STDERR_LINE_LIMIT).await {
            Ok(true) => {}
            Ok(false) | Err(FrameError::Io(_)) => return,
            Err(FrameError::TooLarge { .. }) => {
                // Skip the rest of an overlong line.
                buf.clear();
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let line = String::from_utf8_lossy(&buf).into_owned();
        let text = crate::logging::relay_plugin_line(&inner.moniker, &line);
        let mut tail = lock(&inner.stderr_tail);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}
