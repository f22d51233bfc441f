//! A request to a queued operation (reference §10): stored durably, then
//! answered 202 with its `X-Message-Id`; 503 when the queue cannot take it.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::Uri;

use super::dedup;
use super::{respond, Exchange, Reply};
use crate::app::state::State;
use crate::clock;
use crate::delivery::accept::{self, Accepting};
use crate::delivery::reply;
use crate::delivery::{
    Accepted, Callback, Credentials, DedupClaim, QueueError, RecordedAnswer, ReplyPlan, ResultState,
};
use crate::key::canonical;
use crate::ops::metrics::CacheResult;
use crate::policy::{Rules, DEFAULT_RESULT_RETENTION};
use crate::soap::addressing::{Addressing, Endpoint, WsaVersion};
use crate::soap::envelope::OperationElement;
use crate::soap::{fault, SoapVersion};
use std::time::Duration;

/// What accepting a request needs of it: the whole body (also of a large
/// or multipart request) and where it would go.
pub(super) struct QueuedRequest<'a> {
    pub state: &'a State,
    pub service_name: &'a str,
    pub version: SoapVersion,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub target: &'a Uri,
    pub remote: SocketAddr,
    pub addressing: &'a Addressing,
    pub expires: Option<std::time::SystemTime>,
}

impl<'a> Exchange<'a> {
    pub(super) fn queued(&'a self, addressing: &'a Addressing) -> QueuedRequest<'a> {
        QueuedRequest {
            state: self.state,
            service_name: &self.service_name,
            version: self.version,
            headers: &self.parts.headers,
            body: self.body.clone(),
            target: &self.target,
            remote: self.remote,
            addressing,
            expires: self.expires,
        }
    }
}

pub(super) async fn accept(
    x: QueuedRequest<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
) -> Reply {
    let Some(queue) = &x.state.queue else {
        // `serve` and reloads refuse queued operations without a queue.
        let reason = "this operation is queued but soapcache has no queue";
        return Reply::error(respond::unavailable(x.version, reason, 5));
    };
    let refuse = |reason: &str| {
        let fault = fault::bad_request(Some(x.version), None, reason);
        Reply::error(respond::fault_response(&fault))
    };
    // The requester's own id when it gives one (reference §10, §11).
    let given = match dedup::message_id(x.addressing, rules, op) {
        Ok(id) => id,
        Err(e) => {
            return refuse(&format!(
                "message_id cannot be evaluated on this message: {e}"
            ))
        }
    };
    // Results are kept where there is a store for them; a policy that
    // asks for them without one is refused at startup.
    let retention = match (&x.state.results, rules.result_retention) {
        (Some(_), retention) => retention.unwrap_or(DEFAULT_RESULT_RETENTION),
        (None, _) => Duration::ZERO,
    };
    let reply = match reply_plan(x.addressing, x.headers, rules, retention, given.as_deref()) {
        Ok(plan) => plan,
        Err(reason) => {
            tracing::info!(service = %x.service_name, "queued operation refused: {reason}");
            return refuse(&reason);
        }
    };
    let claim = match (&given, rules.dedup.is_zero()) {
        (Some(_), false) => match canonical::digest(op) {
            Ok(digest) => Some(DedupClaim {
                digest: digest.to_string(),
                credentials: dedup::credentials(x.headers, &x.body, x.addressing),
                until: clock::now() + rules.dedup,
            }),
            Err(e) => return refuse(&format!("the message cannot be digested: {e}")),
        },
        _ => None,
    };
    let id = given.unwrap_or_else(accept::new_message_id);
    let accepting = Accepting {
        id: id.clone(),
        service: x.service_name,
        op,
        rules,
        target: x.target.to_string(),
        headers: x.headers,
        body: x.body,
        remote: x.remote,
        now: clock::now(),
        expires: x.expires,
        reply,
    };
    let message = match accept::message(accepting) {
        Ok(message) => message,
        Err(e) => {
            return refuse(&format!(
                "order_by cannot be evaluated on this message: {e}"
            ))
        }
    };
    match queue.accept(message, claim).await {
        Ok(accepted) => {
            if accepted == Accepted::Duplicate {
                x.state.metrics.delivery.duplicate(x.service_name, "queued");
                // With a result kept for it, the repeat gets the result.
                if let Some(answer) = kept_result(x.state, &id, x.headers).await {
                    return dedup::replay(&answer, &id);
                }
            }
            let mut response = respond::queued(&id);
            if accepted == Accepted::Duplicate {
                respond::Mark::DUPLICATE.set(response.headers_mut());
            }
            let mut reply = Reply::new(response, CacheResult::Queued);
            reply.message_id = Some(id);
            reply
        }
        Err(QueueError::Reused) => {
            tracing::info!(service = %x.service_name, message_id = %id, "message id reused for a different message: refused");
            refuse(&QueueError::Reused.to_string())
        }
        Err(e) => {
            let retry_after = match &e {
                QueueError::Draining => 1,
                _ => 5,
            };
            match &e {
                QueueError::Draining => {}
                QueueError::Full { .. } => {
                    tracing::info!(service = %x.service_name, "queued operation refused: {e}")
                }
                _ => tracing::warn!(service = %x.service_name, "queued operation refused: {e}"),
            }
            Reply::error(respond::unavailable(x.version, &e.to_string(), retry_after))
        }
    }
}

/// Where the service's answer goes (reference §12): a callback to a
/// `ReplyTo` the policy allows (faults to an allowed `FaultTo`), kept for
/// polling, or nowhere. A callback address the policy does not allow is
/// refused here, before anything is stored.
pub(crate) fn reply_plan(
    addressing: &Addressing,
    headers: &HeaderMap,
    rules: &Rules,
    retention: Duration,
    message_id: Option<&str>,
) -> Result<ReplyPlan, String> {
    fn callback_to(endpoint: Option<&Endpoint>) -> Option<&Endpoint> {
        endpoint.filter(|e| !e.is_anonymous() && !e.is_none())
    }
    let reply_to = callback_to(addressing.reply_to.as_ref());
    let fault_to = callback_to(addressing.fault_to.as_ref());
    for endpoint in [reply_to, fault_to].into_iter().flatten() {
        if !reply::allowed(&rules.reply_to_allowed, &endpoint.address) {
            return Err(format!(
                "callback address {} is not allowed for this operation (reply_to_allowed)",
                endpoint.address
            ));
        }
    }
    if let Some(reply_to) = reply_to {
        let Some(relates_to) = message_id.filter(|_| addressing.message_id.is_some()) else {
            return Err("a request with a ReplyTo address needs a wsa:MessageID".into());
        };
        return Ok(ReplyPlan::Callback(Callback {
            reply_to: reply_to.address.trim().to_owned(),
            fault_to: fault_to.map(|e| e.address.trim().to_owned()),
            relates_to: relates_to.to_owned(),
            action: addressing.action.clone(),
            namespace: addressing
                .version
                .unwrap_or(WsaVersion::V2005)
                .namespace()
                .to_owned(),
        }));
    }
    let no_reply = addressing.reply_to.as_ref().is_some_and(Endpoint::is_none);
    if retention.is_zero() || no_reply {
        return Ok(ReplyPlan::Drop);
    }
    Ok(ReplyPlan::Poll {
        retention,
        credentials: poll_credentials(headers),
    })
}

/// What fetching a result must present: the request's `Authorization`.
pub(super) fn poll_credentials(headers: &HeaderMap) -> Credentials {
    let authorization = headers
        .get(hyper::header::AUTHORIZATION)
        .map_or(&[][..], |v| v.as_bytes());
    Credentials::of(&[authorization])
}

/// The answer kept for `id`, if there is one and `headers` may have it.
async fn kept_result(state: &State, id: &str, headers: &HeaderMap) -> Option<RecordedAnswer> {
    let kept = state.results.as_ref()?.result(id).await.ok()??;
    if kept.credentials != poll_credentials(headers) {
        return None;
    }
    match kept.state {
        ResultState::Done(answer) => Some(answer),
        _ => None,
    }
}
