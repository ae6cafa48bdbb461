//! JSON-RPC 2.0 envelopes: classify an incoming frame and build outgoing ones.
//!
//! Both sides of a Koi connection send requests (the host calls methods; plugins call `host/*`), so
//! every frame is one of a request, a notification or a response, and each side keeps its own id
//! space for the requests it sends.

use crate::error::{ErrorObject, codes};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request id: JSON-RPC allows numbers and strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Id {
    /// A numeric id (what Koi's host and SDK send).
    Number(u64),
    /// A string id (accepted from other implementations).
    String(String),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A call that expects a response.
    Request {
        /// The id the response will carry.
        id: Id,
        /// The method name.
        method: String,
        /// The params (`null` when absent).
        params: Value,
    },
    /// A call without a response.
    Notification {
        /// The method name.
        method: String,
        /// The params (`null` when absent).
        params: Value,
    },
    /// The answer to an earlier request.
    Response {
        /// The id of the request answered.
        id: Id,
        /// `Ok(result)` or `Err(error)`.
        outcome: Result<Value, ErrorObject>,
    },
}

/// Why a frame is not a JSON-RPC 2.0 message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
}

impl MessageError {
    /// The JSON-RPC code that describes this error.
    pub fn code(&self) -> i64 {
        match self {
            MessageError::NotJson(_) => codes::PARSE_ERROR,
            MessageError::NotJsonRpc(_) => codes::INVALID_REQUEST,
        }
    }
}

impl Message {
    /// Decodes one frame (without its trailing newline).
    pub fn parse(frame: &[u8]) -> Result<Message, MessageError> {
        let value: Value =
            serde_json::from_slice(frame).map_err(|e| MessageError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// Classifies an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Message, MessageError> {
        let Value::Object(mut map) = value else {
            return Err(MessageError::NotJsonRpc("a message must be a JSON object"));
        };
        if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(MessageError::NotJsonRpc(r#"missing "jsonrpc": "2.0""#));
        }
        let id = match map.remove("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Id>(v)
                    .map_err(|_| MessageError::NotJsonRpc("id must be a number or a string"))?,
            ),
        };
        if let Some(method) = map.remove("method") {
            let Value::String(method) = method else {
                return Err(MessageError::NotJsonRpc("method must be a string"));
            };
            let params = map.remove("params").unwrap_or(Value::Null);
            return Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            });
        }
        let id = id.ok_or(MessageError::NotJsonRpc(
            "a response must carry the id of its request",
        ))?;
        let outcome = match (map.remove("result"), map.remove("error")) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(serde_json::from_value::<ErrorObject>(error)
                .map_err(|_| MessageError::NotJsonRpc("error must have a code and a message"))?),
            _ => {
                return Err(MessageError::NotJsonRpc(
                    "a response must have exactly one of result and error",
                ));
            }
        };
        Ok(Message::Response { id, outcome })
    }

    /// Encodes this message as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(4);
        map.insert("jsonrpc".into(), Value::String("2.0".into()));
        match self {
            Message::Request { id, method, params } => {
                map.insert("id".into(), id_value(id));
                map.insert("method".into(), Value::String(method.clone()));
                if !params.is_null() {
                    map.insert("params".into(), params.clone());
                }
            }
            Message::Notification { method, params } => {
                map.insert("method".into(), Value::String(method.clone()));
                if !params.is_null() {
                    map.insert("params".into(), params.clone());
                }
            }
            Message::Response { id, outcome } => {
                map.insert("id".into(), id_value(id));
                match outcome {
                    Ok(result) => map.insert("result".into(), result.clone()),
                    Err(error) => map.insert(
                        "error".into(),
                        serde_json::to_value(error).unwrap_or(Value::Null),
                    ),
                };
            }
        }
        Value::Object(map)
    }

    /// Encodes this message as one frame body (no trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail.
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }

    /// The method name of a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            Message::Response { .. } => None,
        }
    }
}

fn id_value(id: &Id) -> Value {
    match id {
        Id::Number(n) => Value::from(*n),
        Id::String(s) => Value::String(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_the_three_shapes() {
        let req =
            Message::parse(br#"{"jsonrpc":"2.0","id":7,"method":"greet","params":{"name":"a"}}"#)
                .expect("request");
        assert!(matches!(
            req,
            Message::Request {
                id: Id::Number(7),
                ..
            }
        ));
        let note =
            Message::parse(br#"{"jsonrpc":"2.0","method":"$/cancel","params":{"request":7}}"#)
                .expect("notification");
        assert_eq!(note.method(), Some("$/cancel"));
        let resp =
            Message::parse(br#"{"jsonrpc":"2.0","id":"x","result":null}"#).expect("response");
        assert_eq!(
            resp,
            Message::Response {
                id: Id::String("x".into()),
                outcome: Ok(Value::Null)
            }
        );
    }

    #[test]
    fn rejects_malformed_frames_with_reasons() {
        assert!(matches!(
            Message::parse(b"hello"),
            Err(MessageError::NotJson(_))
        ));
        assert_eq!(
            Message::parse(b"[1]").expect_err("array").code(),
            codes::INVALID_REQUEST
        );
        assert!(Message::parse(br#"{"id":1,"method":"x"}"#).is_err());
        assert!(
            Message::parse(
                br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#
            )
            .is_err()
        );
        assert!(Message::parse(br#"{"jsonrpc":"2.0","result":1}"#).is_err());
    }

    #[test]
    fn round_trips_through_bytes() {
        let original = Message::Response {
            id: Id::Number(3),
            outcome: Err(ErrorObject::new(codes::METHOD_FAILED, "no").with_hint("try again")),
        };
        assert_eq!(
            Message::parse(&original.to_bytes()).expect("parse"),
            original
        );
        let v = Message::Notification {
            method: "event".into(),
            params: json!({"a":1}),
        }
        .to_value();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","method":"event","params":{"a":1}})
        );
    }
}
