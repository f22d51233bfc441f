//! A queued message as RabbitMQ carries it. The body is framed: four bytes
//! (big-endian) giving the length of a JSON description, the description,
//! the exact request bytes, then a callback's bytes when the message is in
//! its callback phase. The request bytes are never re-encoded, so a large
//! or binary (multipart) body costs no base64.
//!
//! What changes from attempt to attempt is in AMQP headers, not in the
//! body: attempts made (`soapcache-attempts`), when the next is due
//! (`soapcache-due-ms`), so that any instance of the fleet that takes the
//! message next knows them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

use crate::delivery::{Callback, Credentials, Message, Phase, ReplyPlan, RetryPolicy};

pub const ATTEMPTS: &str = "soapcache-attempts";
pub const DUE: &str = "soapcache-due-ms";
const CONTENT_TYPE: &str = "application/x-soapcache-message";

/// A message with where it stands: what the next attempt does, how many
/// attempts were made, when the next is due, and why it is dead if it is.
#[derive(Debug, Clone)]
pub struct Parcel {
    pub message: Message,
    pub phase: Phase,
    pub attempts: u32,
    pub due: Option<SystemTime>,
    pub dead: Option<DeadNote>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadNote {
    pub reason: String,
    pub last_error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message is shorter than its framing says")]
    Truncated,
    #[error("the message's description is not valid: {0}")]
    Description(#[from] serde_json::Error),
    #[error("the message's description is not valid: {0}")]
    Field(&'static str),
}

#[derive(Serialize, Deserialize)]
struct Description {
    id: String,
    service: String,
    operation: String,
    target: String,
    /// Header names with their values in base64 (values are bytes).
    headers: Vec<(String, String)>,
    remote: String,
    order_key: Option<String>,
    accepted_at_ms: u64,
    deliver_by_ms: u64,
    max_attempts: u32,
    retry_backoff_ms: u64,
    max_retry_backoff_ms: u64,
    deliver_within_ms: u64,
    reply: Reply,
    body_len: u64,
    callback: Option<CallbackPhase>,
    dead: Option<DeadNote>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
enum Reply {
    Drop,
    Poll {
        retention_ms: u64,
        /// Hex of the credentials' digest.
        credentials: String,
    },
    Callback {
        reply_to: String,
        fault_to: Option<String>,
        relates_to: String,
        action: Option<String>,
        namespace: String,
    },
}

#[derive(Serialize, Deserialize)]
struct CallbackPhase {
    to: String,
    /// base64
    content_type: Option<String>,
}

pub fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, DecodeError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| DecodeError::Field("a header value is not base64"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Credentials, DecodeError> {
    let bad = || DecodeError::Field("credentials are not 64 hex digits");
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(Credentials(out))
}

impl Parcel {
    pub fn new(message: Message) -> Parcel {
        Parcel {
            message,
            phase: Phase::Deliver,
            attempts: 0,
            due: None,
            dead: None,
        }
    }

    /// The body and the properties (persistent, with its message id and
    /// headers) to publish.
    pub fn encode(&self) -> (Vec<u8>, BasicProperties) {
        let m = &self.message;
        let reply = match &m.reply {
            ReplyPlan::Drop => Reply::Drop,
            ReplyPlan::Poll {
                retention,
                credentials,
            } => Reply::Poll {
                retention_ms: duration_ms(*retention),
                credentials: hex(&credentials.0),
            },
            ReplyPlan::Callback(c) => Reply::Callback {
                reply_to: c.reply_to.clone(),
                fault_to: c.fault_to.clone(),
                relates_to: c.relates_to.clone(),
                action: c.action.clone(),
                namespace: c.namespace.clone(),
            },
        };
        let (callback, callback_body) = match &self.phase {
            Phase::Deliver => (None, &[][..]),
            Phase::Callback {
                to,
                content_type,
                body,
            } => (
                Some(CallbackPhase {
                    to: to.clone(),
                    content_type: content_type.as_deref().map(b64),
                }),
                &body[..],
            ),
        };
        let description = Description {
            id: m.id.clone(),
            service: m.service.clone(),
            operation: m.operation.clone(),
            target: m.target.clone(),
            headers: m.headers.iter().map(|(n, v)| (n.clone(), b64(v))).collect(),
            remote: m.remote.clone(),
            order_key: m.order_key.clone(),
            accepted_at_ms: millis(m.accepted_at),
            deliver_by_ms: millis(m.deliver_by),
            max_attempts: m.retry.max_attempts,
            retry_backoff_ms: duration_ms(m.retry.retry_backoff),
            max_retry_backoff_ms: duration_ms(m.retry.max_retry_backoff),
            deliver_within_ms: duration_ms(m.retry.deliver_within),
            reply,
            body_len: m.body.len() as u64,
            callback,
            dead: self.dead.clone(),
        };
        // Serializing plain strings and numbers cannot fail.
        let json = serde_json::to_vec(&description).unwrap_or_default();
        let mut body = Vec::with_capacity(4 + json.len() + m.body.len() + callback_body.len());
        body.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(&json);
        body.extend_from_slice(&m.body);
        body.extend_from_slice(callback_body);
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(ATTEMPTS),
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        if let Some(due) = self.due {
            headers.insert(
                ShortString::from(DUE),
                AMQPValue::LongLongInt(i64::try_from(millis(due)).unwrap_or(i64::MAX)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(CONTENT_TYPE))
            .with_message_id(ShortString::from(m.id.as_str()))
            .with_headers(headers);
        (body, properties)
    }

    pub fn decode(data: &[u8], properties: &BasicProperties) -> Result<Parcel, DecodeError> {
        let length = data.get(..4).ok_or(DecodeError::Truncated)?;
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
        let json = data.get(4..4 + length).ok_or(DecodeError::Truncated)?;
        let d: Description = serde_json::from_slice(json)?;
        let rest = &data[4 + length..];
        let body_len = usize::try_from(d.body_len).map_err(|_| DecodeError::Truncated)?;
        let body = rest.get(..body_len).ok_or(DecodeError::Truncated)?;
        let callback_body = &rest[body_len..];
        let headers = d
            .headers
            .iter()
            .map(|(n, v)| Ok((n.clone(), unb64(v)?)))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let reply = match d.reply {
            Reply::Drop => ReplyPlan::Drop,
            Reply::Poll {
                retention_ms,
                credentials,
            } => ReplyPlan::Poll {
                retention: Duration::from_millis(retention_ms),
                credentials: unhex(&credentials)?,
            },
            Reply::Callback {
                reply_to,
                fault_to,
                relates_to,
                action,
                namespace,
            } => ReplyPlan::Callback(Callback {
                reply_to,
                fault_to,
                relates_to,
                action,
                namespace,
            }),
        };
        let phase = match d.callback {
            None => Phase::Deliver,
            Some(c) => Phase::Callback {
                to: c.to,
                content_type: c.content_type.as_deref().map(unb64).transpose()?,
                body: Bytes::copy_from_slice(callback_body),
            },
        };
        let header = |name: &str| {
            properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(name).cloned())
                .and_then(|v| match v {
                    AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
                    AMQPValue::LongInt(n) => u64::try_from(n).ok(),
                    AMQPValue::LongUInt(n) => Some(u64::from(n)),
                    _ => None,
                })
        };
        let message = Message {
            id: d.id,
            service: d.service,
            operation: d.operation,
            target: d.target,
            headers,
            body: Bytes::copy_from_slice(body),
            remote: d.remote,
            order_key: d.order_key,
            accepted_at: from_millis(d.accepted_at_ms),
            deliver_by: from_millis(d.deliver_by_ms),
            retry: RetryPolicy {
                max_attempts: d.max_attempts,
                retry_backoff: Duration::from_millis(d.retry_backoff_ms),
                max_retry_backoff: Duration::from_millis(d.max_retry_backoff_ms),
                deliver_within: Duration::from_millis(d.deliver_within_ms),
            },
            reply,
        };
        Ok(Parcel {
            message,
            phase,
            attempts: header(ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            due: header(DUE).map(from_millis),
            dead: d.dead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parcel_comes_back_as_it_went() {
        let message = Message {
            id: "urn:uuid:1".into(),
            service: "orders".into(),
            operation: "PlaceOrder".into(),
            target: "http://127.0.0.1:1/orders".into(),
            headers: vec![("content-type".into(), b"text/xml".to_vec())],
            body: Bytes::from_static(b"<a/>"),
            remote: "127.0.0.1".into(),
            order_key: Some("C-1".into()),
            accepted_at: from_millis(1_000),
            deliver_by: from_millis(2_000),
            retry: RetryPolicy::default(),
            reply: ReplyPlan::Poll {
                retention: Duration::from_secs(60),
                credentials: Credentials([7; 32]),
            },
        };
        let mut parcel = Parcel::new(message);
        parcel.attempts = 3;
        parcel.due = Some(from_millis(5_000));
        parcel.phase = Phase::Callback {
            to: "http://127.0.0.1:2/cb".into(),
            content_type: Some(b"text/xml".to_vec()),
            body: Bytes::from_static(b"<b/>"),
        };
        let (body, properties) = parcel.encode();
        let back = Parcel::decode(&body, &properties).expect("decodes");
        assert_eq!(back.attempts, 3);
        assert_eq!(back.due, Some(from_millis(5_000)));
        assert_eq!(back.phase, parcel.phase);
        assert_eq!(back.message.body, parcel.message.body);
        assert_eq!(back.message.reply, parcel.message.reply);
        assert_eq!(back.message.order_key.as_deref(), Some("C-1"));
        assert!(Parcel::decode(&body[..10], &properties).is_err());
    }
}
