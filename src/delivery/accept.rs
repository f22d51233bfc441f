//! A request to a queued operation becomes a [`Message`]: its id, the
//! headers that travel with it, its order key and its deadlines.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::header::HeaderMap;

use super::Message;
use crate::http::client;
use crate::key::selector::SelectorError;
use crate::policy::Rules;
use crate::soap::envelope::OperationElement;

/// A fresh message id: `urn:uuid:` and a random (v4) UUID.
pub fn new_message_id() -> String {
    let mut buffer = MessageIdBuffer::default();
    buffer.fresh().to_owned()
}

/// Room for one message id on the stack: a hit that readdresses its answer
/// writes a fresh id here instead of allocating one.
pub struct MessageIdBuffer([u8; uuid::fmt::Urn::LENGTH]);

impl Default for MessageIdBuffer {
    fn default() -> Self {
        MessageIdBuffer([0; uuid::fmt::Urn::LENGTH])
    }
}

impl MessageIdBuffer {
    /// A fresh message id, as [`new_message_id`] makes it.
    pub fn fresh(&mut self) -> &str {
        uuid::Uuid::new_v4().urn().encode_lower(&mut self.0)
    }
}

/// The request headers a delivery carries: every end-to-end header the
/// requester sent (`Content-Type`, `SOAPAction`, `X-Request-Id`,
/// credentials, `Host`...), not the hop-by-hop ones nor those the delivery
/// sets itself.
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut kept = headers.clone();
    client::remove_hop_by_hop(&mut kept);
    kept.remove(hyper::header::CONTENT_LENGTH);
    kept.remove(hyper::header::VIA);
    kept.iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// What a request to a queued operation is accepted as.
pub struct Accepting<'a> {
    pub id: String,
    pub service: &'a str,
    pub op: &'a OperationElement<'a>,
    pub rules: &'a Rules,
    pub target: String,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub remote: SocketAddr,
    pub now: SystemTime,
    /// The request's `wsu:Expires`: it must not be delivered after it.
    pub expires: Option<SystemTime>,
    pub reply: super::ReplyPlan,
}

/// The message to store, or why the request's `order_by` could not be
/// evaluated on it.
pub fn message(a: Accepting<'_>) -> Result<Message, SelectorError> {
    // Scoped by service: equal values of two services are not one order.
    let order_key = match &a.rules.order_by {
        Some(selector) => Some(format!("{}\u{1f}{}", a.service, selector.select(a.op)?)),
        None => None,
    };
    Ok(Message {
        id: a.id,
        service: a.service.to_owned(),
        operation: a.op.name.local.clone(),
        target: a.target,
        headers: stored_headers(a.headers),
        body: a.body,
        remote: a.remote.ip().to_string(),
        order_key,
        accepted_at: a.now,
        deliver_by: {
            let within = a.now + a.rules.retry.deliver_within;
            a.expires.map_or(within, |at| at.min(within))
        },
        retry: a.rules.retry,
        reply: a.reply,
    })
}
