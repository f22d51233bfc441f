//! Duplicate suppression (reference §11): a request's message id, the
//! credentials a recorded answer is bound to, and direct operations whose
//! repeats are answered with the first answer instead of reaching the
//! service again.
//!
//! A direct operation with `dedup` is not answered from the cache: a
//! repeat gets the answer recorded for its id, byte for byte, or goes
//! upstream (then the answer is recorded before it is sent, so that a
//! repeat after a crash is still known).

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use hyper::{HeaderMap, Response, StatusCode};

use super::{forward, respond, Exchange, Reply};
use crate::cache::coalesce::{self, Coalescer, FlightOutcome, Role};
use crate::cache::decision::Uncacheable;
use crate::cache::invalidate;
use crate::delivery::{Credentials, Dedup, Recorded, RecordedAnswer};
use crate::http::body::{self, Body};
use crate::http::client::FetchedBody;
use crate::key::canonical;
use crate::key::selector::SelectorError;
use crate::ops::metrics::CacheResult;
use crate::policy::Rules;
use crate::soap::addressing::Addressing;
use crate::soap::envelope::OperationElement;
use crate::soap::fault;

/// Repeats of a message id waiting for the first's answer, by (service,
/// message id).
pub type InFlight = Coalescer<(Arc<str>, String)>;

/// How many times a repeat looks again after waiting for the first.
const ROUNDS: usize = 3;

/// The request's message id: its WS-Addressing `MessageID`, else the value
/// of the policy's `message_id` expressions; `None` when it has neither.
pub fn message_id(
    addressing: &Addressing,
    rules: &Rules,
    op: &OperationElement<'_>,
) -> Result<Option<String>, SelectorError> {
    if let Some(id) = addressing.message_id.as_deref().filter(|id| !id.is_empty()) {
        return Ok(Some(id.to_owned()));
    }
    match &rules.message_id {
        Some(selector) => Ok(Some(selector.select(op)?).filter(|id| !id.is_empty())),
        None => Ok(None),
    }
}

/// What a recorded answer is bound to: the request's `Authorization` and
/// `Cookie` headers and its WS-Security header block.
pub fn credentials(headers: &HeaderMap, body: &[u8], addressing: &Addressing) -> Credentials {
    let joined = |name| {
        let mut out = Vec::new();
        for value in headers.get_all(name) {
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out
    };
    let security = addressing
        .security
        .clone()
        .and_then(|range| body.get(range))
        .unwrap_or_default();
    Credentials::of(&[&joined(AUTHORIZATION), &joined(COOKIE), security])
}

/// The fault for an id already used for another message.
pub(super) fn reused(x: &Exchange<'_>) -> Reply {
    let fault = fault::bad_request(
        Some(x.version),
        None,
        "message id reused for a different message",
    );
    Reply::error(respond::fault_response(&fault))
}

/// The recorded answer, as a repeat gets it.
pub(super) fn replay(answer: &RecordedAnswer, message_id: &str) -> Reply {
    let mut response = Response::new(body::full(answer.body.clone()));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if let Some(content_type) = answer
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_bytes(c).ok())
    {
        headers.insert(CONTENT_TYPE, content_type);
    }
    respond::Mark::REPLAY.set(headers);
    if let Ok(id) = HeaderValue::from_str(message_id) {
        headers.insert(crate::delivery::worker::X_MESSAGE_ID, id);
    }
    let mut reply = Reply::new(response, CacheResult::Replay);
    reply.message_id = Some(message_id.to_owned());
    reply
}

/// A direct request with message id `id` under `dedup`.
pub(super) async fn direct(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    id: String,
    addressing: &Addressing,
) -> Reply {
    let Some(store) = x.state.dedup.clone() else {
        // `serve` and reloads refuse dedup without a store.
        return forward::bypass(x, Some(op), Uncacheable::PolicyOff).await;
    };
    let digest = match canonical::digest(op) {
        Ok(digest) => digest.to_string(),
        Err(e) => {
            tracing::warn!("request digest failed: {e}");
            return forward::bypass(x, Some(op), Uncacheable::KeyFailed).await;
        }
    };
    let credentials = credentials(&x.parts.headers, &x.body, addressing);
    let key = (x.service_name.clone(), id.clone());
    let patience = x.state.settings.upstream_timeout + Duration::from_secs(1);
    for _ in 0..ROUNDS {
        match seen(x, &*store, &id, &digest, credentials).await {
            Seen::Answered(reply) => return reply,
            Seen::New => {}
        }
        match x.state.repeats.join(&key) {
            Role::Leader(flight) => {
                // The first may have finished between the look and the join.
                let reply = match seen(x, &*store, &id, &digest, credentials).await {
                    Seen::Answered(reply) => reply,
                    Seen::New => {
                        let recorded = Recorded {
                            digest,
                            credentials,
                            answer: None,
                        };
                        first(x, op, rules, &*store, &id, recorded).await
                    }
                };
                flight.finish(FlightOutcome::GiveUp);
                return reply;
            }
            Role::Follower(waiter) => {
                coalesce::wait(waiter, patience).await;
            }
            Role::Overloaded => {
                let reason = format!(
                    "more than {} repeats of this message id are already waiting",
                    coalesce::MAX_WAITERS
                );
                return Reply::error(respond::unavailable(x.version, &reason, 1));
            }
        }
    }
    // The first is taking longer than a repeat waits: say so rather than
    // send the service a second copy.
    let reason = "an earlier request with this message id is still being answered";
    Reply::error(respond::unavailable(x.version, reason, 1))
}

enum Seen {
    /// Answered from what the id was recorded with (or refused for it).
    Answered(Reply),
    /// Not seen: this request goes upstream.
    New,
}

async fn seen(
    x: &Exchange<'_>,
    store: &dyn Dedup,
    id: &str,
    digest: &str,
    credentials: Credentials,
) -> Seen {
    let recorded = match store.lookup(&x.service_name, id).await {
        Ok(recorded) => recorded,
        Err(e) => {
            tracing::warn!(service = %x.service_name, "message ids cannot be checked: {e}");
            let reason = format!("duplicates cannot be checked now: {e}");
            return Seen::Answered(Reply::error(respond::unavailable(x.version, &reason, 5)));
        }
    };
    let Some(recorded) = recorded else {
        return Seen::New;
    };
    if recorded.digest != digest {
        tracing::info!(service = %x.service_name, message_id = id, "message id reused for a different message: refused");
        return Seen::Answered(reused(x));
    }
    match recorded.answer {
        Some(answer) if recorded.credentials == credentials => {
            x.state
                .metrics
                .delivery
                .duplicate(&x.service_name, "direct");
            Seen::Answered(replay(&answer, id))
        }
        // Recorded for other credentials: this one is a request of its own,
        // forwarded and not recorded.
        Some(_) => Seen::Answered(forward::bypass(x, None, Uncacheable::Credentials).await),
        None => Seen::New,
    }
}

/// The first request of an id: forwarded, its answer recorded (unless it
/// is soapcache's own error, or too large to hold) before it is sent.
async fn first(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    store: &dyn Dedup,
    id: &str,
    mut recorded: Recorded,
) -> Reply {
    let fetched = match forward::fetch(x, rules).await {
        Ok(fetched) => fetched,
        Err(e) => return Reply::error(forward::upstream_failure(x, &e)),
    };
    let bytes = match fetched.body {
        FetchedBody::Whole(bytes) => bytes,
        FetchedBody::Partial { head, rest } => {
            let mark = respond::Mark::bypass(Uncacheable::TooLarge);
            let response = respond::streamed(fetched.parts, head, rest, &rules.roles, mark);
            return Reply::new(response, CacheResult::Bypass).because(Some(Uncacheable::TooLarge));
        }
    };
    let (stripped, succeeded) = forward::stripped(&bytes, fetched.parts.status, &rules.roles);
    recorded.answer = Some(RecordedAnswer {
        status: fetched.parts.status.as_u16(),
        content_type: fetched
            .parts
            .headers
            .get(CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec()),
        body: stripped.clone(),
    });
    let until = crate::clock::now() + rules.dedup;
    if let Err(e) = store.record(&x.service_name, id, recorded, until).await {
        tracing::warn!(service = %x.service_name, message_id = id, "answer not recorded, a repeat will reach the service: {e}");
    }
    if let (true, Some(service)) = (succeeded, x.service) {
        invalidate::after_write(&x.state.cache, service, op).await;
    }
    let response: Response<Body> =
        respond::whole(fetched.parts, body::full(stripped), respond::Mark::RECORDED);
    let mut reply = Reply::new(response, CacheResult::Bypass);
    reply.message_id = Some(id.to_owned());
    reply
}
