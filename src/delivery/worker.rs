//! One delivery attempt, the same for every queue backend: the exact
//! request bytes with their headers, plus `X-Message-Id` and
//! `X-Delivery-Attempt`, to the upstream; what the answer means
//! (reference §10); the `[[invalidate]]` rules a delivered write fires;
//! where the answer goes next (kept for polling, or a callback: §12); and
//! the metrics and access-log line of the attempt. A message in its
//! callback phase is POSTed to the requester's address instead.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Uri};

use super::reply::{self, CallbackError};
use super::retry::{self, Attempted, DeadReason, Next};
use super::{Claimed, Finish, Message, Phase, RecordedAnswer, ReplyPlan};
use crate::app::state::State;
use crate::cache::invalidate;
use crate::http::body;
use crate::http::client::{self, FetchedBody, UpstreamTime};
use crate::http::headers::X_REQUEST_ID;
use crate::ops::access_log;
use crate::soap::control::{inspect_response, splice};
use crate::soap::envelope::parse_request;

const SOAPACTION: HeaderName = HeaderName::from_static("soapaction");
pub const X_MESSAGE_ID: HeaderName = HeaderName::from_static("x-message-id");
pub const X_DELIVERY_ATTEMPT: HeaderName = HeaderName::from_static("x-delivery-attempt");

/// Answers are read this far to find a fault; a longer one is judged by
/// its status alone.
const ANSWER_LIMIT: usize = 1 << 20;

/// What the service did with one attempt.
struct Report {
    attempted: Attempted,
    status: Option<u16>,
    upstream: Option<Duration>,
    /// Its answer, stripped (reference §5), when it was read whole.
    answer: Option<RecordedAnswer>,
    /// The answer is a fault that blames the sender.
    sender_fault: bool,
}

/// Attempts `claimed` once and says how its attempt ends.
pub async fn deliver(state: &State, claimed: &Claimed) -> Finish {
    match &claimed.phase {
        Phase::Deliver => deliver_to_service(state, claimed).await,
        Phase::Callback {
            to,
            content_type,
            body,
        } => call_back(state, claimed, to, content_type.as_deref(), body).await,
    }
}

async fn deliver_to_service(state: &State, claimed: &Claimed) -> Finish {
    let started = Instant::now();
    let message = &claimed.message;
    let report = attempt(state, claimed).await;
    let now = crate::clock::now();
    let mut next = retry::next(
        &report.attempted,
        claimed.attempt,
        &message.retry,
        message.deliver_by,
        now,
        &message.id,
    );
    let mut error = match &report.attempted {
        Attempted::Delivered => String::new(),
        Attempted::Refused(e) | Attempted::Failed(e) => e.clone(),
    };
    if next == Next::Delivered {
        fire_invalidations(state, message).await;
    }
    let finish = match (&next, &message.reply, report.answer.clone()) {
        (Next::Delivered, ReplyPlan::Poll { .. }, answer) => Finish::Delivered(answer),
        (Next::Delivered, ReplyPlan::Callback(callback), Some(answer)) => {
            callback_finish(message, callback, &callback.reply_to, &answer, false)
        }
        // A fault that blames the request is the service's final answer:
        // it goes to `FaultTo` (else `ReplyTo`), not to the dead letters.
        (Next::Dead(DeadReason::Refused), ReplyPlan::Callback(callback), Some(answer))
            if report.sender_fault =>
        {
            next = Next::Delivered;
            let to = callback.fault_to.as_deref().unwrap_or(&callback.reply_to);
            callback_finish(message, callback, to, &answer, true)
        }
        (Next::Delivered, ReplyPlan::Callback(_), None) => Finish::Dead {
            reason: DeadReason::Callback,
            error: "the service's answer was too large to call back with".into(),
        },
        (Next::Delivered, ReplyPlan::Drop, _) => Finish::Delivered(None),
        (Next::RetryAt(at), ..) => Finish::RetryAt {
            at: *at,
            error: error.clone(),
        },
        (Next::Dead(reason), ..) => Finish::Dead {
            reason: *reason,
            error: error.clone(),
        },
    };
    if let Finish::Dead { reason, error: e } = &finish {
        next = Next::Dead(*reason);
        error = e.clone();
        tracing::warn!(message_id = %message.id, service = %message.service, operation = %message.operation, attempts = claimed.attempt, reason = reason.label(), "dead letter: {error}");
    }
    record(
        state,
        claimed,
        &report,
        &next,
        started.elapsed(),
        "delivery",
    );
    finish
}

/// The callback of an answer to `to`, or a dead letter when the answer
/// cannot be one.
fn callback_finish(
    message: &Message,
    callback: &super::Callback,
    to: &str,
    answer: &RecordedAnswer,
    is_fault: bool,
) -> Finish {
    let endpoint = crate::soap::envelope::parse_request(&message.body)
        .ok()
        .and_then(|e| {
            if to == callback.reply_to {
                e.addressing.reply_to
            } else {
                e.addressing.fault_to
            }
        });
    let parameters = reply::reference_parameters(&message.body, endpoint.as_ref());
    match reply::callback_message(&answer.body, to, callback, parameters, is_fault) {
        Ok(body) => Finish::CallBack {
            to: to.to_owned(),
            content_type: answer.content_type.clone(),
            body: Bytes::from(body),
        },
        Err(CallbackError::NotSoap(e)) => Finish::Dead {
            reason: DeadReason::Callback,
            error: format!("cannot call back with the service's answer: {e}"),
        },
    }
}

/// POSTs a callback message to the requester's address; retried and
/// dead-lettered (reason `callback`) as deliveries are.
async fn call_back(
    state: &State,
    claimed: &Claimed,
    to: &str,
    content_type: Option<&[u8]>,
    body: &Bytes,
) -> Finish {
    let started = Instant::now();
    let message = &claimed.message;
    // A SOAP 1.1 callback names its action in SOAPAction too.
    let soap_action = crate::soap::envelope::parse_request(body)
        .ok()
        .filter(|e| e.version.is_11())
        .and_then(|e| e.addressing.action)
        .and_then(|a| HeaderValue::from_str(&format!("\"{a}\"")).ok());
    let attempted = match to.parse::<Uri>() {
        Err(e) => Attempted::Refused(format!("bad callback address {to}: {e}")),
        Ok(uri) => {
            let request = || {
                let mut request = Request::new(body::full(body.clone()));
                *request.method_mut() = hyper::Method::POST;
                *request.uri_mut() = uri.clone();
                let headers = request.headers_mut();
                let content_type = content_type
                    .and_then(|c| HeaderValue::from_bytes(c).ok())
                    .unwrap_or_else(|| HeaderValue::from_static("text/xml; charset=utf-8"));
                headers.insert(hyper::header::CONTENT_TYPE, content_type);
                if let Some(action) = &soap_action {
                    headers.insert(SOAPACTION, action.clone());
                }
                if let Ok(id) = HeaderValue::from_str(&message.id) {
                    headers.insert(X_MESSAGE_ID, id);
                }
                headers.insert(X_DELIVERY_ATTEMPT, HeaderValue::from(claimed.attempt));
                headers.insert(hyper::header::VIA, HeaderValue::from_static(client::VIA));
                request
            };
            match state.upstream.fetch(request, ANSWER_LIMIT).await {
                Err(e) => Attempted::Failed(format!("callback to {to}: {e}")),
                Ok(fetched) if fetched.parts.status.is_success() => Attempted::Delivered,
                Ok(fetched) if fetched.parts.status.is_client_error() => Attempted::Refused(
                    format!("callback to {to}: HTTP {}", fetched.parts.status.as_u16()),
                ),
                Ok(fetched) => Attempted::Failed(format!(
                    "callback to {to}: HTTP {}",
                    fetched.parts.status.as_u16()
                )),
            }
        }
    };
    let next = retry::next(
        &attempted,
        claimed.attempt,
        &message.retry,
        message.deliver_by,
        crate::clock::now(),
        &message.id,
    );
    let report = Report {
        attempted,
        status: None,
        upstream: None,
        answer: None,
        sender_fault: false,
    };
    let error = match &report.attempted {
        Attempted::Delivered => String::new(),
        Attempted::Refused(e) | Attempted::Failed(e) => e.clone(),
    };
    let (finish, result) = match next {
        Next::Delivered => (Finish::Delivered(None), "delivered"),
        Next::RetryAt(at) => (Finish::RetryAt { at, error }, "retried"),
        Next::Dead(_) => {
            tracing::warn!(message_id = %message.id, service = %message.service, to, attempts = claimed.attempt, reason = DeadReason::Callback.label(), "dead letter: {error}");
            (
                Finish::Dead {
                    reason: DeadReason::Callback,
                    error,
                },
                "dead_lettered",
            )
        }
    };
    state.metrics.delivery.callback(&message.service, result);
    let next = match &finish {
        Finish::Dead { .. } => Next::Dead(DeadReason::Callback),
        Finish::RetryAt { at, .. } => Next::RetryAt(*at),
        _ => Next::Delivered,
    };
    record(
        state,
        claimed,
        &report,
        &next,
        started.elapsed(),
        "callback",
    );
    finish
}

async fn attempt(state: &State, claimed: &Claimed) -> Report {
    let message = &claimed.message;
    let request = match request(message, claimed.attempt) {
        Ok(request) => request,
        Err(e) => {
            return Report {
                attempted: Attempted::Refused(e),
                status: None,
                upstream: None,
                answer: None,
                sender_fault: false,
            }
        }
    };
    // For a callback, the service answers soapcache on this connection.
    let body = match &message.reply {
        ReplyPlan::Callback(_) => match crate::soap::envelope::parse_request(&message.body) {
            Ok(envelope) => reply::anonymized(&message.body, &envelope.addressing),
            Err(_) => message.body.clone(),
        },
        _ => message.body.clone(),
    };
    let send = || clone_request(&request, &body);
    match state.upstream.fetch(send, ANSWER_LIMIT).await {
        Err(e) => {
            state.metrics.upstream_error();
            Report {
                attempted: Attempted::Failed(e.to_string()),
                status: None,
                upstream: None,
                answer: None,
                sender_fault: false,
            }
        }
        Ok(fetched) => {
            let status = fetched.parts.status;
            let upstream = fetched.parts.extensions.get::<UpstreamTime>().map(|t| t.0);
            let (envelope, answer) = match &fetched.body {
                FetchedBody::Whole(bytes) => {
                    let envelope = inspect_response(bytes, &[]);
                    let stripped = envelope
                        .as_ref()
                        .map_or_else(|| bytes.clone(), |e| splice(bytes, &e.strip));
                    let answer = RecordedAnswer {
                        status: status.as_u16(),
                        content_type: fetched
                            .parts
                            .headers
                            .get(hyper::header::CONTENT_TYPE)
                            .map(|v| v.as_bytes().to_vec()),
                        body: stripped,
                    };
                    (envelope, Some(answer))
                }
                FetchedBody::Partial { .. } => (None, None),
            };
            let fault = envelope.as_ref().filter(|e| e.is_fault);
            let sender_fault = fault.is_some_and(|f| f.sender_fault);
            let what = |kind: &str| format!("HTTP {} {kind}", status.as_u16());
            let attempted = match fault {
                Some(f) if f.sender_fault => Attempted::Refused(what("with a sender fault")),
                _ if status.is_client_error() => Attempted::Refused(what("from the service")),
                Some(_) => Attempted::Failed(what("with a receiver fault")),
                None if status.is_success() => Attempted::Delivered,
                None => Attempted::Failed(what("from the service")),
            };
            Report {
                attempted,
                status: Some(status.as_u16()),
                upstream,
                answer,
                sender_fault,
            }
        }
    }
}

/// The request as it is sent, bar its body: the stored headers (with
/// `Host` and `SOAPAction` as the requester sent them), the delivery's
/// own, and the proxy headers an HTTP intermediary adds.
fn request(message: &Message, attempt: u32) -> Result<Request<()>, String> {
    let target: Uri = message
        .target
        .parse()
        .map_err(|e| format!("bad target {}: {e}", message.target))?;
    let mut incoming = Request::post(target.clone())
        .body(())
        .map_err(|e| e.to_string())?;
    let headers = incoming.headers_mut();
    for (name, value) in &message.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.remove(hyper::header::CONTENT_LENGTH);
    let id = HeaderValue::from_str(&message.id).map_err(|e| e.to_string())?;
    headers.insert(X_MESSAGE_ID, id);
    headers.insert(X_DELIVERY_ATTEMPT, HeaderValue::from(attempt));
    let remote = message
        .remote
        .parse::<IpAddr>()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (parts, ()) = incoming.into_parts();
    let outgoing = client::build_request(&parts, target, SocketAddr::new(remote, 0), body::empty());
    let (parts, _) = outgoing.into_parts();
    Ok(Request::from_parts(parts, ()))
}

fn clone_request(request: &Request<()>, body: &Bytes) -> Request<body::Body> {
    let mut out = Request::new(body::full(body.clone()));
    *out.method_mut() = request.method().clone();
    *out.uri_mut() = request.uri().clone();
    *out.headers_mut() = request.headers().clone();
    out
}

/// A delivered write purges what its `[[invalidate]]` rule names, under
/// the policies in force now.
async fn fire_invalidations(state: &State, message: &Message) {
    let policies = state.policies.load();
    let Some(service) = policies
        .services()
        .iter()
        .find(|s| *s.name == *message.service)
    else {
        return;
    };
    if let Ok(envelope) = parse_request(&message.body) {
        if let Some(op) = envelope.operation.as_ref() {
            invalidate::after_write(&state.cache, service, op).await;
        }
    }
}

fn record(
    state: &State,
    claimed: &Claimed,
    report: &Report,
    next: &Next,
    took: Duration,
    what: &'static str,
) {
    let message = &claimed.message;
    let (result, detail) = match next {
        Next::Delivered => ("delivered", None),
        Next::RetryAt(_) => ("retried", None),
        Next::Dead(reason) => ("dead_lettered", Some(reason.label())),
    };
    if what == "delivery" {
        state.metrics.delivery(
            &message.service,
            &message.operation,
            result,
            report.upstream,
        );
    }
    if !access_log::enabled() {
        return;
    }
    let request_id = message
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(X_REQUEST_ID.as_str()))
        .and_then(|(_, value)| std::str::from_utf8(value).ok());
    let path = message
        .target
        .parse::<Uri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    access_log::write(&access_log::Line {
        message: what,
        request_id,
        method: "POST",
        path: &path,
        service: Some(&message.service),
        operation: Some(&message.operation),
        result,
        detail,
        status: report.status.unwrap_or(0),
        upstream_micros: report.upstream.map(|t| t.as_micros() as u64),
        total_micros: took.as_micros() as u64,
        bytes: None,
        message_id: Some(&message.id),
        attempt: Some(claimed.attempt),
    });
}

/// Counts messages found past their time to deliver before an attempt.
pub fn expired_while_waiting(state: &State, service: &str, operation: &str) {
    state
        .metrics
        .delivery(service, operation, "dead_lettered", None);
    tracing::warn!(
        service,
        operation,
        reason = DeadReason::Expired.label(),
        "dead letter: not delivered within deliver_within"
    );
}
